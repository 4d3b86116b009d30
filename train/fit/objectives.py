"""What a stage optimises: the objective protocol and the plain segmentation objective.

An objective is called with the (possibly DDP-wrapped) model, a batch on the
device (``image`` ``(B, 4, X, Y, Z)`` float32, ``label`` ``(B, X, Y, Z)`` int64,
``mask`` ``(B, 4)`` bool) and the loop's generator, and returns the scalar loss
and its named parts.  Knowledge distillation (:mod:`train.fit.kd`) is the other one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["Objective", "SegLoss", "SegObjective", "forward_kwargs"]

SegLoss = Callable[..., tuple[Tensor, dict[str, Any]]]
"""``seg_loss(output, target, modality_mask=mask) -> (loss, parts)`` (``train.fit.losses.rfnet_loss``)."""


def forward_kwargs(model: nn.Module, generator: torch.Generator) -> dict[str, Any]:
    """Extra keyword arguments of a training forward: ``{"generator": generator}`` for a
    backbone whose training forward samples (``samples_noise``, e.g. U-HVED), so its noise
    comes from the loop's checkpointed generator; ``{}`` for the others (RFNet)."""
    inner = getattr(model, "module", model)  # DDP wraps the backbone
    return {"generator": generator} if getattr(inner, "samples_noise", False) else {}


class Objective(Protocol):
    """What a stage optimises: ``objective(model, batch, generator) -> (loss, parts)``."""

    def __call__(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def on_epoch_end(self, epochs_done: int, model: nn.Module) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SegObjective:
    """Pretrain / train objective: the backbone's segmentation loss for the batch's modality subset."""

    def __init__(self, seg_loss: SegLoss) -> None:
        self.seg_loss = seg_loss

    def __call__(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch["image"], batch["mask"], **forward_kwargs(model, generator))
        loss, parts = self.seg_loss(out, batch["label"], modality_mask=batch["mask"])
        return loss, {k: v for k, v in parts.items() if k != "total"}

    def on_epoch_end(self, epochs_done: int, model: nn.Module) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
