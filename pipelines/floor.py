"""The threshold floor: the best global intensity-threshold rule, fitted on training cases.

A model that does not beat this floor has learned nothing a fixed rule could
not do.  Each case is preprocessed as for training (z-scores over the brain);
the rule family is

* WT = feature > a, the feature one of z(FLAIR), z(T2) or their mean;
* ET = z(T1ce) > d;
* TC = WT and (z(T1ce) > b or z(T1) < c);

each threshold is chosen on a grid to maximise the mean Dice of its region over
the training cases, then the rule is scored on the test cases (Dice with the
BraTS convention: both empty -> 1).

Usage::

    python -m pipelines.floor --variant hard [--train 16 --test 24 --shape 96,96,64 --seed 0]
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from aem_synth.types import REGIONS

__all__ = ["FloorResult", "case_features", "fit_floor", "floor_for_root"]

_GRID = np.round(np.arange(-2.0, 5.01, 0.1), 2)
_TC_GRID = np.round(np.arange(-3.0, 5.01, 0.25), 2)
_WT_FEATURES = ("flair", "t2", "flair+t2")


@dataclass(frozen=True)
class FloorResult:
    """Fitted rule and its Dice (fractions) on train and test cases."""

    wt_feature: str
    thresholds: dict[str, float]
    train: dict[str, float]
    test: dict[str, float]


def case_features(case_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(z, label)`` of one case: z-scores (4, N) and internal labels (N,) over its brain."""
    from aem_synth.dataset.discover import discover_case
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import preprocess_case

    pre = preprocess_case(load_case(discover_case(case_dir), require_label=True))
    assert pre.label is not None
    return pre.image[:, pre.brain_mask], pre.label[pre.brain_mask]


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    from train.inference.metrics import dice

    return dice(pred, gt)


def _wt_score(cases: Sequence[tuple[np.ndarray, np.ndarray]], feature: str) -> list[np.ndarray]:
    out = []
    for z, _ in cases:
        if feature == "flair+t2":
            out.append((z[0] + z[3]) / 2)
        else:
            out.append(z[0] if feature == "flair" else z[3])
    return out


def _mean_dice(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    return float(np.mean([_dice(p, t) for p, t in zip(preds, truths, strict=True)]))


def fit_floor(
    train: Sequence[tuple[np.ndarray, np.ndarray]], test: Sequence[tuple[np.ndarray, np.ndarray]]
) -> FloorResult:
    """Fit the thresholds on ``train`` (list of ``case_features``), score on ``test``."""
    regions = {
        name: [np.isin(lab, list(REGIONS[name])) for _, lab in train] for name in ("WT", "TC", "ET")
    }
    best_wt = max(
        ((f, a) for f in _WT_FEATURES for a in _GRID),
        key=lambda fa: _mean_dice([s > fa[1] for s in _wt_score(train, fa[0])], regions["WT"]),
    )
    best_et = max(_GRID, key=lambda d: _mean_dice([z[2] > d for z, _ in train], regions["ET"]))
    wt_train = [s > best_wt[1] for s in _wt_score(train, best_wt[0])]
    best_tc = max(
        itertools.product(_TC_GRID, _TC_GRID),
        key=lambda bc: _mean_dice(
            [
                w & ((z[2] > bc[0]) | (z[1] < bc[1]))
                for w, (z, _) in zip(wt_train, train, strict=True)
            ],
            regions["TC"],
        ),
    )
    thresholds = {
        "wt": float(best_wt[1]),
        "tc_t1ce_above": float(best_tc[0]),
        "tc_t1_below": float(best_tc[1]),
        "et": float(best_et),
    }

    def score(cases: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        wt = [s > thresholds["wt"] for s in _wt_score(cases, best_wt[0])]
        tc = [
            w & ((z[2] > thresholds["tc_t1ce_above"]) | (z[1] < thresholds["tc_t1_below"]))
            for w, (z, _) in zip(wt, cases, strict=True)
        ]
        et = [z[2] > thresholds["et"] for z, _ in cases]
        preds = {"WT": wt, "TC": tc, "ET": et}
        return {
            r: _mean_dice(preds[r], [np.isin(lab, list(REGIONS[r])) for _, lab in cases])
            for r in preds
        }

    return FloorResult(best_wt[0], thresholds, score(train), score(test))


def floor_for_root(root: Path, train_ids: Sequence[str], test_ids: Sequence[str]) -> FloorResult:
    """:func:`fit_floor` on the cases of a dataset root (case folders named by id)."""
    folders = {p.name: p for p in Path(root).iterdir() if p.is_dir()}
    return fit_floor(
        [case_features(folders[c]) for c in train_ids],
        [case_features(folders[c]) for c in test_ids],
    )


@click.command()
@click.option("--variant", type=click.Choice(["simple", "hard"]), default="hard", show_default=True)
@click.option("--train", "n_train", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--test", "n_test", default=24, show_default=True, type=click.IntRange(min=1))
@click.option("--shape", default="96,96,64", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
def main(variant: str, n_train: int, n_test: int, shape: str, seed: int) -> None:
    """Fit and score the threshold floor on freshly generated phantoms."""
    from aem_synth.phantom.generator import parse_shape, write_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folders = write_phantom_dataset(
            Path(tmp),
            n_cases=n_train + n_test,
            seed=seed,
            shape=parse_shape(shape),
            variant=variant,
        )
        ids = [f.name for f in folders]
        result = floor_for_root(Path(tmp), ids[:n_train], ids[n_train:])
    click.echo(json.dumps({"variant": variant, **asdict(result)}, indent=1))


if __name__ == "__main__":
    main()
