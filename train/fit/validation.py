"""Full-volume validation during training, scored exactly as ``train evaluate`` scores.

Every validated epoch, each validation case of the shard store (or the first
``data.val_cases``) is predicted whole by sliding-window inference with the
window of the training crop and 50 % overlap, once per window through the
encoders and once per modality subset through the decoder, and scored with the
same functions as :func:`train.inference.evaluate.evaluate` (argmax labels,
background outside the present modalities' brain, Dice of WT/TC/ET).  Only
Dice is computed (HD95 is left to evaluation).

Columns returned (fractions in [0, 1]):

``val_wt_all``, ``val_tc_all``, ``val_et_all``    all four modalities present
``val_wt``, ``val_tc``, ``val_et``                mean over the 15 subsets
``val_score``                                     mean of the three 15-subset means:
                                                  the criterion of ``best.pt``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from aem_synth.store.shards import SampleRef, ShardReader
from train.data import val_refs
from train.data.subsets import ALL_SUBSETS
from train.inference.evaluate import EvaluationOptions, evaluate_sample, read_sample
from train.inference.sliding_window import WindowOptions
from train.report.plots import VAL_COLUMNS
from train.report.tables import REGION_NAMES, subset_table

__all__ = ["BEST_KEY", "FullVolumeValidator", "scores", "validation_refs"]

BEST_KEY = "val_score"
VALIDATION_OVERLAP = 0.5
ALL_PRESENT = (True, True, True, True)


def validation_refs(shards: Path | str, max_cases: int = 0) -> list[SampleRef]:
    """Real samples of the ``val`` split, in store order; the first ``max_cases`` when > 0.

    Raises
    ------
    ShardError
        The store has no real validation samples.
    """
    refs = val_refs(shards)
    return refs[:max_cases] if max_cases > 0 else refs


@dataclass
class FullVolumeValidator:
    """Callable ``validator(model) -> {column: value}`` over fixed validation cases.

    Attributes
    ----------
    refs : list of SampleRef
        Validation cases (``validation_refs``).
    window : tuple of int
        Sliding-window size (X, Y, Z) in voxels: the training crop.
    device : str
        Where inference runs (the training device).
    amp : bool
        bf16 autocast on CUDA, as in training.
    batch_size : int
        Windows per forward pass.
    """

    refs: list[SampleRef]
    window: tuple[int, int, int]
    device: str
    amp: bool = False
    batch_size: int = 2

    @property
    def options(self) -> EvaluationOptions:
        """The evaluation options this validator uses (``train evaluate`` with these agrees)."""
        win = WindowOptions(self.window, VALIDATION_OVERLAP, False, self.batch_size, self.amp)
        return EvaluationOptions(win, None, self.device, ALL_SUBSETS, hd95=False)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        opts = self.options
        records: list[dict[str, Any]] = []
        readers: dict[Path, ShardReader] = {}
        try:
            for ref in self.refs:
                case_id, image, label, spacing, present = read_sample(readers, ref)
                records += evaluate_sample(model, image, label, spacing, case_id, opts, present)[0]
        finally:
            for r in readers.values():
                r.close()
        return scores(records)


def scores(records: list[dict[str, Any]]) -> dict[str, float]:
    """Validation columns (``train.report.plots.VAL_COLUMNS``) of per-(case, subset) Dice records."""
    table = subset_table(records, "dice", ALL_SUBSETS)
    row = table.values[table.subsets.index(ALL_PRESENT)]
    mean = table.average
    out = {f"val_{r.lower()}_all": float(v) for r, v in zip(REGION_NAMES, row, strict=True)}
    out |= {f"val_{r.lower()}": float(v) for r, v in zip(REGION_NAMES, mean, strict=True)}
    out[BEST_KEY] = float(mean.mean())
    unknown = set(out) - set(VAL_COLUMNS)
    if unknown:  # metrics.csv would silently drop them
        raise RuntimeError(f"validation columns {sorted(unknown)} are not in VAL_COLUMNS")
    return out
