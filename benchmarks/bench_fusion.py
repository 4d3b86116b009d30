"""Ranked label fusion: vectorised lookup table versus pure-Python voxel loops.

Usage: ``python benchmarks/bench_fusion.py [--repeats 9] [--loop-slices 8]``

All methods fuse the same random label pair of BraTS crop size 140 x 175 x 135
(axes x, y, z; uint8 labels 0..3) and are checked to agree.  Two loop
references, both pure Python:

* **nested index loop** (the primary reference, the reference code's
  approach): three nested ``for`` loops over ``(x, y, z)`` that read
  ``y_a[x, y, z]`` and ``y_b[x, y, z]`` and write ``out[x, y, z]``, ranking
  through a dict;
* **tight list loop** (a stricter reference): the arrays are turned into flat
  Python lists first (``tolist``) and fused by one ``for`` over ``zip``
  (:func:`aem_synth.synthesis.fusion.fuse_labels_loop`), which avoids numpy element
  access and is several times faster than the nested loop.

The loops are timed on the first ``--loop-slices`` x-slices of the box (whole
(y, z) planes) and scaled per voxel to the full box; the output says so.
Times are medians (and bests) over ``--repeats`` runs, one thread.
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
import numpy.typing as npt  # noqa: E402

from aem_synth.synthesis.fusion import fuse_labels, fuse_labels_loop  # noqa: E402
from aem_synth.types import FUSION_RANK  # noqa: E402

SHAPE = (140, 175, 135)


def fuse_nested_loop(
    y_a: npt.NDArray[np.uint8], y_b: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """Fuse two (X, Y, Z) label volumes with a nested index loop (the slow reference)."""
    out = np.zeros(y_a.shape, dtype=np.uint8)
    nx, ny, nz = y_a.shape
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                a = y_a[x, y, z]
                b = y_b[x, y, z]
                if a not in FUSION_RANK or b not in FUSION_RANK:
                    raise ValueError(f"label values must be 0..3, got {a}, {b} at {(x, y, z)}")
                out[x, y, z] = a if FUSION_RANK[a] >= FUSION_RANK[b] else b
    return out


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
    parser.add_argument("--loop-slices", type=int, default=8, help="x-slices the loops run on")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y_a = rng.integers(0, 4, size=SHAPE, dtype=np.uint8)
    y_b = rng.integers(0, 4, size=SHAPE, dtype=np.uint8)
    n = y_a.size
    slab = slice(0, min(args.loop_slices, SHAPE[0]))
    sub_a, sub_b = y_a[slab], y_b[slab]
    k = sub_a.size
    expected = fuse_labels(sub_a, sub_b)
    for name, fn in (("nested", fuse_nested_loop), ("list", fuse_labels_loop)):
        if not np.array_equal(fn(sub_a, sub_b), expected):
            raise RuntimeError(f"vectorised and {name} loop fusion disagree")
    scale = n / k
    vec = _times(lambda: fuse_labels(y_a, y_b), args.repeats)
    nested = [t * scale for t in _times(lambda: fuse_nested_loop(sub_a, sub_b), args.repeats)]
    tight = [t * scale for t in _times(lambda: fuse_labels_loop(sub_a, sub_b), args.repeats)]
    print(f"label pair: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} uint8 ({n:,} voxels), one thread")
    print(
        f"{args.repeats} runs each; loops timed on the first {slab.stop} x-slices "
        f"({k:,} voxels) and scaled per voxel to the full box"
    )
    print(f"{'method':<48}{'median s':>10}{'best s':>10}{'speed-up (median)':>19}")
    rows = (
        ("vectorised (4x4 lookup table)", vec),
        ("nested index loop over (x, y, z) [reference]", nested),
        ("tight list loop (tolist + dict) [stricter]", tight),
    )
    for name, (med, best) in rows:
        print(f"{name:<48}{med:>10.4f}{best:>10.4f}{med / vec[0]:>18,.0f}x")
    print(
        f"speed-up vs nested index loop: {nested[0] / vec[0]:,.0f}x (medians), "
        f"{nested[1] / vec[1]:,.0f}x (best); vs tight list loop: {tight[0] / vec[0]:,.0f}x "
        f"(medians), {tight[1] / vec[1]:,.0f}x (best)"
    )


if __name__ == "__main__":
    main()
