"""Reflection across a mirror plane: flip equivalence, involution, point maps, crops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from aem_synth.synthesis.mirror import MirrorPlane, reflect, reflect_points, reflection_affine

SHAPE = (24, 20, 16)


def _smooth(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 3.0).astype(np.float32)


def test_zero_plane_is_exact_flip_for_images_masks_and_channels() -> None:
    img = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype(np.float32)
    mask = img[0] > 0
    assert np.array_equal(reflect(img, MirrorPlane(), order=1), np.flip(img, axis=1))
    out = reflect(mask, MirrorPlane(), order=0)
    assert out.dtype == np.bool_ and np.array_equal(out, np.flip(mask, axis=0))


def test_affine_path_reproduces_flip_and_half_voxel_shift() -> None:
    img = _smooth(1)
    # A tiny offset bypasses the flip special case: the affine maths must agree.
    near_zero = reflect(img, MirrorPlane(offset=1e-9), order=1)
    np.testing.assert_allclose(near_zero, np.flip(img, axis=0), atol=1e-5)
    # Plane half a voxel right of centre: out[x] = in[X - x], out[0] falls outside -> 0.
    shifted = reflect(img, MirrorPlane(offset=0.5), order=1)
    np.testing.assert_allclose(shifted[1:], np.flip(img, axis=0)[:-1], atol=1e-5)
    assert np.all(shifted[0] == 0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.2, 2.0)])
def test_known_point_maps(spacing: tuple[float, float, float]) -> None:
    plane = MirrorPlane(offset=1.5, yaw=4.0, roll=-3.0)
    c = plane.centre(SHAPE)
    s = np.asarray(spacing)
    on_plane = c + np.cross(plane.normal(), [0.0, 0.0, 1.0]) * 5.0 / s
    np.testing.assert_allclose(reflect_points(on_plane, plane, SHAPE, spacing)[0], on_plane)
    away = c + 3.0 * plane.normal() / s  # 3 mm along the normal
    np.testing.assert_allclose(
        reflect_points(away, plane, SHAPE, spacing)[0], c - 3.0 * plane.normal() / s, atol=1e-12
    )
    pts = np.random.default_rng(2).uniform(0, 20, size=(50, 3))
    twice = reflect_points(reflect_points(pts, plane, SHAPE, spacing), plane, SHAPE, spacing)
    np.testing.assert_allclose(twice, pts, atol=1e-10)
    matrix, _ = reflection_affine(plane, SHAPE, spacing)
    assert np.isclose(np.linalg.det(matrix), -1.0)


def test_involution_inside_volume() -> None:
    img = _smooth(3)
    plane = MirrorPlane(offset=1.3, yaw=3.0, roll=-2.0)
    back = reflect(reflect(img, plane, order=1), plane, order=1)
    inner = (slice(5, -5), slice(5, -5), slice(4, -4))
    err = np.abs(back[inner] - img[inner]).max()
    assert err < 0.05 * np.abs(img).max()


def test_support_crop_matches_full_grid() -> None:
    img = np.zeros((2, *SHAPE), dtype=np.float32)
    img[:, 3:9, 5:12, 4:10] = _smooth(4, (6, 7, 6)) + 2.0
    plane = MirrorPlane(offset=-0.7, yaw=2.5, roll=1.5)
    box = ((3, 9), (5, 12), (4, 10))
    full = reflect(img, plane, order=1)
    cropped = reflect(img, plane, order=1, support=box)
    np.testing.assert_allclose(cropped, full, atol=1e-5)
    labels = (img[0] > 2.0).astype(np.uint8) * 3
    np.testing.assert_array_equal(
        reflect(labels, plane, order=0, support=box), reflect(labels, plane, order=0)
    )


def test_dtypes_and_outside_is_zero() -> None:
    img = np.ones(SHAPE, dtype=np.float32)
    out = reflect(img, MirrorPlane(offset=3.0), order=1)
    assert out.dtype == np.float32
    assert np.all(out[:6] == 0) and np.all(out[7:] == 1)  # x' = 2*(11.5+3) - x >= 24 for x <= 4
    lab = np.full(SHAPE, 2, dtype=np.uint8)
    assert reflect(lab, MirrorPlane(yaw=2.0), order=0).dtype == np.uint8


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"order 0 .* or 1"):
        reflect(np.zeros(SHAPE, np.float32), MirrorPlane(), order=3)
    with pytest.raises(ValueError, match=r"\(X,Y,Z\) or \(C,X,Y,Z\)"):
        reflect(np.zeros((4, 4), np.float32), MirrorPlane(), order=1)
    with pytest.raises(ValueError, match="spacing must be three positive"):
        reflect(np.zeros(SHAPE, np.float32), MirrorPlane(yaw=1.0), (1.0, 0.0, 1.0), order=1)
    with pytest.raises(ValueError, match="exactly keys offset, yaw, roll"):
        MirrorPlane.from_dict({"offset": 1.0, "yaw": 0.0, "pitch": 0.0})


def test_plane_dict_round_trip() -> None:
    plane = MirrorPlane(offset=-1.25, yaw=3.5, roll=-0.75)
    assert MirrorPlane.from_dict(plane.to_dict()) == plane
    np.testing.assert_allclose(np.linalg.norm(plane.normal()), 1.0)


@pytest.mark.parametrize(
    "plane", [MirrorPlane(), MirrorPlane(offset=-0.7, yaw=2.5, roll=1.5)], ids=["flip", "tilted"]
)
def test_reflect_box_is_the_landing_box_of_the_full_reflection(plane: MirrorPlane) -> None:
    from aem_synth.synthesis.mirror import padded_box, reflect_box

    img = np.zeros((2, *SHAPE), dtype=np.float32)
    img[:, 3:9, 5:12, 4:10] = _smooth(4, (6, 7, 6)) + 2.0
    box = padded_box(((3, 9), (5, 12), (4, 10)), SHAPE)
    crop = img[(slice(None), *(slice(a, b) for a, b in box))]
    out_box, moved = reflect_box(crop, box, plane, SHAPE, order=1)
    full = reflect(img, plane, order=1, support=((3, 9), (5, 12), (4, 10)))
    inside = tuple(slice(a, b) for a, b in out_box)
    assert moved.dtype == np.float32
    assert moved.tobytes() == full[(slice(None), *inside)].tobytes()
    outside = full.copy()
    outside[(slice(None), *inside)] = 0.0
    assert not outside.any()  # nothing lands outside the returned box


def test_reflect_box_leaving_the_grid_is_empty_and_shape_is_checked() -> None:
    from aem_synth.synthesis.mirror import reflect_box

    crop = np.ones((3, 4, 4), dtype=np.uint8)
    box = ((0, 3), (8, 12), (6, 10))
    out_box, moved = reflect_box(crop, box, MirrorPlane(offset=11.0), SHAPE, order=0)
    assert moved.size == 0 and moved.dtype == np.uint8
    assert any(b <= a for a, b in out_box)
    with pytest.raises(ValueError, match=r"crop shape \(3, 4, 4\) does not match box"):
        reflect_box(crop, ((0, 4), (8, 12), (6, 10)), MirrorPlane(yaw=1.0), SHAPE, order=0)
