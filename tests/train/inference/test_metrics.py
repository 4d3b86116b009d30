"""Dice, HD95, regions and ET post-processing against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train.inference.metrics import (
    DICE_BOTH_EMPTY,
    DICE_ONE_EMPTY,
    HD95_BOTH_EMPTY_MM,
    HD95_EMPTY_MM,
    case_metrics,
    conventions,
    dice,
    hd95,
    postprocess_et,
    region_masks,
)

SHAPE = (24, 24, 24)


def cube(lo: tuple[int, int, int], size: tuple[int, int, int], shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))] = True
    return m


def test_dice_of_overlapping_cubes_matches_hand_count() -> None:
    a = cube((2, 2, 2), (4, 4, 4))  # 64 voxels
    b = cube((4, 2, 2), (4, 4, 4))  # 64 voxels, overlap 2x4x4 = 32
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    assert dice(a, a) == 1.0
    assert dice(a, cube((10, 10, 10), (2, 2, 2))) == 0.0


def test_empty_mask_conventions() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    full = cube((5, 5, 5), (3, 3, 3))
    assert dice(empty, empty) == DICE_BOTH_EMPTY == 1.0
    assert dice(full, empty) == dice(empty, full) == DICE_ONE_EMPTY == 0.0
    assert hd95(empty, empty) == HD95_BOTH_EMPTY_MM == 0.0
    assert hd95(full, empty) == hd95(empty, full) == HD95_EMPTY_MM
    assert HD95_EMPTY_MM == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.01)
    c = conventions()
    assert c["hd95_one_empty_mm"] == HD95_EMPTY_MM and c["dice_both_empty"] == 1.0


def test_hd95_identical_masks_is_zero() -> None:
    a = cube((3, 4, 5), (6, 5, 4))
    assert hd95(a, a, (1.0, 2.0, 3.0)) == 0.0


def test_hd95_of_cube_shifted_along_each_axis_scales_with_spacing() -> None:
    # A 6^3 cube shifted by 2 voxels along one axis: every surface voxel of one
    # cube lies 0 or 2 voxels from the other's surface.  Faces perpendicular
    # to the shift sit 2 voxels apart; more than 5% of the surface voxels are
    # on those faces, so the 95th percentile is exactly 2 voxels * spacing.
    a = cube((6, 6, 6), (6, 6, 6))
    spacing = (0.5, 1.5, 3.0)
    for axis in range(3):
        lo = [6, 6, 6]
        lo[axis] += 2
        b = cube(tuple(lo), (6, 6, 6))  # type: ignore[arg-type]
        assert hd95(a, b, spacing) == pytest.approx(2 * spacing[axis])
        assert hd95(b, a, spacing) == pytest.approx(2 * spacing[axis])


def test_hd95_single_voxels_uses_anisotropic_euclidean_distance() -> None:
    a = cube((1, 1, 1), (1, 1, 1))
    b = cube((4, 5, 3), (1, 1, 1))
    spacing = (1.0, 0.5, 2.0)
    expected = math.sqrt((3 * 1.0) ** 2 + (4 * 0.5) ** 2 + (2 * 2.0) ** 2)
    assert hd95(a, b, spacing) == pytest.approx(expected)


def test_hd95_is_95th_percentile_not_maximum() -> None:
    # A big cube plus one far outlier voxel in the prediction: the maximum
    # (Hausdorff) distance is large, HD95 stays at the cube's distance 0.
    gt = cube((2, 2, 2), (10, 10, 10))
    pred = gt.copy()
    pred[22, 22, 22] = True
    assert hd95(pred, gt) == 0.0


def test_hd95_mask_touching_border_counts_border_as_surface() -> None:
    a = cube((0, 0, 0), (4, 4, 4), shape=(8, 8, 8))
    b = cube((0, 0, 0), (5, 4, 4), shape=(8, 8, 8))
    assert hd95(a, b) == pytest.approx(1.0)


def test_hd95_rejects_bad_spacing_and_shapes() -> None:
    a = cube((1, 1, 1), (2, 2, 2))
    with pytest.raises(
        ValueError, match=r"spacing must be 3 positive values in mm, got \(1.0, 0.0, 1.0\)"
    ):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(
        ValueError, match=r"prediction has shape \(24, 24, 24\) but ground truth has \(4, 4, 4\)"
    ):
        dice(a, np.zeros((4, 4, 4), bool))


def test_region_masks_follow_brats_regions() -> None:
    lab = np.array([0, 1, 2, 3], dtype=np.uint8).reshape(4, 1, 1)
    m = region_masks(lab)
    assert m["WT"].ravel().tolist() == [False, True, True, True]
    assert m["TC"].ravel().tolist() == [False, True, False, True]
    assert m["ET"].ravel().tolist() == [False, False, False, True]


def test_case_metrics_per_region() -> None:
    gt = np.zeros(SHAPE, np.uint8)
    gt[cube((4, 4, 4), (8, 8, 8))] = 2
    gt[cube((6, 6, 6), (4, 4, 4))] = 1
    pred = gt.copy()
    pred[cube((6, 6, 6), (4, 4, 4))] = 3  # NCR predicted as ET
    m = case_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert m["dice_WT"] == 1.0 and m["hd95_WT"] == 0.0
    assert m["dice_TC"] == 1.0 and m["hd95_TC"] == 0.0
    assert m["dice_ET"] == 0.0 and m["hd95_ET"] == HD95_EMPTY_MM
    assert set(m) == {f"{k}_{r}" for k in ("dice", "hd95") for r in ("WT", "TC", "ET")}


def test_postprocess_et_relabels_small_et_only() -> None:
    lab = np.zeros(SHAPE, np.uint8)
    lab[cube((2, 2, 2), (3, 3, 3))] = 3  # 27 ET voxels
    lab[cube((10, 10, 10), (2, 2, 2))] = 2
    small = postprocess_et(lab, 28)
    assert not (small == 3).any() and (small == 1).sum() == 27 and (small == 2).sum() == 8
    assert (lab == 3).sum() == 27  # input untouched
    np.testing.assert_array_equal(postprocess_et(lab, 27), lab)
    np.testing.assert_array_equal(postprocess_et(lab, 0), lab)
    with pytest.raises(ValueError, match="threshold must be >= 0 voxels, got -1"):
        postprocess_et(lab, -1)
