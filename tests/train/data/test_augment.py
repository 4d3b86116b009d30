from __future__ import annotations

import math

import pytest
import torch

from train.data.augment import AugmentParams, BatchAugment, rotate, rotation_matrices

SHAPE = (20, 18, 16)


def _batch(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Brain-like batch: an ellipsoid of non-zero intensity, a labelled blob inside it."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, n) for n in SHAPE]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    r2 = (x / 0.8) ** 2 + (y / 0.8) ** 2 + (z / 0.8) ** 2
    brain = r2 < 1
    image = torch.randn(b, 4, *SHAPE, generator=g) * brain
    image[:, :, brain] += 2.0  # keep brain voxels away from 0
    label = torch.zeros(b, *SHAPE, dtype=torch.int64)
    label[:, r2 < 0.5] = 2
    label[:, r2 < 0.25] = 1
    label[:, r2 < 0.1] = 3
    mask = torch.tensor(
        [[True, True, True, True], [True, False, True, False], [False] * 3 + [True]]
    )
    mask = mask[:b]
    image = image * mask[:, :, None, None, None]
    return image, label, mask


def test_rotation_by_zero_is_identity() -> None:
    image, label, _ = _batch()
    img, lab = rotate(image, label, torch.zeros(3, 3))
    assert torch.allclose(img, image, atol=1e-5)
    assert torch.equal(lab, label)


def test_rotation_matrices_are_orthonormal() -> None:
    angles = torch.tensor([[0.1, -0.2, 0.3], [math.pi / 2, 0.0, 0.0]])
    r = rotation_matrices(angles)
    eye = torch.eye(3).expand(2, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2), atol=1e-6)


def test_rotated_corners_are_background_never_an_invalid_class() -> None:
    image = torch.ones(2, 4, *SHAPE)
    label = torch.full((2, *SHAPE), 3, dtype=torch.int64)  # all ET: corners must become 0
    img, lab = rotate(image, label, torch.tensor([[0.0, 0.0, 0.6], [0.5, -0.4, 0.3]]))
    assert set(lab.unique().tolist()) == {0, 3}
    assert lab.dtype == torch.int64
    assert lab[:, 0, 0, 0].eq(0).all() and img[:, :, 0, 0, 0].eq(0).all()


def test_augmented_labels_stay_valid_and_shapes_dtypes_kept() -> None:
    aug = BatchAugment(rotate_deg=30.0, p_rotate=1.0)
    image, label, mask = _batch()
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        img, lab = aug(image, label, mask, g)
        assert img.shape == image.shape and img.dtype == image.dtype
        assert lab.shape == label.shape and lab.dtype == torch.int64
        assert set(lab.unique().tolist()) <= {0, 1, 2, 3}


def test_intensity_changes_only_present_modalities_inside_the_brain() -> None:
    aug = BatchAugment(flip=False, rotate_deg=0.0, scale=0.2, shift=0.5)
    image, label, mask = _batch()
    img, lab = aug(image, label, mask, torch.Generator().manual_seed(0))
    assert torch.equal(lab, label)
    background = (image == 0).all(dim=1)
    assert img.permute(1, 0, 2, 3, 4)[:, background].eq(0).all()
    absent = ~mask
    assert img[absent].eq(0).all()
    assert not torch.equal(img[mask], image[mask])


def test_flips_move_image_and_label_together() -> None:
    aug = BatchAugment(rotate_deg=0.0, scale=0.0, shift=0.0)
    image, label, mask = _batch()
    image[:, 0] = label.float()
    mask[:, 0] = True
    g = torch.Generator().manual_seed(5)
    flipped_any = False
    for _ in range(4):
        params = aug.sample(mask, g)
        img, lab = aug.apply(params, image, label)
        assert torch.equal(img[:, 0], lab.float())
        flipped_any |= bool(params.flips.any())
    assert flipped_any


def test_sample_then_apply_replays_exactly_and_seed_determines_output() -> None:
    aug = BatchAugment(p_rotate=1.0)
    image, label, mask = _batch()
    params = aug.sample(mask, torch.Generator().manual_seed(11))
    assert isinstance(params, AugmentParams)
    a = aug.apply(params, image, label)
    b = aug.apply(params, image, label)
    c = aug(image, label, mask, torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert params.scale[~mask].eq(1).all() and params.shift[~mask].eq(0).all()
    assert params.angles.abs().max() <= math.radians(10.0) + 1e-6


def test_bad_inputs_are_rejected() -> None:
    image, label, mask = _batch()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="image must be"):
        BatchAugment()(image[:, :3], label, mask, g)
    with pytest.raises(ValueError, match="label shape"):
        BatchAugment()(image, label[:, :-1], mask, g)
    with pytest.raises(ValueError, match="mask must be"):
        BatchAugment()(image, label, mask[:, :3], g)
    with pytest.raises(ValueError, match="p_rotate"):
        BatchAugment(p_rotate=1.5)
    with pytest.raises(ValueError, match="scale must be < 1"):
        BatchAugment(scale=1.0)
