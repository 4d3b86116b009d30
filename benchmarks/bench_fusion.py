"""Ranked label fusion: vectorised lookup table versus a pure-Python voxel loop.

Usage: ``python benchmarks/bench_fusion.py [--repeats 5] [--loop-voxels 200000]``

Both run on the same random label pair of BraTS crop size 140 x 175 x 135.
The loop is timed on the first ``--loop-voxels`` voxels and scaled per voxel to
the full box (it would take ~minutes on the whole box); the output says so.
Times are medians over ``--repeats`` runs, one thread.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from aem_synth.fusion import fuse_labels, fuse_labels_loop  # noqa: E402

SHAPE = (140, 175, 135)


def _times(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and best wall time (s) of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--loop-voxels", type=int, default=200_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y_a = rng.integers(0, 4, size=SHAPE, dtype=np.uint8)
    y_b = rng.integers(0, 4, size=SHAPE, dtype=np.uint8)
    n = y_a.size
    k = min(args.loop_voxels, n)
    sub_a, sub_b = y_a.ravel()[:k], y_b.ravel()[:k]
    if not np.array_equal(fuse_labels(sub_a, sub_b), fuse_labels_loop(sub_a, sub_b)):
        raise RuntimeError("vectorised and loop fusion disagree")
    vec = _times(lambda: fuse_labels(y_a, y_b), args.repeats)
    loop = tuple(t * n / k for t in _times(lambda: fuse_labels_loop(sub_a, sub_b), args.repeats))
    print(f"label pair: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} uint8 ({n:,} voxels), one thread")
    print(f"{args.repeats} runs each")
    print(f"{'method':<34}{'median s':>12}{'best s':>12}")
    print(f"{'vectorised (4x4 lookup table)':<34}{vec[0]:>12.4f}{vec[1]:>12.4f}")
    note = "" if k == n else f"  (loop timed on {k:,} voxels, scaled per voxel)"
    print(f"{'pure-Python voxel loop':<34}{loop[0]:>12.2f}{loop[1]:>12.2f}{note}")
    print(f"speed-up: {loop[0] / vec[0]:,.0f}x (medians), {loop[1] / vec[1]:,.0f}x (best)")


if __name__ == "__main__":
    main()
