"""Fit stage: the training loop and the three stages that use it.

Takes a :class:`~train.config.Config` and a shard store.  Gives, per stage
(pretrain, train, posttrain with knowledge distillation), checkpoints, the
resolved config, ``metrics.csv`` and a loss curve under ``runs/<name>/<stage>/``.
"""

from __future__ import annotations

from train.fit.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    load_weights,
    save_checkpoint,
)
from train.fit.distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from train.fit.kd import KDObjective, kd_loss
from train.fit.loop import NonFiniteLossError, StagePlan, Trainer, run_loop
from train.fit.losses import rfnet_loss, segmentation_loss, soft_dice_loss, weighted_cross_entropy
from train.fit.optim import build_optimizer, poly_lr
from train.fit.stages import (
    PREVIOUS,
    AllModalityCrops,
    StageError,
    StageResult,
    build_model,
    resolve_init,
    run_stage,
)

__all__ = [
    "AllModalityCrops",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DistInfo",
    "KDObjective",
    "NonFiniteLossError",
    "PREVIOUS",
    "StageError",
    "StagePlan",
    "StageResult",
    "Trainer",
    "build_model",
    "build_optimizer",
    "cleanup_distributed",
    "init_distributed",
    "kd_loss",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_weights",
    "poly_lr",
    "resolve_device",
    "resolve_init",
    "rfnet_loss",
    "run_loop",
    "run_stage",
    "save_checkpoint",
    "segmentation_loss",
    "soft_dice_loss",
    "weighted_cross_entropy",
]
