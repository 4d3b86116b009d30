"""Loading: canonical RAS orientation from the affine / ITK direction, grids, labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from aem_synth.dataset.discover import discover, discover_case
from aem_synth.dataset.load import affine_from_itk, itk_from_affine, load_case, load_volume
from aem_synth.types import MODALITIES

SHAPE = (7, 6, 5)
TOKENS = ("flair", "t1", "t1ce", "t2")

# Axis codes -> a 4x4 affine with 1-2 mm voxels; each is a different on-disk orientation.
ORIENTED_AFFINES = {
    "LPS": np.array([[-1.0, 0, 0, 10], [0, -1.0, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]]),
    "RAS": np.array([[1.0, 0, 0, -3], [0, 1.5, 0, 2], [0, 0, 1.0, 7], [0, 0, 0, 1]]),
    "PIR": np.array([[0, 0, 1.0, -4], [-1.0, 0, 0, 9], [0, -2.0, 0, 3], [0, 0, 0, 1]]),
    "SLA": np.array([[0, -1.0, 0, 5], [0, 0, 1.0, 1], [1.5, 0, 0, -2], [0, 0, 0, 1]]),
}


def volume(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Positive int16 intensities, all distinct so voxel identity can be traced."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))) + 1).reshape(shape).astype(np.int16)


def labels(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    seg = np.zeros(shape, dtype=np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    seg[2, 2, 2] = 4
    seg[1, 1, 1] = 1
    return seg


def write_2020_case(root: Path, case_id: str, affine: np.ndarray) -> Path:
    case = root / case_id
    case.mkdir(parents=True)
    for i, tok in enumerate(TOKENS):
        nib.save(nib.Nifti1Image(volume(i), affine), case / f"{case_id}_{tok}.nii.gz")
    nib.save(nib.Nifti1Image(labels(), affine), case / f"{case_id}_seg.nii.gz")
    return case


def world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("codes", sorted(ORIENTED_AFFINES))
def test_canonical_grid_is_ras_and_keeps_world_positions(tmp_path: Path, codes: str) -> None:
    affine = ORIENTED_AFFINES[codes]
    assert "".join(nib.aff2axcodes(affine)) == codes
    case = load_case(discover_case(write_2020_case(tmp_path, "c1", affine)))
    geo = case.geometry
    assert "".join(nib.aff2axcodes(geo.canonical_affine)) == "RAS"
    assert np.all(np.diag(geo.canonical_affine)[:3] > 0)
    assert geo.original_shape == SHAPE
    np.testing.assert_array_equal(geo.original_affine, affine)
    assert sorted(case.image.shape[1:]) == sorted(SHAPE)
    assert sorted(geo.spacing) == sorted(np.sqrt((affine[:3, :3] ** 2).sum(0)).tolist())
    # Every canonical voxel holds the on-disk value found at the same world position.
    disk = volume(1)
    canon = case.image[1]
    idx = np.argwhere(np.ones(canon.shape, dtype=bool))
    values = canon[tuple(idx.T)].astype(np.int64)
    disk_idx = np.array(np.unravel_index(np.argsort(disk, axis=None), SHAPE)).T[values - 1]
    np.testing.assert_allclose(world(geo.canonical_affine, idx), world(affine, disk_idx))


def test_loaded_arrays_types_and_labels(tmp_path: Path) -> None:
    case = load_case(discover_case(write_2020_case(tmp_path, "c1", ORIENTED_AFFINES["RAS"])))
    assert case.image.dtype == np.float32 and case.image.shape == (4, *SHAPE)
    assert case.present == (True, True, True, True)
    assert case.label is not None and case.label.dtype == np.uint8
    # Channels and label keep the file's (Fortran) memory order; no negative strides.
    assert case.label.flags.f_contiguous and case.image[0].flags.f_contiguous
    assert set(np.unique(case.label).tolist()) == {0, 1, 2, 3}
    assert case.label[2, 2, 2] == 3  # on-disk 4 (ET) -> internal 3
    for i in range(4):
        np.testing.assert_array_equal(case.image[i], volume(i).astype(np.float32))


def test_absent_modality_is_zero_and_flagged(tmp_path: Path) -> None:
    case_dir = write_2020_case(tmp_path, "c1", ORIENTED_AFFINES["LPS"])
    (case_dir / "c1_t1.nii.gz").unlink()
    (case_dir / "c1_seg.nii.gz").unlink()
    case = load_case(discover_case(case_dir))
    assert case.present == (True, False, True, True)
    assert not case.image[MODALITIES.index("t1")].any()
    assert case.label is None


def test_nifti_and_mha_give_the_same_canonical_case(tmp_path: Path) -> None:
    affine = ORIENTED_AFFINES["PIR"]
    nifti = load_case(discover_case(write_2020_case(tmp_path, "c1", affine)))
    case = tmp_path / "pat1"
    direction, spacing, origin = itk_from_affine(affine)
    for i, tok in enumerate([*(f"MR_{t}" for t in ("Flair", "T1", "T1c", "T2")), "OT"]):
        prefix = "VSD.Brain_3more" if tok == "OT" else "VSD.Brain"
        name = f"{prefix}.XX.O.{tok}.{i}"
        (case / name).mkdir(parents=True)
        data = labels() if tok == "OT" else volume(i)
        img = sitk.GetImageFromArray(data.transpose(2, 1, 0))
        img.SetDirection(direction)
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        sitk.WriteImage(img, str(case / name / f"{name}.mha"))
    (rec,) = discover(tmp_path, layout="brats2015")
    mha = load_case(rec)
    np.testing.assert_array_equal(mha.image, nifti.image)
    np.testing.assert_array_equal(mha.label, nifti.label)
    np.testing.assert_allclose(mha.geometry.original_affine, affine, atol=1e-9)
    np.testing.assert_allclose(mha.geometry.canonical_affine, nifti.geometry.canonical_affine)


def test_itk_affine_conversion_round_trip() -> None:
    rng = np.random.default_rng(0)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    spacing = np.array([0.9, 1.1, 3.0])
    origin = rng.normal(size=3) * 50
    affine = affine_from_itk(rot.ravel(), spacing, origin)
    direction, sp, org = itk_from_affine(affine)
    np.testing.assert_allclose(np.reshape(direction, (3, 3)), rot, atol=1e-12)
    np.testing.assert_allclose(sp, spacing)
    np.testing.assert_allclose(org, origin)
    # ITK identity direction is LPS: x grows to the left, y to posterior.
    lps = affine_from_itk(np.eye(3).ravel(), (1, 1, 1), (0, 0, 0))
    assert "".join(nib.aff2axcodes(lps)) == "LPS"


def test_load_volume_returns_on_disk_order(tmp_path: Path) -> None:
    affine = ORIENTED_AFFINES["SLA"]
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume(3), affine), path)
    data, aff = load_volume(path)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, volume(3))
    np.testing.assert_array_equal(aff, affine)


def test_scaled_nifti_is_read_with_its_slope(tmp_path: Path) -> None:
    path = tmp_path / "v.nii.gz"
    img = nib.Nifti1Image(volume(0), np.eye(4))
    img.header.set_slope_inter(0.5, 1.0)
    nib.save(img, path)
    data, _ = load_volume(path)
    np.testing.assert_allclose(data, volume(0) * 0.5 + 1.0)


@pytest.mark.parametrize("cls", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti1_and_nifti2_compressed_or_not(tmp_path: Path, cls: type, suffix: str) -> None:
    path = tmp_path / f"v{suffix}"
    nib.save(cls(volume(2), ORIENTED_AFFINES["LPS"]), path)
    data, aff = load_volume(path)
    np.testing.assert_array_equal(data, volume(2))
    np.testing.assert_array_equal(aff, ORIENTED_AFFINES["LPS"])


def test_broken_link_modality_fails_naming_the_link(phantom_2020: Path, tmp_path: Path) -> None:
    import shutil

    from aem_synth.errors import CaseError

    src = sorted(p for p in phantom_2020.iterdir() if p.is_dir())[0]
    case = Path(shutil.copytree(src, tmp_path / src.name))
    link = case / f"{src.name}_t1ce.nii.gz"
    link.unlink()
    link.symlink_to(tmp_path / "moved_away.nii.gz")
    with pytest.raises(CaseError, match=r"t1ce.nii.gz is a broken symbolic link .*moved_away"):
        load_case(discover_case(case))
