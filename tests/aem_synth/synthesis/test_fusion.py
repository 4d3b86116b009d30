"""Ranked label fusion against the per-voxel loop reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aem_synth.synthesis.fusion import FUSION_TABLE, fuse_labels, fuse_labels_loop
from aem_synth.types import FUSION_RANK


def test_exhaustive_table_matches_loop_and_rank() -> None:
    pairs = np.array(list(itertools.product(range(4), repeat=2)), dtype=np.uint8)
    a, b = pairs[:, 0], pairs[:, 1]
    fused = fuse_labels(a, b)
    np.testing.assert_array_equal(fused, fuse_labels_loop(a, b))
    for x, y, f in zip(a, b, fused, strict=True):
        assert f in (x, y)
        assert FUSION_RANK[int(f)] == max(FUSION_RANK[int(x)], FUSION_RANK[int(y)])
    # The order ET > NCR/NET > ED > background, spelled out.
    assert FUSION_TABLE[3, 1] == 3 and FUSION_TABLE[1, 2] == 1 and FUSION_TABLE[2, 0] == 2
    np.testing.assert_array_equal(FUSION_TABLE, FUSION_TABLE.T)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_random_volumes_match_loop(dtype: type) -> None:
    rng = np.random.default_rng(0)
    a: np.ndarray = rng.integers(0, 4, size=(9, 7, 5)).astype(dtype)
    b: np.ndarray = rng.integers(0, 4, size=(9, 7, 5)).astype(dtype)
    a_before = a.copy()
    fused = fuse_labels(a, b)
    assert fused.dtype == np.uint8 and fused.shape == a.shape
    np.testing.assert_array_equal(fused, fuse_labels_loop(a, b))
    np.testing.assert_array_equal(a, a_before)


def test_invalid_labels_rejected() -> None:
    ok = np.zeros((3, 3), np.uint8)
    with pytest.raises(ValueError, match=r"y_b has label value 4.*map dataset labels"):
        fuse_labels(ok, np.full((3, 3), 4, np.uint8))
    with pytest.raises(ValueError, match="y_a has label value -1"):
        fuse_labels(np.full((3, 3), -1, np.int8), ok)
    with pytest.raises(ValueError, match="integer labels, got dtype float32"):
        fuse_labels(ok.astype(np.float32), ok)
    with pytest.raises(ValueError, match=r"shapes differ, y_a \(3, 3\) vs y_b \(3, 2\)"):
        fuse_labels(ok, ok[:, :2])
    with pytest.raises(ValueError, match=r"label values must be 0\.\.3"):
        fuse_labels_loop(ok, np.full((3, 3), 4, np.uint8))
