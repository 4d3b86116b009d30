"""Ranked label fusion: ET (3) > NCR/NET (1) > ED (2) > background (0).

``fuse_labels`` is vectorised through a 4 x 4 lookup table indexed
``[y_a, y_b]`` (built from ``FUSION_RANK``); ``fuse_labels_loop`` is the
obvious per-voxel loop, kept only as the reference the tests and
``benchmarks/bench_fusion.py`` compare against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from aem_synth.types import FUSION_RANK, LabelArray

__all__ = ["FUSION_TABLE", "fuse_labels", "fuse_labels_loop"]

N_LABELS = 4


def _table() -> npt.NDArray[np.uint8]:
    table = np.zeros((N_LABELS, N_LABELS), dtype=np.uint8)
    for a in range(N_LABELS):
        for b in range(N_LABELS):
            table[a, b] = a if FUSION_RANK[a] >= FUSION_RANK[b] else b
    return table


FUSION_TABLE: npt.NDArray[np.uint8] = _table()
"""``FUSION_TABLE[a, b]`` is the fused label of labels ``a`` and ``b`` (uint8, 4 x 4)."""
FUSION_TABLE.setflags(write=False)


def _check(name: str, y: npt.NDArray[Any]) -> None:
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
        raise ValueError(f"fuse_labels: {name} must hold integer labels, got dtype {y.dtype}")
    if y.size == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= N_LABELS:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"fuse_labels: {name} has label value {bad}; internal labels are 0 background, "
            "1 NCR/NET, 2 ED, 3 ET (map dataset labels such as 4 before fusing)"
        )


def fuse_labels(y_a: npt.NDArray[Any], y_b: npt.NDArray[Any]) -> LabelArray:
    """Fuse two label volumes voxel-wise by rank ET > NCR/NET > ED > background.

    Parameters
    ----------
    y_a, y_b : ndarray, integer, same shape (e.g. (X, Y, Z))
        Internal labels 0/1/2/3.

    Returns
    -------
    ndarray, uint8, same shape
        Equal to ``FUSION_TABLE[y_a, y_b]``.

    Raises
    ------
    ValueError
        On a shape mismatch, a non-integer dtype or a value outside 0..3.
    """
    y_a, y_b = np.asarray(y_a), np.asarray(y_b)
    if y_a.shape != y_b.shape:
        raise ValueError(f"fuse_labels: shapes differ, y_a {y_a.shape} vs y_b {y_b.shape}")
    _check("y_a", y_a)
    _check("y_b", y_b)
    # One flat uint8 index per voxel (4*a + b) keeps the lookup to a single take.
    index = y_a.astype(np.uint8, copy=False) << 2
    index |= y_b.astype(np.uint8, copy=False)
    return np.take(FUSION_TABLE.ravel(), index)


def fuse_labels_loop(y_a: npt.NDArray[Any], y_b: npt.NDArray[Any]) -> LabelArray:
    """Reference implementation: a pure-Python loop over voxels (slow; tests/benchmarks only)."""
    if np.shape(y_a) != np.shape(y_b):
        raise ValueError(f"fuse_labels_loop: shapes differ, {np.shape(y_a)} vs {np.shape(y_b)}")
    flat_a = np.asarray(y_a).ravel().tolist()
    flat_b = np.asarray(y_b).ravel().tolist()
    out = []
    for a, b in zip(flat_a, flat_b, strict=True):
        if a not in FUSION_RANK or b not in FUSION_RANK:
            raise ValueError(f"fuse_labels_loop: label values must be 0..3, got {a}, {b}")
        out.append(a if FUSION_RANK[a] >= FUSION_RANK[b] else b)
    return np.asarray(out, dtype=np.uint8).reshape(np.shape(y_a))
