"""Preprocessing: mask, crop box, z-score, and the way back to the file on disk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nibabel as nib
import nibabel.nifti1
import numpy as np
import pytest
import SimpleITK as sitk

from aem_synth.dataset.discover import discover_case
from aem_synth.dataset.layouts import LAYOUTS
from aem_synth.dataset.load import load_case, load_volume
from aem_synth.dataset.preprocess import (
    bounding_box,
    brain_mask,
    crop,
    normalise,
    preprocess_case,
    to_original,
    uncrop,
    write_label_like,
)
from aem_synth.errors import CaseError
from aem_synth.types import CaseRecord, Geometry, LoadedCase

SHAPE = (12, 10, 8)
ALL = (True, True, True, True)


def brain_image(seed: int = 0) -> np.ndarray:
    """(4, X, Y, Z) float32: positive noisy values in a box-shaped brain, 0 outside."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *SHAPE), dtype=np.float32)
    image[:, 2:9, 3:8, 1:6] = rng.uniform(50, 500, size=(4, 7, 5, 5)).astype(np.float32)
    return image


def loaded(image: np.ndarray, label: np.ndarray | None = None, present=ALL) -> LoadedCase:
    geometry = Geometry(SHAPE, np.eye(4), np.eye(4), np.array([[0, 1], [1, 1], [2, 1]]), (1.0,) * 3)
    record = CaseRecord("c1", "brats2020", Path("c1"), {}, None)
    return LoadedCase(record, image, present, label, geometry)


def test_brain_mask_uses_present_modalities_only() -> None:
    image = np.zeros((4, *SHAPE), dtype=np.float32)
    image[0, 1, 1, 1] = 5.0
    image[1, 2, 2, 2] = 3.0
    image[2, 3, 3, 3] = -4.0  # differs from the background 0: brain
    mask = brain_mask(image, (True, False, True, True))
    assert mask.dtype == np.bool_ and mask.shape == SHAPE
    assert np.argwhere(mask).tolist() == [[1, 1, 1], [3, 3, 3]]


def test_brain_mask_without_constant_border_counts_positive_voxels() -> None:
    image = np.zeros((4, *SHAPE), dtype=np.float32)
    image[0, 1, 1, 1] = 5.0
    image[0, 3, 3, 3] = -4.0  # no known background: negative is not brain
    mask = brain_mask(image, ALL, (None, None, None, None))
    assert np.argwhere(mask).tolist() == [[1, 1, 1]]


def test_bounding_box_half_open_with_margin_clipped() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2, 3, 0] = mask[5, 4, 7] = True
    assert bounding_box(mask) == ((2, 6), (3, 5), (0, 8))
    assert bounding_box(mask, margin=3) == ((0, 9), (0, 8), (0, 8))
    with pytest.raises(ValueError, match="mask is empty"):
        bounding_box(np.zeros(SHAPE, dtype=bool))
    with pytest.raises(ValueError, match="margin must be >= 0, got -1"):
        bounding_box(mask, margin=-1)


def test_crop_uncrop_round_trip() -> None:
    image = brain_image()
    box = ((2, 9), (3, 8), (1, 6))
    cropped = crop(image, box)
    assert cropped.shape == (4, 7, 5, 5)
    back = uncrop(cropped, box, SHAPE, fill=0)
    np.testing.assert_array_equal(back, image)
    with pytest.raises(ValueError, match="does not match box"):
        uncrop(cropped[:, :3], box, SHAPE)
    with pytest.raises(ValueError, match="does not fit in full shape"):
        uncrop(cropped, ((8, 15), (3, 8), (1, 6)), SHAPE)


def test_normalise_zscore_inside_brain_background_exact_zero() -> None:
    image = brain_image()
    out, mask, stats = normalise(image, (True, True, False, True))
    assert out.dtype == np.float32 and out.shape == image.shape
    for idx in (0, 1, 3):
        inside = out[idx][mask].astype(np.float64)
        assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1.0) < 1e-5
    # Background is +0.0 exactly (no -0.0 bytes), and the absent modality is all zero.
    assert not np.signbit(out[:, ~mask]).any() and not out[:, ~mask].any()
    assert not out[2].any()
    assert set(stats) == {"flair", "t1", "t2"}
    np.testing.assert_allclose(stats["t1"]["mean"], image[1][mask].mean(dtype=np.float64))


def test_normalise_rejects_constant_modality_and_empty_mask() -> None:
    image = brain_image()
    image[2][image[2] > 0] = 7.0
    with pytest.raises(CaseError, match=r"c9: t1ce is constant \(7\) inside the brain mask"):
        normalise(image, ALL, case_id="c9")
    with pytest.raises(CaseError, match="brain mask is empty"):
        normalise(np.zeros((4, *SHAPE), dtype=np.float32), ALL, case_id="c9")


def test_preprocess_case_equals_cropped_full_grid_normalisation() -> None:
    image = brain_image(3)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:6, 4:6, 2:4] = 3
    pre = preprocess_case(loaded(image, label), margin=1)
    full, mask, stats = normalise(image, ALL)
    assert pre.crop_box == ((1, 10), (2, 9), (0, 7))
    np.testing.assert_array_equal(pre.image, crop(full, pre.crop_box))
    np.testing.assert_array_equal(pre.brain_mask, crop(mask, pre.crop_box))
    assert pre.label is not None
    np.testing.assert_array_equal(uncrop(pre.label, pre.crop_box, SHAPE), label)
    assert pre.stats == stats
    assert pre.image.flags.c_contiguous and pre.label is not None and pre.label.flags.c_contiguous


def test_preprocess_case_without_brain_raises() -> None:
    with pytest.raises(CaseError, match="c1: brain mask is empty"):
        preprocess_case(loaded(np.zeros((4, *SHAPE), dtype=np.float32)))


def _write_oriented_case(tmp_path: Path, affine: np.ndarray) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    case = tmp_path / "c1"
    case.mkdir()
    for tok in ("flair", "t1", "t1ce", "t2"):
        data = rng.integers(1, 100, size=SHAPE).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine), case / f"c1_{tok}.nii.gz")
    seg = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=SHAPE)
    nib.save(nib.Nifti1Image(seg, affine), case / "c1_seg.nii.gz")
    return case, seg


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([-1.0, -1.0, 1.0, 1.0]),
        np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]]),
    ],
    ids=["LPS", "PIR"],
)
def test_to_original_and_write_label_like_restore_the_file(
    tmp_path: Path, affine: np.ndarray
) -> None:
    case_dir, seg = _write_oriented_case(tmp_path, affine)
    case = load_case(discover_case(case_dir))
    assert case.label is not None
    layout = LAYOUTS["brats2020"]
    np.testing.assert_array_equal(
        to_original(layout.to_layout_labels(case.label), case.geometry), seg
    )
    out = write_label_like(
        case.label, case.geometry, "brats2020", case_dir / "c1_t1.nii.gz", tmp_path / "p.nii.gz"
    )
    written = nib.nifti1.load(out)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), seg)
    np.testing.assert_allclose(written.affine, affine)
    mha = write_label_like(
        case.label, case.geometry, layout, case_dir / "c1_t1.nii.gz", tmp_path / "p.mha"
    )
    data, mha_affine = load_volume(mha)
    np.testing.assert_array_equal(data, seg)
    np.testing.assert_allclose(mha_affine, affine, atol=1e-9)
    assert sitk.ReadImage(str(mha)).GetPixelID() == sitk.sitkUInt8


def test_to_original_rejects_wrong_shape(tmp_path: Path) -> None:
    case_dir, _ = _write_oriented_case(tmp_path, np.eye(4))
    case = load_case(discover_case(case_dir))
    with pytest.raises(ValueError, match="does not match the canonical grid"):
        to_original(np.zeros((3, 3, 3), dtype=np.uint8), case.geometry)


def test_write_label_like_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies half way (here: nibabel writes some bytes, then fails) leaves
    neither a file at the target nor a temporary file beside it."""
    case_dir, _ = _write_oriented_case(tmp_path, np.eye(4))
    case = load_case(discover_case(case_dir))
    assert case.label is not None
    out = tmp_path / "out" / "p.nii.gz"

    def dying_save(img: object, path: object) -> None:
        Path(str(path)).write_bytes(b"\x1f\x8b partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        write_label_like(case.label, case.geometry, "brats2020", case_dir / "c1_t1.nii.gz", out)
    assert list(out.parent.iterdir()) == []


def test_write_label_like_removes_temporaries_of_killed_writers(tmp_path: Path) -> None:
    case_dir, _ = _write_oriented_case(tmp_path, np.eye(4))
    case = load_case(discover_case(case_dir))
    assert case.label is not None
    out = tmp_path / "out" / "p.nii.gz"
    out.parent.mkdir()
    dead = _dead_pid()
    stale = out.parent / f".tmp-{dead}-p.nii.gz"
    stale.write_bytes(b"half a file")
    live = out.parent / f".tmp-{os.getpid()}-other.nii.gz"  # another target: left alone
    live.write_bytes(b"x")
    write_label_like(case.label, case.geometry, "brats2020", case_dir / "c1_t1.nii.gz", out)
    assert sorted(p.name for p in out.parent.iterdir()) == [live.name, "p.nii.gz"]


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
