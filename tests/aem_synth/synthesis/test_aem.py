"""Asymmetric error maps, the tumour part (incl. the midline rule) and transfer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from aem_synth.errors import CaseError
from aem_synth.synthesis import asymmetric_error_map, mirror_tumour, transfer, tumour_part
from aem_synth.synthesis.mirror import MirrorPlane

SHAPE = (32, 28, 20)
PLANE = MirrorPlane(offset=0.8, yaw=3.0, roll=-2.0)


def _brain(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(d) for d in shape], indexing="ij")
    r = sum(((g - (d - 1) / 2) / (0.42 * d)) ** 2 for g, d in zip(grids, shape, strict=True))
    return np.asarray(r <= 1.0)


def _image(seed: int, brain: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.normal(size=(4, *brain.shape)), (0, 2, 2, 2))
    img = (img / img.std()).astype(np.float32)
    img[:, ~brain] = 0.0
    return img


def _ball(centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(d) for d in SHAPE], indexing="ij")
    return np.asarray(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2)


def test_abs_is_abs_of_signed_and_zero_plane_is_flip_difference() -> None:
    img = _image(0, _brain())
    signed = asymmetric_error_map(img, PLANE)
    assert signed.dtype == np.float32 and signed.shape == img.shape
    np.testing.assert_array_equal(asymmetric_error_map(img, PLANE, mode="abs"), np.abs(signed))
    np.testing.assert_array_equal(
        asymmetric_error_map(img, MirrorPlane()), img - np.flip(img, axis=1)
    )


def test_tumour_part_zero_outside_tumour_and_equals_aem_where_mirror_healthy() -> None:
    brain = _brain()
    img = _image(1, brain)
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((9, 14, 10), 4)] = 2
    label[_ball((9, 14, 10), 2)] = 3
    for mode in ("signed", "abs"):
        t = tumour_part(img, label, PLANE, mode=mode)
        assert t.dtype == np.float32
        assert np.all(t[:, label == 0] == 0)
        d = asymmetric_error_map(img, PLANE, mode=mode)
        np.testing.assert_allclose(t[:, label > 0], d[:, label > 0], atol=1e-5)
    np.testing.assert_allclose(
        tumour_part(img, label, PLANE, mode="abs"), np.abs(tumour_part(img, label, PLANE)), atol=0
    )


def test_midline_crossing_tumour_uses_healthy_reference() -> None:
    brain = _brain()
    healthy_value = np.array([1.0, -0.5, 0.25, 2.0], np.float32)
    tumour_value = np.array([4.0, -2.0, 3.0, 5.0], np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[_ball(((SHAPE[0] - 1) / 2, 14, 10), 5)] = 1  # centred on the mid-plane
    img = np.where(label > 0, tumour_value[:, None, None, None], healthy_value[:, None, None, None])
    img = (img * brain).astype(np.float32)
    naive = asymmetric_error_map(img, MirrorPlane())
    assert np.allclose(naive[:, label > 0], 0.0)  # tumour minus tumour: no estimate at all
    t = tumour_part(img, label, MirrorPlane())
    expected = (tumour_value - healthy_value)[:, None]
    np.testing.assert_allclose(t[:, label > 0], np.broadcast_to(expected, t[:, label > 0].shape))


def test_tumour_whose_mirror_leaves_the_brain_uses_healthy_reference() -> None:
    brain = _brain()
    brain[: SHAPE[0] // 2 - 3] &= False  # left part missing: mirrors of right voxels leave it
    brain[SHAPE[0] // 2 - 3 :] = _brain()[SHAPE[0] // 2 - 3 :]
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((24, 14, 10), 3)] = 3
    img = np.where(label > 0, 3.0, 1.0)[None].repeat(4, axis=0).astype(np.float32) * brain
    t = tumour_part(img, label, MirrorPlane(), brain_mask_b=brain)
    np.testing.assert_allclose(t[:, label > 0], 2.0)


def test_mirror_tumour_moves_it_to_the_other_hemisphere() -> None:
    img = _image(2, _brain())
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((8, 14, 10), 3)] = 3
    t = tumour_part(img, label, PLANE)
    t2, y2 = mirror_tumour(t, label, PLANE)
    x_before = np.argwhere(label > 0)[:, 0].mean()
    x_after = np.argwhere(y2 > 0)[:, 0].mean()
    assert x_before < SHAPE[0] / 2 < x_after
    assert np.all(t2[:, y2 == 0] == 0)
    assert np.count_nonzero(t2[0]) > 0.8 * np.count_nonzero(t[0])
    assert set(np.unique(y2)) <= {0, 3}


def test_transfer_restricted_to_anatomy_brain_background_exactly_zero() -> None:
    brain_a = _brain()
    brain_a[:, :6] = False
    img_a = _image(3, brain_a)
    label_a = np.zeros(SHAPE, np.uint8)
    label_a[_ball((22, 14, 10), 3)] = 2
    label_b = np.zeros(SHAPE, np.uint8)
    label_b[_ball((12, 5, 10), 4)] = 1  # partly outside A's brain (y < 6)
    label_b[_ball((22, 14, 10), 1.5)] = 3  # overlaps A's oedema: ET wins
    t_b = np.where(label_b > 0, -1.5, 0.0)[None].repeat(4, axis=0).astype(np.float32)
    image_ab, label_ab = transfer(img_a, label_a, brain_a, t_b, label_b)
    assert image_ab.dtype == np.float32 and label_ab.dtype == np.uint8
    outside = ~brain_a
    assert np.all(image_ab[:, outside] == 0) and not np.signbit(image_ab[:, outside]).any()
    assert np.all(label_ab[outside] == 0)
    np.testing.assert_array_equal(image_ab[:, brain_a], (img_a + t_b)[:, brain_a])
    assert np.all(label_ab[(label_b == 3) & brain_a] == 3)
    assert np.all(label_ab[(label_b == 1) & brain_a & (label_a == 0)] == 1)
    assert np.all(label_ab[(label_a == 2) & (label_b == 0)] == 2)


def test_transfer_shape_mismatch_names_both_cases() -> None:
    img = np.zeros((4, *SHAPE), np.float32)
    small = np.zeros((4, 30, 28, 20), np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    with pytest.raises(CaseError, match=r"caseA: image grid .* does not match donor caseB"):
        transfer(img, lab, lab > 0, small, lab, anatomy_id="caseA", donor_id="caseB")
    with pytest.raises(CaseError, match="caseB: label shape"):
        transfer(img, lab, lab > 0, img, lab[:-1], anatomy_id="caseA", donor_id="caseB")


def test_mode_and_shape_errors() -> None:
    img = np.zeros((4, *SHAPE), np.float32)
    with pytest.raises(ValueError, match="AEM mode must be one of"):
        asymmetric_error_map(img, PLANE, mode="squared")  # type: ignore[arg-type]
    with pytest.raises(CaseError, match="donor7: image must have shape \\(4, X, Y, Z\\)"):
        tumour_part(img[:3], np.zeros(SHAPE, np.uint8), PLANE, case_id="donor7")


def test_tumour_part_box_is_the_tumour_bbox_of_the_full_part_for_a_crop() -> None:
    from aem_synth.synthesis import tumour_part_box

    brain = _brain()
    img = _image(4, brain)
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((9, 14, 10), 4)] = 2
    label[_ball((9, 14, 10), 2)] = 3
    full = tumour_part(img, label, PLANE, brain_mask_b=brain)
    sl = (slice(2, 30), slice(3, 26), slice(1, 19))  # a crop containing the whole brain
    part = tumour_part_box(
        img[(slice(None), *sl)],
        label[sl],
        PLANE,
        brain_mask_b=brain[sl],
        origin=(2, 3, 1),
        grid=SHAPE,
    )
    assert part is not None
    idx = np.argwhere(label > 0)
    assert part.box == tuple(
        (int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0), strict=True)
    )
    box_sl = tuple(slice(a, b) for a, b in part.box)
    assert part.image.tobytes() == full[(slice(None), *box_sl)].tobytes()
    np.testing.assert_array_equal(part.label, label[box_sl])
    assert tumour_part_box(img, np.zeros(SHAPE, np.uint8), PLANE) is None
    with pytest.raises(CaseError, match=r"d9: crop of shape .* at \(5, 0, 0\) does not fit"):
        tumour_part_box(img, label, PLANE, origin=(5, 0, 0), grid=SHAPE, case_id="d9")


def test_transfer_box_rejects_bad_labels_and_shapes() -> None:
    from aem_synth.synthesis import transfer_box

    img = np.zeros((4, *SHAPE), np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    box = tuple((0, d) for d in SHAPE)
    with pytest.raises(CaseError, match=r"caseA: label value 4 outside the internal labels"):
        transfer_box(img, lab + 4, lab > 0, None, box, anatomy_id="caseA")  # type: ignore[arg-type]
    with pytest.raises(CaseError, match=r"caseA: brain mask shape .* does not match image grid"):
        transfer_box(img, lab, (lab > 0)[:-1], None, box, anatomy_id="caseA")  # type: ignore[arg-type]
    out, out_label = transfer_box(img, lab, lab == 0, None, box)  # type: ignore[arg-type]
    assert out.shape == img.shape and not out.any() and not out_label.any()
