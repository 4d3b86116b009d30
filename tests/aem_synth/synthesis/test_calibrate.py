"""Symmetry calibration: accuracy on masks with a known plane, the Dice guarantee, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aem_synth.errors import CaseError
from aem_synth.synthesis.calibrate import Calibration, calibrate, mask_dice, plane_errors
from aem_synth.synthesis.mirror import MirrorPlane

SHAPE = (64, 64, 40)


def symmetric_brain(shape: tuple[int, int, int], plane: MirrorPlane) -> np.ndarray:
    """An egg-shaped 'brain' that is exactly symmetric about ``plane`` (1 mm voxels).

    Its half-width across the plane changes front to back and bottom to top, so
    both yaw and roll are identifiable from the outline alone.
    """
    n = plane.normal()
    u = np.cross([0.0, 0.0, 1.0], n)
    u /= np.linalg.norm(u)
    w = np.cross(n, u)
    grids = np.meshgrid(*[np.arange(d, dtype=np.float64) for d in shape], indexing="ij")
    p = np.stack(grids, axis=-1) - plane.centre(shape)
    d, pu, pw = p @ n, p @ u, p @ w
    a0, b, c = 0.30 * shape[0], 0.40 * shape[1], 0.38 * shape[2]
    a = a0 * (1 + 0.2 * pu / b) * (1 - 0.15 * pw / c)
    return (d / a) ** 2 + (pu / b) ** 2 + (pw / c) ** 2 <= 1.0


PLANES = [
    MirrorPlane(offset=3.2, yaw=-4.1, roll=2.7),
    MirrorPlane(offset=-3.8, yaw=4.6, roll=-4.4),
    MirrorPlane(offset=0.6, yaw=1.3, roll=4.9),
]


@pytest.mark.parametrize("true", PLANES)
def test_recovers_known_plane(true: MirrorPlane) -> None:
    result = calibrate(symmetric_brain(SHAPE, true))
    offset_err, angle_err = plane_errors(result.plane, true)
    assert offset_err <= 0.5
    assert angle_err <= 1.0
    assert result.dice_plane >= result.dice_flip
    assert result.dice_plane > 0.97


def test_dice_never_below_flip_on_asymmetric_mask() -> None:
    rng = np.random.default_rng(5)
    mask = symmetric_brain(SHAPE, MirrorPlane(offset=1.0, yaw=2.0))
    mask[:30, 20:40, 10:25] |= rng.random((30, 20, 15)) < 0.6  # one-sided blob of noise
    result = calibrate(mask)
    assert result.dice_plane >= result.dice_flip
    assert result.dice_flip == pytest.approx(mask_dice(mask, np.flip(mask, axis=0)))


def test_perfectly_centred_mask_keeps_flip_quality() -> None:
    result = calibrate(symmetric_brain(SHAPE, MirrorPlane()))
    assert result.dice_flip > 0.999
    assert result.dice_plane >= result.dice_flip


def test_plane_errors_compare_offset_at_centre_and_normal_angle() -> None:
    off, ang = plane_errors(MirrorPlane(1.0, 3.0, 0.0), MirrorPlane(-0.5, 0.0, 0.0))
    assert off == pytest.approx(1.5)
    assert ang == pytest.approx(3.0)
    _, ang = plane_errors(MirrorPlane(0.0, 3.0, 4.0), MirrorPlane(0.0, 3.0, 4.0))
    assert ang == pytest.approx(0.0, abs=1e-6)


def test_calibration_dict_round_trip_is_json() -> None:
    cal = Calibration(MirrorPlane(0.5, 1.0, -2.0), 0.95, 0.96, 0.3)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_errors_name_case_and_rule() -> None:
    with pytest.raises(CaseError, match="case7: calibrate: the brain mask is empty"):
        calibrate(np.zeros(SHAPE, dtype=bool), case_id="case7")
    with pytest.raises(CaseError, match="bool \\(X,Y,Z\\) brain mask, got float32"):
        calibrate(np.zeros(SHAPE, dtype=np.float32))
    with pytest.raises(CaseError, match="search ranges must be >= 0"):
        calibrate(np.ones(SHAPE, dtype=bool), max_offset=-1.0)


@pytest.mark.slow
def test_real_cases_never_below_flip(brats_samples: Path) -> None:
    nib = pytest.importorskip("nibabel")
    for case in sorted(p for p in brats_samples.iterdir() if p.is_dir()):
        mask = None
        for f in sorted(case.glob("*.nii.gz")):
            if "seg" in f.name:
                continue
            a = np.asarray(nib.as_closest_canonical(nib.load(f)).dataobj) > 0
            mask = a if mask is None else mask | a
        assert mask is not None
        result = calibrate(mask)
        assert result.dice_plane >= result.dice_flip, case.name


def test_search_cost_follows_the_grid_size() -> None:
    from aem_synth.synthesis.calibrate import MAX_POINTS, _factors, _max_points

    # BraTS size keeps the benchmarked search (coarse 4, fine 2, MAX_POINTS per level) ...
    assert _factors((240, 240, 155)) == (4, 2) and _max_points((240, 240, 155)) == MAX_POINTS
    # ... and small grids scan on a coarse grid too, with fewer scored points.
    assert _factors(SHAPE) == (2, 1) and _factors((48, 48, 32)) == (2, 1)
    assert _factors((16, 16, 12)) == (1, 1)
    sizes = [(32, 32, 20), SHAPE, (128, 128, 80), (240, 240, 155)]
    points = [_max_points(s) for s in sizes]
    assert points == sorted(points) and points[0] < points[-1]


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_occupancy_equals_the_block_mean_of_the_padded_mask(factor: int) -> None:
    from aem_synth.synthesis.calibrate import _occupancy

    rng = np.random.default_rng(factor)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 23, 3))
        mask = np.zeros(shape, dtype=bool)
        box = tuple(slice(int(rng.integers(0, n)), int(rng.integers(0, n)) + 1) for n in shape)
        mask[box] = rng.random(mask[box].shape) < 0.8
        pad = [(0, (-n) % factor) for n in shape]
        padded = np.pad(mask, pad).astype(np.float32)
        x, y, z = (n // factor for n in padded.shape)
        expected = padded.reshape(x, factor, y, factor, z, factor).mean(axis=(1, 3, 5))
        found = _occupancy(mask, factor)
        assert found.dtype == np.float32
        np.testing.assert_array_equal(found, expected)
    assert not _occupancy(np.zeros((5, 6, 7), bool), factor).any()


@pytest.mark.parametrize("band", [None, 2, 6])
def test_filters_on_the_occupancy_box_equal_whole_grid_filters(band: int | None) -> None:
    from scipy import ndimage

    from aem_synth.synthesis.calibrate import _filtered

    rng = np.random.default_rng(7)
    for corner in (False, True):
        occ = np.zeros((30, 26, 22), np.float32)
        box = (slice(0, 9), slice(0, 12), slice(0, 7)) if corner else np.s_[8:20, 5:19, 6:15]
        occ[box] = rng.integers(0, 9, occ[box].shape) / np.float32(8)
        field, deep = _filtered(occ, band)
        expected = ndimage.gaussian_filter(occ, sigma=1.0, mode="constant")
        assert field.tobytes() == expected.tobytes()
        if band is None:
            assert deep is None
        else:
            wide = ndimage.uniform_filter(occ, size=2 * band + 1, mode="constant") > 0.999
            assert deep is not None and np.array_equal(deep, wide)
