"""Cross-entropy class weighting, side by side: full-volume validation Dice against steps.

One phantom store (the demo's data: ``--cases`` phantoms at ``--shape``, AEM x4
build) and, for every weighting of ``loss.class_weights`` (``rfnet``, ``none``,
``sqrt``), the same training run: stage ``train`` from scratch with the demo
config, the same seed, the same steps and the same crops; full-volume
validation (sliding window of the crop size, all 15 modality subsets) every
``--validate-every`` epochs on the validation cases.  Prints, per weighting and
validation step, Dice of WT/TC/ET with all four modalities and averaged over the
15 subsets, and the wall time of each run.

Usage::

    python benchmarks/bench_weighting.py [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from aem_synth.build import BuildOptions, build
from aem_synth.phantom import parse_shape, write_phantom_dataset
from train.config_files import load_config
from train.fit.stages import run_stage

CONFIG = Path(__file__).resolve().parent.parent / "pipelines" / "demo.toml"
WEIGHTINGS = ("rfnet", "none", "sqrt")
EPOCH = 25


def _store(root: Path, cases: int, shape: str, seed: int) -> Path:
    data, shards = root / "phantom", root / "shards"
    if not (shards / "manifest.json").is_file():
        write_phantom_dataset(
            data, n_cases=cases, layout="brats2020", seed=seed, shape=parse_shape(shape)
        )
        build(
            BuildOptions(root=data, out=shards, multiplier=4, seed=seed, workers=2, progress=False)
        )
    return shards


def _run(
    shards: Path, runs: Path, weighting: str, steps: int, validate_every: int, lr: float
) -> float:
    epochs = max(1, steps // EPOCH)
    overrides = [
        f'shards="{shards.as_posix()}"',
        f'runs_dir="{runs.as_posix()}"',
        f'name="{weighting}"',
        f'loss.class_weights="{weighting}"',
        'stage.train.init="scratch"',
        f"stage.train.epochs={epochs}",
        f"stage.train.iters_per_epoch={EPOCH}",
        f"stage.train.lr={lr}",
        f"stage.train.validate_every={validate_every}",
    ]
    cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    run_stage(cfg, "train", force=True, progress=False)
    return time.perf_counter() - t0


def _validation_rows(metrics: Path) -> list[dict[str, str]]:
    with open(metrics, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val_score")]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--validate-every", type=int, default=4, help="epochs of 25 steps")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--shape", default="96,96,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep data and runs here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        shards = _store(root, args.cases, args.shape, args.seed)
        walls = {}
        for w in WEIGHTINGS:
            walls[w] = _run(shards, root / "runs", w, args.steps, args.validate_every, args.lr)
        print(
            f"train stage from scratch, demo config, lr {args.lr}, seed {args.seed}, {args.steps} steps"
        )
        print(
            "| weighting | step | WT all | TC all | ET all | WT 15-mean | TC 15-mean | ET 15-mean | wall s |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for w in WEIGHTINGS:
            for r in _validation_rows(root / "runs" / w / "train" / "metrics.csv"):
                cols = ["val_wt_all", "val_tc_all", "val_et_all", "val_wt", "val_tc", "val_et"]
                vals = " | ".join(f"{100 * float(r[c]):.1f}" for c in cols)
                print(f"| {w} | {r['step']} | {vals} | {walls[w]:.0f} |")


if __name__ == "__main__":
    main()
