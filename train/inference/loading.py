"""A checkpoint made ready for inference: model, metadata, window settings, device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.inference.sliding_window import WindowOptions, resolve_device, resolve_window

__all__ = ["InferenceModel", "load_for_inference"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceModel:
    """What ``evaluate`` and ``predict`` need from a checkpoint.

    Attributes
    ----------
    model : nn.Module
        In eval mode, on ``device``.
    meta : dict
        Checkpoint metadata (every key except the state dicts).
    window : WindowOptions
        The window defaults to the training crop recorded in the checkpoint.
    device : torch.device
    """

    model: nn.Module
    meta: dict[str, Any]
    window: WindowOptions
    device: torch.device


def load_for_inference(
    checkpoint: Path | str,
    device: str = "auto",
    *,
    window: Sequence[int] | int | None = None,
    overlap: float = 0.5,
    gaussian: bool = False,
    batch_size: int = 2,
    amp: bool = False,
) -> InferenceModel:
    """Load ``checkpoint`` and resolve the sliding-window settings.

    ``window=None`` takes the training crop the checkpoint records; another
    size logs a one-line note (see :func:`train.inference.sliding_window.resolve_window`).
    """
    from train.fit.checkpoint import load_model_from_checkpoint

    dev = resolve_device(device)
    model, meta = load_model_from_checkpoint(checkpoint, dev)
    size, note = resolve_window(window, meta)
    if note:
        log.warning(note)
    return InferenceModel(model, meta, WindowOptions(size, overlap, gaussian, batch_size, amp), dev)
