"""Per-case cost of load + canonicalise + preprocess versus bare nibabel loading.

For every case (the real BraTS samples when found, otherwise phantom cases at
240x240x155 written to a temporary folder) the script times, interleaved and
after one warm-up run each:

(a) bare loading: ``nib.nifti1.load(f).get_fdata(dtype=np.float32)`` for the four
    modalities and the seg;
(b) ``load_case`` + ``preprocess_case`` (reorientation to RAS, consistency
    checks, label mapping, brain mask, crop, z-score).

It prints the median of ``--runs`` runs of each, their ratio (target (b)/(a)
<= 1.5), and the phantom generation time per case at 240x240x155 (generation
alone and generation + writing one case in the ``brats2020`` layout).

Usage::

    python benchmarks/bench_load.py [--root DIR] [--runs 5] [--phantom-runs 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import nibabel.nifti1
import numpy as np

from aem_synth.dataset.discover import discover
from aem_synth.dataset.load import load_case
from aem_synth.dataset.preprocess import preprocess_case
from aem_synth.types import CaseRecord

BRATS_SHAPE = (240, 240, 155)


def _samples_dir() -> Path | None:
    env = os.environ.get("AEM_BRATS_SAMPLES")
    here = Path(__file__).resolve()
    candidates = ([Path(env)] if env else []) + [
        p / "shared" / "brats_samples" for p in here.parents
    ]
    return next((c for c in candidates if c.is_dir() and any(c.iterdir())), None)


def bare_load(record: CaseRecord) -> None:
    """(a): what any script does to read the same files."""
    files = [*record.modalities.values(), *([record.seg] if record.seg else [])]
    for f in files:
        nib.nifti1.load(f).get_fdata(dtype=np.float32)


def full_load(record: CaseRecord) -> None:
    """(b): this package's loading and preprocessing."""
    preprocess_case(load_case(record))


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_case(record: CaseRecord, runs: int) -> tuple[float, float]:
    """Median seconds of (a) and (b), interleaved so both see the same machine load."""
    bare_load(record)
    full_load(record)
    a, b = [], []
    for _ in range(runs):
        a.append(_seconds(lambda: bare_load(record)))
        b.append(_seconds(lambda: full_load(record)))
    return statistics.median(a), statistics.median(b)


def bench_phantom(runs: int, shape: tuple[int, int, int] = BRATS_SHAPE) -> tuple[float, float]:
    """Median seconds per case: generation alone, and generation + writing (brats2020)."""
    from aem_synth.phantom.generator import make_phantom_case, write_phantom_dataset

    gen, write = [], []
    for seed in range(runs):
        gen.append(_seconds(functools.partial(make_phantom_case, seed, shape)))
        with tempfile.TemporaryDirectory() as tmp:
            write.append(
                _seconds(
                    functools.partial(
                        write_phantom_dataset,
                        Path(tmp),
                        n_cases=1,
                        layout="brats2020",
                        seed=seed,
                        shape=shape,
                    )
                )
            )
    return statistics.median(gen), statistics.median(write)


def _cases(root: Path | None, tmp: Path) -> tuple[str, list[CaseRecord]]:
    if root is not None:
        return f"real BraTS cases in {root}", discover(root)
    from aem_synth.phantom.generator import write_phantom_dataset

    write_phantom_dataset(tmp, n_cases=3, layout="brats2020", seed=0, shape=BRATS_SHAPE)
    return "phantom cases at 240x240x155 (no real samples found)", discover(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=None, help="dataset root (default: real samples)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--phantom-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, records = _cases(args.root or _samples_dir(), Path(tmp))
        print(f"data: {source}; median of {args.runs} runs per case")
        print(
            f"{'case':<24} {'bare nibabel (a) s':>18} {'load+preprocess (b) s':>22} {'(b)/(a)':>8}"
        )
        ratios, total_a, total_b = [], 0.0, 0.0
        for record in records:
            a, b = bench_case(record, args.runs)
            ratios.append(b / a)
            total_a, total_b = total_a + a, total_b + b
            print(f"{record.case_id:<24} {a:>18.3f} {b:>22.3f} {b / a:>8.2f}")
        print(
            f"{'all cases':<24} {total_a:>18.3f} {total_b:>22.3f} {total_b / total_a:>8.2f}"
            f"   (median per-case ratio {statistics.median(ratios):.2f}; target <= 1.50)"
        )
    gen, write = bench_phantom(args.phantom_runs)
    print(
        f"phantom 240x240x155, median of {args.phantom_runs}: generation {gen:.2f} s/case, "
        f"generation + write (brats2020) {write:.2f} s/case"
    )


if __name__ == "__main__":
    main()
