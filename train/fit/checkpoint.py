"""Self-describing checkpoints: atomic save, ``weights_only`` load, shape-checked restore.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts
(no pickled objects), readable with ``torch.load(weights_only=True)``::

    format            CHECKPOINT_FORMAT (int)
    tool_version      aem_synth.__version__
    stage             "pretrain" | "train" | "posttrain"
    backbone          registry name; backbone_kwargs: constructor kwargs
    num_classes       int
    config            the resolved run config (nested dict)
    model             state_dict of the bare model
    optimizer         optimiser state_dict (absent in final.pt)
    step, epoch       optimiser steps and whole epochs completed
    rng               {"torch": ByteTensor, "cuda": [...], "loop": ByteTensor, "augment": ...}
    objective         extra state of the stage objective (posttrain: {"teacher": state_dict})
    finished          True only in final.pt
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aem_synth import __version__
from train.config import config_from_dict, config_to_dict
from train.fit.distributed import place_model

__all__ = [
    "check_same_config",
    "config_differences",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_weights",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
_REQUIRED = ("format", "stage", "backbone", "backbone_kwargs", "num_classes", "model")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus ``format`` and ``tool_version``) atomically to ``path``.

    The file is written under a temporary name in the same folder, flushed to
    disk and renamed into place, so a kill at any moment leaves either the
    previous checkpoint or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = {"format": CHECKPOINT_FORMAT, "tool_version": __version__, **payload}
    try:
        with open(tmp, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its keys.

    Raises
    ------
    CheckpointError
        File missing, not a checkpoint of this tool, or without a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [k for k in _REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this tool; missing keys {missing}")
    if data["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {data['format']}, this tool reads {CHECKPOINT_FORMAT}"
        )
    return data


def _describe(names: list[str], shapes: dict[str, Any], limit: int = 8) -> str:
    shown = [f"{n} {tuple(shapes[n].shape)}" for n in names[:limit]]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking that every name and shape matches.

    Raises
    ------
    CheckpointError
        The message lists the parameters only in the checkpoint, only in the
        model, and those whose shapes differ (checkpoint vs model); or names
        the tensors that hold NaN or Inf values.
    """
    own = model.state_dict()
    extra = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    differ = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if extra or missing or differ:
        parts = []
        if differ:
            shown = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in differ[:8]]
            parts.append(f"shape mismatch (checkpoint vs model): {', '.join(shown)}")
        if extra:
            parts.append(f"only in checkpoint: {_describe(extra, state)}")
        if missing:
            parts.append(f"only in model: {_describe(missing, own)}")
        raise CheckpointError(f"{source}: checkpoint does not fit the model; " + "; ".join(parts))
    bad = sorted(
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    )
    if bad:  # a model with NaN/Inf weights predicts garbage (all background) without a word
        raise CheckpointError(
            f"{source}: {len(bad)} parameter tensor(s) hold NaN or Inf values "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); the checkpoint is unusable"
        )
    model.load_state_dict(state)


def load_model_from_checkpoint(
    path: Path | str, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the backbone a checkpoint was trained with and load its weights.

    Parameters
    ----------
    path : Path or str
        A ``last.pt`` or ``final.pt`` written by ``train run``.
    device : str or torch.device
        Where the model is placed; it is returned in ``eval`` mode.

    Returns
    -------
    (nn.Module, dict)
        The model and the checkpoint's metadata (every key except the state dicts).
    """
    from train.models import build_backbone

    data = load_checkpoint(path, map_location="cpu")
    model = build_backbone(data["backbone"], **data["backbone_kwargs"])
    load_weights(model, data["model"], str(path))
    place_model(model, device).eval()
    meta = {k: v for k, v in data.items() if k not in ("model", "optimizer", "objective", "rng")}
    return model, meta


# Keys that may change between a run and its resume without changing what is computed.
CONFIG_KEYS_FREE_TO_CHANGE: tuple[str, ...] = ("workers", "device")


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(table, dict):
        return {prefix: table}
    out: dict[str, Any] = {}
    for key, value in table.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: saved -> current"`` for every dotted config key that differs.

    Keys in :data:`CONFIG_KEYS_FREE_TO_CHANGE` are ignored; a key present on
    one side only shows as ``<absent>`` on the other.
    """
    a, b = _flatten(saved), _flatten(current)
    absent = "<absent>"
    return [
        f"{k}: {a.get(k, absent)!r} -> {b.get(k, absent)!r}"
        for k in sorted(set(a) | set(b))
        if k not in CONFIG_KEYS_FREE_TO_CHANGE and a.get(k, absent) != b.get(k, absent)
    ]


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` read by today's config schema: keys added since it was written take their
    defaults (so a run from before ``loss.kl_weight`` existed resumes as the same config)."""
    try:
        return config_to_dict(config_from_dict(copy.deepcopy(saved)))
    except (ValueError, TypeError, KeyError):
        return saved  # not readable today: compare as recorded, every difference shows


def check_same_config(path: Path | str, saved: Any, current: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when ``path`` was written under another config.

    The message lists the differing keys and points to ``--force``.
    """
    if not isinstance(saved, dict):
        return  # checkpoints of other tools record no config to compare
    diffs = config_differences(_with_defaults(saved), current)
    if diffs:
        shown = "; ".join(diffs[:10]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 10 else "")
        raise CheckpointError(
            f"{path} was written with a different config ({shown}); run the stage again "
            "with --force to start it over with the new config, or restore the old values"
        )
