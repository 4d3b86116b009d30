"""Typed, frozen run configuration: its sections, their defaults and the value checks.

A config file has top-level keys (``name``, ``shards``, ``runs_dir``, ``seed``,
``device``, ``precision``, ``workers``) and tables ``[model]``, ``[data]``,
``[loss]``, ``[augment]``, ``[stage.pretrain]``, ``[stage.train]``,
``[stage.posttrain]``; files are read and written by :mod:`train.config_files`.
Every key is optional except ``name`` and ``shards``; unknown keys are
rejected with a message naming them and their section.  Overrides use dotted
paths and TOML values: ``stage.train.epochs=3``, ``data.crop=[48,48,48]``,
``shards=/data/shards`` (a value that is not valid TOML is taken as a string).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLASS_WEIGHTINGS",
    "LossConfig",
    "STAGES",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "StageConfig",
    "config_from_dict",
    "config_to_dict",
]

STAGES: tuple[str, str, str] = ("pretrain", "train", "posttrain")
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTINGS = ("rfnet", "none", "sqrt")
"""Cross-entropy class weightings (``loss.class_weights``; see ``train.fit.losses``)."""
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key, the rule and the value."""


@dataclass(frozen=True)
class ModelConfig:
    """Backbone choice, passed to ``train.models.build_backbone(backbone, **kwargs())``.

    Attributes
    ----------
    backbone : str
        Registry name: ``"rfnet"`` (default), ``"uhved"`` or ``"robustseg"``.
    num_classes : int
        Output classes including background (4: bg, NCR/NET, ED, ET).
    base_channels : int
        Channels of the first encoder level (RFNet: 16 -> 16/32/64/128; the
        published widths are 16 for RFNet and RobustSeg, 8 for U-HVED).
    """

    backbone: str = "rfnet"
    num_classes: int = 4
    base_channels: int = 16

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the backbone constructor."""
        return {"num_classes": self.num_classes, "base_channels": self.base_channels}


@dataclass(frozen=True)
class DataConfig:
    """Training-stream options.

    Attributes
    ----------
    crop : tuple of int
        Crop size (x, y, z) in voxels.
    tumour_share : float
        Fraction of crops forced to be centred on a tumour voxel, in [0, 1].
    mix_real_ratio : float
        Pretrain only: share of real training cases mixed into the synthetic
        stream, in [0, 1).
    val_cases : int
        Validation cases (full volumes, sliding window of the crop size, all 15
        modality subsets) per validation pass: the first ``val_cases`` of the
        validation split, 0 for all of them.
    """

    crop: tuple[int, int, int] = (80, 80, 80)
    tumour_share: float = 0.5
    mix_real_ratio: float = 0.0
    val_cases: int = 0


@dataclass(frozen=True)
class LossConfig:
    """Segmentation loss options (every output term: cross-entropy + soft Dice).

    Attributes
    ----------
    class_weights : str
        Cross-entropy class weighting (``train.fit.losses.CLASS_WEIGHTINGS``):
        ``"rfnet"`` (``1 - frequency`` per sample, the paper's), ``"none"``
        (plain cross-entropy) or ``"sqrt"`` (inverse square-root batch frequency).
    kl_weight : float
        Weight of the backbone's KL term (``ModelOutput.aux_losses["kl"]``):
        U-HVED's fused posteriors, RobustSeg's appearance codes; 0.1 as both
        publish. RFNet has no such term.
    recon_weight : float
        Weight of the backbone's image-reconstruction term (``"recon"``):
        U-HVED (squared error), RobustSeg (L1); 0.1 as both publish.
    """

    class_weights: str = "sqrt"
    kl_weight: float = 0.1
    recon_weight: float = 0.1

    def aux_weights(self) -> dict[str, float]:
        """Weights of the backbones' own loss terms by name (``train.fit.losses.rfnet_loss``)."""
        return {"kl": self.kl_weight, "recon": self.recon_weight}


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentation (see ``train.data.augment.BatchAugment``).

    Attributes
    ----------
    enabled : bool
    flip : bool
        Flip each spatial axis independently with probability 1/2.
    rotate_deg : float
        Maximum absolute rotation angle in degrees about each axis.
    p_rotate : float
        Probability that a sample is rotated.
    scale : float
        Per-channel intensity factor drawn from ``[1 - scale, 1 + scale]``.
    shift : float
        Per-channel intensity offset drawn from ``[-shift, shift]`` (z-score units).
    """

    enabled: bool = True
    flip: bool = True
    rotate_deg: float = 10.0
    p_rotate: float = 0.5
    scale: float = 0.1
    shift: float = 0.1


@dataclass(frozen=True)
class StageConfig:
    """Optimisation schedule of one stage.

    Attributes
    ----------
    epochs, iters_per_epoch, batch_size : int
        The stage runs ``epochs * iters_per_epoch`` optimiser steps of
        ``batch_size`` crops per process.
    lr, weight_decay, poly_power : float
        Adam (amsgrad) with ``lr * (1 - step / total) ** poly_power`` per step.
    warmup_steps : int
        Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first
        ``warmup_steps`` steps, then the poly decay over the remaining ones; 0: none.
    init : str
        ``"scratch"``, ``"previous"`` (the previous stage's ``final.pt``; the
        default, and the same as scratch for pretrain) or a checkpoint path.
    kd_refresh_every : int
        Posttrain: the teacher is replaced by the student after every
        ``kd_refresh_every``-th epoch.
    kd_weight : float
        Posttrain: ``L_post = L_seg + kd_weight * L_kd``.
    grad_clip : float
        Maximum gradient L2 norm; 0 disables clipping.
    checkpoint_every : int
        Steps between rolling ``last.pt`` checkpoints (also written at every epoch end).
    validate_every : int
        Epochs between full-volume validation passes (and at the last epoch);
        0 disables validation and ``best.pt``.
    """

    epochs: int = 300
    iters_per_epoch: int = 150
    batch_size: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_steps: int = 0
    init: str = "previous"
    kd_refresh_every: int = 5
    kd_weight: float = 1.0
    grad_clip: float = 0.0
    checkpoint_every: int = 50
    validate_every: int = 10

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole stage."""
        return self.epochs * self.iters_per_epoch


@dataclass(frozen=True)
class Stages:
    """The three stage sections ``[stage.pretrain]``, ``[stage.train]``, ``[stage.posttrain]``."""

    pretrain: StageConfig = StageConfig()
    train: StageConfig = StageConfig()
    posttrain: StageConfig = StageConfig()


@dataclass(frozen=True)
class Config:
    """A whole run: data, model, augmentation and the three stages.

    Attributes
    ----------
    name : str
        Run name; outputs go to ``runs_dir/name/<stage>/``.
    shards : str
        Shard store root (``aem-synth build --out``).
    runs_dir : str
    seed : int
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    precision : str
        ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
    workers : int
        DataLoader worker processes per training process.
    """

    name: str
    shards: str
    runs_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    stage: Stages = Stages()

    def stage_config(self, stage: str) -> StageConfig:
        """The section of ``stage`` (one of ``STAGES``)."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
        return getattr(self.stage, stage)

    def stage_dir(self, stage: str) -> Path:
        """Output folder ``runs_dir/name/stage``."""
        return Path(self.runs_dir) / self.name / stage


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in configs")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got boolean {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, table: dict[str, Any], section: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in section [{section or 'top level'}]; known keys: {names}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}" if section else k) for k, v in table.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"section [{section or 'top level'}]: {exc}") from exc


def _check(cfg: Config) -> None:
    rules: list[tuple[bool, str]] = [
        (cfg.device in DEVICES, f"device must be one of {list(DEVICES)}, got {cfg.device!r}"),
        (
            cfg.precision in PRECISIONS,
            f"precision must be one of {list(PRECISIONS)}, got {cfg.precision!r}",
        ),
        (cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}"),
        (
            bool(cfg.name) and "/" not in cfg.name,
            f"name must be a non-empty folder name, got {cfg.name!r}",
        ),
        (
            all(c >= 8 for c in cfg.data.crop),
            f"data.crop must be >= 8 voxels per axis, got {cfg.data.crop}",
        ),
        (
            0.0 <= cfg.data.tumour_share <= 1.0,
            f"data.tumour_share must be in [0, 1], got {cfg.data.tumour_share}",
        ),
        (
            0.0 <= cfg.data.mix_real_ratio < 1.0,
            f"data.mix_real_ratio must be in [0, 1), got {cfg.data.mix_real_ratio}",
        ),
        (cfg.data.val_cases >= 0, f"data.val_cases must be >= 0, got {cfg.data.val_cases}"),
        (
            cfg.loss.class_weights in CLASS_WEIGHTINGS,
            f"loss.class_weights must be one of {list(CLASS_WEIGHTINGS)}, "
            f"got {cfg.loss.class_weights!r}",
        ),
        (cfg.loss.kl_weight >= 0, f"loss.kl_weight must be >= 0, got {cfg.loss.kl_weight}"),
        (
            cfg.loss.recon_weight >= 0,
            f"loss.recon_weight must be >= 0, got {cfg.loss.recon_weight}",
        ),
        (
            cfg.model.num_classes >= 2,
            f"model.num_classes must be >= 2, got {cfg.model.num_classes}",
        ),
    ]
    for stage in STAGES:
        s = cfg.stage_config(stage)
        p = f"stage.{stage}"
        rules += [
            (s.epochs >= 1, f"{p}.epochs must be >= 1, got {s.epochs}"),
            (s.iters_per_epoch >= 1, f"{p}.iters_per_epoch must be >= 1, got {s.iters_per_epoch}"),
            (s.batch_size >= 1, f"{p}.batch_size must be >= 1, got {s.batch_size}"),
            (s.lr > 0, f"{p}.lr must be > 0, got {s.lr}"),
            (s.weight_decay >= 0, f"{p}.weight_decay must be >= 0, got {s.weight_decay}"),
            (s.poly_power >= 0, f"{p}.poly_power must be >= 0, got {s.poly_power}"),
            (
                0 <= s.warmup_steps < s.total_steps,
                f"{p}.warmup_steps must be in [0, epochs * iters_per_epoch = {s.total_steps}), "
                f"got {s.warmup_steps}",
            ),
            (
                s.kd_refresh_every >= 1,
                f"{p}.kd_refresh_every must be >= 1, got {s.kd_refresh_every}",
            ),
            (s.kd_weight >= 0, f"{p}.kd_weight must be >= 0, got {s.kd_weight}"),
            (s.grad_clip >= 0, f"{p}.grad_clip must be >= 0 (0 = off), got {s.grad_clip}"),
            (
                s.checkpoint_every >= 1,
                f"{p}.checkpoint_every must be >= 1, got {s.checkpoint_every}",
            ),
            (s.validate_every >= 0, f"{p}.validate_every must be >= 0, got {s.validate_every}"),
            (bool(s.init), f"{p}.init must be 'scratch', 'previous' or a checkpoint path"),
        ]
    broken = [msg for ok, msg in rules if not ok]
    if broken:
        raise ConfigError("; ".join(broken))


def config_from_dict(table: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a parsed TOML table."""
    cfg = _build(Config, table, "")
    _check(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config dataclass, for TOML/JSON/checkpoints."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = config_to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out
