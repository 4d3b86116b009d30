"""Load a case into the canonical RAS grid, checking its files against each other.

Orientation comes from each file's affine (NIfTI, via nibabel) or from its
direction / spacing / origin (``.mha``, via SimpleITK; ITK world coordinates are
LPS, converted here to RAS).  Every case is reoriented to RAS+ voxel axes with
``nibabel.orientations`` and keeps a :class:`~aem_synth.types.Geometry` so that
predictions can be written back on the original grid (see
``aem_synth.dataset.preprocess.to_original``).

Intensity rules: NaN/Inf values and all-zero modalities are rejected
(``CaseError`` naming the file); nothing is repaired silently.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt
from isal import igzip, isal_zlib
from nibabel import orientations as nio
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from aem_synth.dataset.background import case_background
from aem_synth.dataset.layouts import record_layout, resolve_layout
from aem_synth.errors import CaseError
from aem_synth.types import MODALITIES, CaseRecord, FloatArray, Geometry, LoadedCase

__all__ = [
    "AFFINE_TOL_MM",
    "affine_from_itk",
    "gunzip",
    "itk_from_affine",
    "load_case",
    "load_volume",
    "read_raw",
]

AFFINE_TOL_MM = 1e-3
"""Largest difference (mm) allowed between the affines of one case's files."""

_NIFTI2_SIZEOF_HDR_LE = (540).to_bytes(4, "little")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_RAS = nio.axcodes2ornt(("R", "A", "S"))
# isal's stubs declare its error class as an instance of Exception.
_ISAL_ERROR = cast(type[Exception], isal_zlib.error)
_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    RuntimeError,
    ImageFileError,
    HeaderDataError,
    WrapStructError,
)


def affine_from_itk(
    direction: npt.ArrayLike, spacing: npt.ArrayLike, origin: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Voxel -> RAS+ (mm) affine from ITK direction (3x3, row-major), spacing and origin (LPS).

    The voxel index order is ITK's ``(i, j, k)``, i.e. the ``(x, y, z)`` order of
    the array transposed from ``sitk.GetArrayFromImage`` (which is ``(k, j, i)``).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ d @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_from_affine(
    affine: npt.ArrayLike,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of :func:`affine_from_itk`: ``(direction row-major 9, spacing 3, origin 3)``."""
    a = np.asarray(affine, dtype=np.float64)
    lps = _LPS_TO_RAS @ a[:3, :3]
    spacing = np.sqrt((lps**2).sum(axis=0))
    direction = lps / spacing
    origin = _LPS_TO_RAS @ a[:3, 3]
    return tuple(direction.ravel().tolist()), tuple(spacing.tolist()), tuple(origin.tolist())


def read_raw(
    path: Path | str, *, case_id: str | None = None, four_d: bool = False
) -> tuple[np.ndarray, npt.NDArray[np.float64]]:
    """Read one file's voxels in on-disk order and dtype, plus its RAS affine.

    Parameters
    ----------
    path : Path or str
        ``.nii``, ``.nii.gz`` or any SimpleITK-readable file (``.mha``).
    case_id : str, optional
        Case named in errors (default: the parent folder's name).
    four_d : bool
        Accept (X, Y, Z, C) files (channels along the 4th axis, MSD).

    Returns
    -------
    data : ndarray, (X, Y, Z), on-disk voxel order, stored dtype (scaled when the
        NIfTI header has a slope/intercept)
    affine : ndarray, float64, (4, 4), voxel -> RAS+ mm

    Raises
    ------
    CaseError
        Unreadable or corrupt file, or not 3-D (a trailing singleton 4th axis is
        accepted and dropped).
    """
    path = Path(path)
    cid = case_id if case_id is not None else path.parent.name
    if path.is_symlink() and not path.exists():
        raise CaseError(
            cid, f"{path} is a broken symbolic link (its target {os.readlink(path)} does not exist)"
        )
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            data, affine = _read_nifti(path)
        else:
            data, affine = _read_itk(path)
    except CaseError:
        raise
    except _READ_ERRORS as exc:
        raise CaseError(cid, f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1 and not four_d:
        data = data[..., 0]
    if data.ndim != 3 and not (four_d and data.ndim == 4):
        want = "a 3-D or 4-D (X, Y, Z, channel)" if four_d else "a 3-D"
        raise CaseError(cid, f"{path}: expected {want} volume, got shape {data.shape}")
    return data, affine


def load_volume(
    path: Path | str, *, case_id: str | None = None
) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    """Read one image file as float32 ``(X, Y, Z)`` in on-disk voxel order, plus its RAS affine.

    Raises
    ------
    CaseError
        Unreadable file, wrong dimensionality, or NaN/Inf intensities.
    """
    data, affine = read_raw(path, case_id=case_id)
    cid = case_id if case_id is not None else Path(path).parent.name
    _check_finite(data, cid, path)
    return np.asarray(data, dtype=np.float32), affine


def load_case(record: CaseRecord, *, require_label: bool = False) -> LoadedCase:
    """Load all files of a case, check them against each other and reorient to RAS+.

    Parameters
    ----------
    record : CaseRecord
        From :func:`aem_synth.dataset.discover.discover` or ``discover_case``.
    require_label : bool
        Raise when the case has no segmentation file.

    Returns
    -------
    LoadedCase
        ``image`` float32 ``(4, X, Y, Z)`` in canonical RAS axes (absent
        modalities zero), ``label`` uint8 internal 0/1/2/3 or ``None``,
        ``background`` the constant outside the head per modality.  Each
        channel and the label keep the file's memory order (Fortran-ordered
        for BraTS files, positive strides), so loading costs no transpose;
        :func:`aem_synth.dataset.preprocess.normalise` returns C-contiguous arrays.

    Raises
    ------
    CaseError
        No modality at all, missing label under ``require_label``, unreadable
        file, shape or affine mismatch between files (naming both), NaN/Inf
        intensities, an all-zero modality, or unknown label values.
    """
    cid = record.case_id
    resolve_layout(record.layout)  # unknown layout names fail before any file is read
    if not record.modalities:
        raise CaseError(cid, f"no modality file in {record.directory}")
    if require_label and record.seg is None:
        raise CaseError(cid, f"unlabelled: no segmentation file in {record.directory}")
    order = [m for m in MODALITIES if m in record.modalities]
    reader = _ChannelReader(record)
    first_path = Path(record.modalities[order[0]])
    first, affine = reader.read(order[0])
    ref = _Ref(first_path, first.shape, affine)
    ornt = nio.ornt_transform(nio.io_orientation(affine), _RAS)
    spatial = tuple(int(n) for n in nio.apply_orientation(first, ornt).shape)
    # Each channel keeps the file's memory order (Fortran for NIfTI and ITK): reorienting
    # then costs a streaming copy, not a transpose; preprocessing writes C-ordered crops.
    image = np.zeros((4, *spatial[::-1]), dtype=np.float32).transpose(0, 3, 2, 1)
    for modality in order:
        path = Path(record.modalities[modality])
        if modality == order[0]:
            data = first
        else:
            data, aff = reader.read(modality)
            _check_same_grid(cid, ref, path, data.shape, aff)
        where = reader.describe(modality)
        _check_finite(data, cid, where)
        if not data.any():
            raise CaseError(cid, f"{where}: {modality} is all zero")
        # One pass: reorder to RAS and cast to float32 together.
        image[MODALITIES.index(modality)] = nio.apply_orientation(data, ornt)
    label = None
    if record.seg is not None:
        raw = _read_matching(cid, ref, Path(record.seg))
        internal = record_layout(record.layout, record.label_map).map_labels(raw, cid, record.seg)
        label = np.asfortranarray(nio.apply_orientation(internal, ornt))
    present = (
        "flair" in record.modalities,
        "t1" in record.modalities,
        "t1ce" in record.modalities,
        "t2" in record.modalities,
    )
    geometry = _geometry(ref.shape, ref.affine, ornt)
    return LoadedCase(record, image, present, label, geometry, case_background(image, present))


class _ChannelReader:
    """Reads a case's modalities, each file once: a 4-D file (MSD) holds several channels."""

    def __init__(self, record: CaseRecord) -> None:
        self.record = record
        self._files: dict[Path, tuple[np.ndarray, npt.NDArray[np.float64]]] = {}

    def describe(self, modality: str) -> str:
        path = self.record.modalities[modality]
        channels = self.record.channels
        return f"{path}" if channels is None else f"{path} (channel {channels[modality]})"

    def read(self, modality: str) -> tuple[np.ndarray, npt.NDArray[np.float64]]:
        """On-disk voxels (X, Y, Z) and affine of one modality."""
        path = Path(self.record.modalities[modality])
        channels = self.record.channels
        if channels is None:
            return read_raw(path, case_id=self.record.case_id)
        if path not in self._files:
            self._files[path] = read_raw(path, case_id=self.record.case_id, four_d=True)
        data, affine = self._files[path]
        index = channels[modality]
        if data.ndim != 4 or not 0 <= index < data.shape[3]:
            raise CaseError(
                self.record.case_id,
                f"{path}: {modality} is channel {index} (dataset.json) but the file has shape "
                f"{data.shape}",
            )
        return data[..., index], affine


class _Ref(NamedTuple):
    """The first file of a case, against which the others are checked."""

    path: Path
    shape: tuple[int, ...]
    affine: npt.NDArray[np.float64]


def _read_matching(case_id: str, ref: _Ref, path: Path) -> np.ndarray:
    data, affine = read_raw(path, case_id=case_id)
    _check_same_grid(case_id, ref, path, data.shape, affine)
    return data


def _geometry(
    shape: tuple[int, ...], affine: npt.NDArray[np.float64], ornt: npt.NDArray[np.float64]
) -> Geometry:
    canonical_affine = affine @ nio.inv_ornt_aff(ornt, shape)
    spacing = np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))
    return Geometry(
        original_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        original_affine=affine,
        canonical_affine=canonical_affine,
        ornt=ornt.astype(np.int64),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
    )


def _check_same_grid(
    case_id: str,
    ref: _Ref,
    path: Path,
    shape: tuple[int, ...],
    affine: npt.NDArray[np.float64],
) -> None:
    ref_path, ref_shape, ref_affine = ref
    if tuple(shape) != tuple(ref_shape):
        raise CaseError(
            case_id,
            f"shape mismatch: {path.name} has {tuple(shape)} but {ref_path.name} has {tuple(ref_shape)}",
        )
    diff = float(np.max(np.abs(affine - ref_affine)))
    if diff > AFFINE_TOL_MM:
        raise CaseError(
            case_id,
            f"affine mismatch: {path.name} differs from {ref_path.name} by {diff:.4g} mm "
            f"(tolerance {AFFINE_TOL_MM} mm); {path.name} affine rows "
            f"{np.round(affine[:3], 4).tolist()} vs {np.round(ref_affine[:3], 4).tolist()}",
        )


def _check_finite(data: np.ndarray, case_id: str, path: Path | str) -> None:
    if data.dtype.kind in "fc":
        bad = ~np.isfinite(data)
        if bad.any():
            raise CaseError(case_id, f"{path}: {int(bad.sum())} NaN/Inf intensities")


def gunzip(data: bytes) -> bytes:
    """Decompress a whole gzip member (a ``.nii.gz`` file's bytes).

    One-shot ISA-L decompression: ~4x faster than :func:`gzip.decompress` on
    BraTS volumes, and faster than nibabel's chunked gzip stream.  Corrupt data
    raises :class:`zlib.error` (or ``EOFError`` / ``gzip.BadGzipFile``), as
    the standard library does, so callers catch one set of errors.
    """
    try:
        return igzip.decompress(data)
    except _ISAL_ERROR as exc:
        raise zlib.error(str(exc)) from exc


def _read_nifti(path: Path) -> tuple[np.ndarray, npt.NDArray[np.float64]]:
    if path.name.lower().endswith(".gz"):
        raw = gunzip(path.read_bytes())
        nifti2 = raw[:4] in (_NIFTI2_SIZEOF_HDR_LE, _NIFTI2_SIZEOF_HDR_LE[::-1])
        img: Any = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)
    else:
        img = nib.load(path)  # a Nifti1/2Image; nibabel's stubs only know FileBasedImage
    # Raw (scaled) values: integer images stay integer, cast once when reoriented.
    data = np.asanyarray(img.dataobj)
    return data, np.asarray(img.affine, dtype=np.float64)


def _read_itk(path: Path) -> tuple[np.ndarray, npt.NDArray[np.float64]]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    elif dim != 3:
        return sitk.GetArrayFromImage(img).T, np.eye(4)
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    return data, affine_from_itk(img.GetDirection(), img.GetSpacing(), img.GetOrigin())
