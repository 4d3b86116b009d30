"""The three stages: which data, which initial weights, which objective.

============  ===============================  ============================  ======================
stage         data                             initial weights (``init``)    objective
============  ===============================  ============================  ======================
pretrain      synthetic shards (+ real mixed)  scratch                       segmentation loss
train         real training cases              pretrain ``final.pt``         segmentation loss
posttrain     real training cases              train ``final.pt``            segmentation + KD
============  ===============================  ============================  ======================

Every stage starts with a fresh optimiser and writes ``runs_dir/name/<stage>/``:
``last.pt`` (rolling), ``final.pt``, ``best.pt`` (best full-volume validation
``val_score``), ``config.toml`` (resolved), ``metrics.csv`` and ``loss_curve.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aem_synth.errors import ShardError
from train.config import STAGES, Config, config_to_dict
from train.config_files import dump_toml
from train.data import CropDataset, make_loader, stage_refs
from train.data.crops import check_crop_fits, refs_with_modalities
from train.data.provenance import store_record
from train.fit.checkpoint import (
    CheckpointError,
    check_same_config,
    load_checkpoint,
    load_weights,
)
from train.fit.distributed import (
    DistInfo,
    autocast_dtype,
    barrier,
    cleanup_distributed,
    init_distributed,
    place_model,
)
from train.fit.kd import KDObjective, make_teacher
from train.fit.loop import StagePlan, run_loop
from train.fit.objectives import Objective, SegObjective
from train.fit.validation import FullVolumeValidator, validation_refs

__all__ = [
    "PREVIOUS",
    "AllModalityCrops",
    "StageError",
    "StageResult",
    "build_model",
    "resolve_init",
    "run_stage",
]

log = logging.getLogger(__name__)

PREVIOUS: dict[str, str | None] = {"pretrain": None, "train": "pretrain", "posttrain": "train"}
OUTPUTS = ("last.pt", "final.pt", "best.pt", "metrics.csv", "loss_curve.png", "config.toml")


class StageError(ValueError):
    """A stage cannot start (missing previous checkpoint, unknown stage...)."""


@dataclass(frozen=True)
class StageResult:
    """Outcome of :func:`run_stage`.

    Attributes
    ----------
    stage : str
    out_dir : Path
    status : str
        ``"finished"`` (ran now) or ``"done"`` (``final.pt`` existed; nothing ran).
    steps : int
        Optimiser steps of the stage.
    final : Path
        ``final.pt``.
    model : nn.Module or None
        The trained bare model when the stage ran in this process.
    """

    stage: str
    out_dir: Path
    status: str
    steps: int
    final: Path
    model: nn.Module | None = None


class AllModalityCrops(CropDataset):
    """Crops with every modality the sample has (no subset drawn): validation and KD input."""

    def plan(self, index: int | tuple[int, int]) -> Any:
        p = super().plan(index)
        present = self._facts(p.ref)[1]
        return dataclasses.replace(p, mask=(present[0], present[1], present[2], present[3]))


def build_model(cfg: Config) -> nn.Module:
    """The configured backbone, freshly initialised from ``torch``'s global seed."""
    from train.models import build_backbone

    return build_backbone(cfg.model.backbone, **cfg.model.kwargs())


def resolve_init(cfg: Config, stage: str, config_path: str = "FILE") -> Path | None:
    """Checkpoint a stage starts from, or ``None`` for random initialisation.

    Raises
    ------
    StageError
        The previous stage's ``final.pt`` (or the given path) does not exist;
        the message names the path and the command that creates it.
    """
    init = cfg.stage_config(stage).init
    prev = PREVIOUS[stage]
    if init == "scratch" or (init == "previous" and prev is None):
        return None
    if init == "previous" and prev is not None:
        path = cfg.stage_dir(prev) / "final.pt"
        if not path.is_file():
            raise StageError(
                f"stage {stage} starts from the final checkpoint of stage {prev}, but {path} does not "
                f"exist; run `train run --stage {prev} --config {config_path}` first "
                f'(or set stage.{stage}.init = "scratch" or a checkpoint path)'
            )
        return path
    path = Path(init)
    if not path.is_file():
        raise StageError(
            f"stage {stage}: init checkpoint {path} (stage.{stage}.init) does not exist"
        )
    return path


def _objective(cfg: Config, stage: str, model: nn.Module) -> Objective:
    from train.fit.losses import rfnet_loss

    sc = cfg.stage_config(stage)
    seg_loss = functools.partial(
        rfnet_loss, class_weights=cfg.loss.class_weights, aux_weights=cfg.loss.aux_weights()
    )
    if stage == "posttrain":
        return KDObjective(make_teacher(model), seg_loss, sc.kd_weight, sc.kd_refresh_every)
    return SegObjective(seg_loss)


def _validator(cfg: Config, stage: str, device: torch.device) -> FullVolumeValidator | None:
    """Full-volume validation on the store's ``val`` split, or ``None`` (disabled / no cases)."""
    if cfg.stage_config(stage).validate_every <= 0:
        return None
    try:
        refs = validation_refs(cfg.shards, cfg.data.val_cases)
    except ShardError as exc:
        log.warning("validation disabled: %s", exc)
        return None
    amp = autocast_dtype(cfg.precision, device) == torch.bfloat16 and device.type == "cuda"
    return FullVolumeValidator(refs, cfg.data.crop, str(device), amp)


def _dataset(cfg: Config, stage: str, world_size: int) -> CropDataset:
    d, sc = cfg.data, cfg.stage_config(stage)
    ratio = d.mix_real_ratio if stage == "pretrain" else 0.0
    refs = stage_refs(cfg.shards, stage, mix_real_ratio=ratio, seed=cfg.seed)
    check_crop_fits(refs, d.crop)
    if stage == "posttrain":
        usable = refs_with_modalities(refs, 2)
        if len(usable) < len(refs):
            log.info(
                "posttrain: %d of %d training cases have a single modality and sit out KD",
                len(refs) - len(usable),
                len(refs),
            )
        if not usable:
            raise StageError("posttrain: no training case has two modalities or more for KD")
        refs = usable
    kind = AllModalityCrops if stage == "posttrain" else CropDataset
    per_epoch = sc.iters_per_epoch * sc.batch_size * world_size
    train = kind(
        refs,
        crop=d.crop,
        tumour_share=d.tumour_share,
        seed=cfg.seed,
        samples_per_epoch=per_epoch,
        compact=True,
    )
    return train


def _prepare_outputs(cfg: Config, stage: str, info: DistInfo, force: bool) -> Path:
    out = cfg.stage_dir(stage)
    if info.is_main:
        if force:
            for name in OUTPUTS:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(dump_toml(cfg))
    barrier(info)
    return out


def _resumed_store(last: Path, saved: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The store entry of a resumed stage: the saved one, if the store is still the same."""
    if not isinstance(saved, dict):
        return current
    if saved.get("id") and current["id"] and saved["id"] != current["id"]:
        raise CheckpointError(
            f"{last}: this stage started on store {saved['id']} ({saved.get('path')}), but "
            f"{current['path']} now holds store {current['id']} (rebuilt with other options, "
            "splits or shards); run the stage again with --force to start over on this store"
        )
    return {
        **current,
        "trained_on": sorted(set(saved.get("trained_on", [])) | set(current["trained_on"])),
    }


def _plan(
    cfg: Config, stage: str, info: DistInfo, device: torch.device, config_path: str
) -> StagePlan:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    last = cfg.stage_dir(stage) / "last.pt"
    resumed = load_checkpoint(last) if last.is_file() else None
    init = None if resumed is not None else resolve_init(cfg, stage, config_path)
    inherited = None
    if init is not None:
        init_data = load_checkpoint(init)
        load_weights(model, init_data["model"], str(init))
        inherited = init_data.get("store")
        log.info("%s: initialised from %s", stage, init)
    store = store_record(cfg.shards, inherited)
    if resumed is not None:
        store = _resumed_store(last, resumed.get("store"), store)
    place_model(model, device)
    train = _dataset(cfg, stage, info.world_size)

    meta = {
        "backbone": cfg.model.backbone,
        "backbone_kwargs": dict(getattr(model, "init_args", cfg.model.kwargs())),
        "num_classes": cfg.model.num_classes,
        "init": str(init) if init is not None else "scratch",
        "store": store,
    }
    return StagePlan(
        stage=stage,
        config=cfg,
        model=model,
        objective=_objective(cfg, stage, model),
        train_data=train,
        make_loader=make_loader,
        validator=_validator(cfg, stage, device),
        meta=meta,
    )


def run_stage(
    cfg: Config,
    stage: str,
    *,
    force: bool = False,
    progress: bool = True,
    config_path: str = "FILE",
) -> StageResult:
    """Run (or resume, or report as done) one stage.

    Parameters
    ----------
    cfg : Config
    stage : {"pretrain", "train", "posttrain"}
    force : bool
        Delete the stage's outputs and run it again even if ``final.pt`` exists.
    progress : bool
        Show a tqdm bar (rank 0).
    config_path : str
        Shown in error messages that suggest a command.

    Notes
    -----
    Under ``torchrun`` every rank calls this; rank 0 writes all files.
    """
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    final = cfg.stage_dir(stage) / "final.pt"
    if final.is_file() and not force:
        done = load_checkpoint(final)
        check_same_config(final, done.get("config"), config_to_dict(cfg))
        return StageResult(stage, final.parent, "done", int(done["step"]), final)
    info, device = init_distributed(cfg.device)
    try:
        _prepare_outputs(cfg, stage, info, force)
        plan = _plan(cfg, stage, info, device, config_path)
        steps = run_loop(plan, info, device, progress=progress)
        barrier(info)
    finally:
        cleanup_distributed()
    return StageResult(stage, final.parent, "finished", steps, final, plan.model)
