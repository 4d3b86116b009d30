"""Optimiser and learning-rate schedule: Adam (amsgrad), optional linear warm-up, poly decay per step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from train.config import StageConfig

__all__ = ["build_optimizer", "load_optimizer_state", "poly_lr", "set_lr"]

_IMPLEMENTATION = ("fused", "foreach")


def build_optimizer(params: Iterable[nn.Parameter], stage: StageConfig) -> torch.optim.Adam:
    """Adam with ``amsgrad=True``, the stage's ``lr`` and (L2) ``weight_decay``.

    When every trainable parameter is on the CPU the update runs as PyTorch's
    fused CPU kernel (``fused=True``): one pass over all parameters instead of a
    dozen elementwise ops per tensor, 3-4x faster on the demo's model (~300
    small tensors), the same update up to fp32 round-off (the order of a few
    operations differs). On CUDA PyTorch's default implementation is kept.
    """
    trainable = [p for p in params if p.requires_grad]
    on_cpu = bool(trainable) and all(p.device.type == "cpu" for p in trainable)
    return torch.optim.Adam(
        trainable,
        lr=stage.lr,
        weight_decay=stage.weight_decay,
        amsgrad=True,
        fused=True if on_cpu else None,
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping ``optimizer``'s own implementation
    choice (``fused``, ``foreach``: made for its device by :func:`build_optimizer`)
    rather than the one saved with ``state`` on whatever device wrote it."""
    chosen = [{k: g.get(k) for k in _IMPLEMENTATION} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, chosen, strict=True):
        group.update(flags)


def poly_lr(base_lr: float, step: int, total: int, power: float, warmup: int = 0) -> float:
    """Learning rate of 0-based ``step``: linear warm-up, then poly decay.

    ``base_lr * (step + 1) / warmup`` for ``step < warmup``, then
    ``base_lr * (1 - (step - warmup) / (total - warmup)) ** power``; with
    ``warmup = 0`` this is the paper's ``base_lr * (1 - step / total) ** power``.

    Raises
    ------
    ValueError
        ``step`` outside ``[0, total)`` or ``warmup`` outside ``[0, total)``.
    """
    if not 0 <= step < total:
        raise ValueError(f"poly schedule: step must be in [0, {total}), got {step}")
    if not 0 <= warmup < total:
        raise ValueError(f"poly schedule: warmup must be in [0, {total}), got {warmup}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1.0 - (step - warmup) / (total - warmup)) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
