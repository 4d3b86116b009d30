"""Brain mask, crop box, z-score normalisation, and the way back to the original file.

All arrays are in the canonical RAS grid of :mod:`aem_synth.dataset.load`: images
float32 ``(4, X, Y, Z)`` (modality order ``MODALITIES``), masks bool and labels
uint8 ``(X, Y, Z)``.  Crop boxes are half-open voxel ranges in that grid.

Two normalisations share one implementation: :func:`normalise` works on the
full common grid (AEM synthesis adds tumours there, DESIGN §4), and
:func:`preprocess_case` crops first and normalises the crop, which gives the
same values because the brain mask lies entirely inside its bounding box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel import orientations as nio

from aem_synth.dataset.background import case_background
from aem_synth.dataset.layouts import Layout, resolve_layout
from aem_synth.dataset.load import itk_from_affine
from aem_synth.errors import CaseError
from aem_synth.types import (
    MODALITIES,
    BoolArray,
    Box,
    FloatArray,
    Geometry,
    LoadedCase,
    PreprocessedCase,
)

__all__ = [
    "EMPTY_BRAIN",
    "bounding_box",
    "brain_mask",
    "case_brain_mask",
    "crop",
    "normalise",
    "preprocess_case",
    "to_original",
    "uncrop",
    "write_label_like",
]

_MIN_STD = 1e-6
EMPTY_BRAIN = "brain mask is empty (every present modality equals its background)"
_S = TypeVar("_S", bound=np.generic)


def brain_mask(
    image: FloatArray,
    present: tuple[bool, ...],
    background: Sequence[float | None] | None = None,
) -> BoolArray:
    """Voxels where any present modality differs from its background.

    Parameters
    ----------
    image : ndarray, float, (4, X, Y, Z)
    present : tuple of 4 bool
        Modalities to use (absent ones are ignored).
    background : sequence of 4 (float or None), optional
        Per modality, the constant outside the head (see
        :func:`aem_synth.dataset.background.detect_background`, which fills it
        in when not given).  A modality whose background is ``None`` (border
        not constant) counts where it is > 0.

    Returns
    -------
    ndarray, bool, (X, Y, Z)
    """
    if image.ndim != 4 or image.shape[0] != len(present):
        raise ValueError(f"image must be (4, X, Y, Z) matching present, got {image.shape}")
    if background is None:
        background = case_background(image, present)
    mask = np.zeros_like(image[0], dtype=bool)  # same memory order as the channels
    scratch = np.empty_like(mask)
    for channel, used, bg in zip(image, present, background, strict=True):
        if not used:
            continue
        if bg is None:
            np.greater(channel, 0, out=scratch)
        else:
            np.not_equal(channel, np.asarray(bg, dtype=channel.dtype), out=scratch)
        mask |= scratch
    return mask


def case_brain_mask(case: LoadedCase) -> BoolArray:
    """:func:`brain_mask` of a loaded case (its present modalities and backgrounds).

    Returns
    -------
    ndarray, bool, (X, Y, Z)
        In the memory order of the case's channels.

    Raises
    ------
    CaseError
        The mask is empty: every present modality equals its background.
    """
    mask = brain_mask(case.image, case.present, case.background)
    if not mask.any():
        raise CaseError(case.case_id, EMPTY_BRAIN)
    return mask


def bounding_box(mask: BoolArray, margin: int = 0) -> Box:
    """Half-open bounding box of the True voxels, grown by ``margin`` voxels and clipped.

    Raises
    ------
    ValueError
        Empty mask, not 3-D, or negative margin.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (X, Y, Z), got shape {mask.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    along_yz = np.any(mask, axis=0)
    projections = (np.any(mask, axis=(1, 2)), np.any(along_yz, axis=1), np.any(along_yz, axis=0))
    ranges = []
    for proj, size in zip(projections, mask.shape, strict=True):
        hits = np.flatnonzero(proj)
        if hits.size == 0:
            raise ValueError("mask is empty: no bounding box")
        ranges.append((max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, size)))
    return (ranges[0], ranges[1], ranges[2])


def crop(arr: npt.NDArray[_S], box: Box) -> npt.NDArray[_S]:
    """View of ``arr[..., x0:x1, y0:y1, z0:z1]`` (the last three axes are X, Y, Z)."""
    (x0, x1), (y0, y1), (z0, z1) = box
    return arr[..., x0:x1, y0:y1, z0:z1]


def uncrop(
    arr: npt.NDArray[_S],
    box: Box,
    full_shape: tuple[int, int, int],
    fill: float = 0,
) -> npt.NDArray[_S]:
    """Place a cropped array (..., x, y, z) back into a ``full_shape`` grid filled with ``fill``.

    Raises
    ------
    ValueError
        When the box does not fit ``full_shape`` or does not match ``arr``'s shape.
    """
    extents = tuple(hi - lo for lo, hi in box)
    if arr.shape[-3:] != extents:
        raise ValueError(f"array spatial shape {arr.shape[-3:]} does not match box {box}")
    if any(lo < 0 or hi > n for (lo, hi), n in zip(box, full_shape, strict=True)):
        raise ValueError(f"box {box} does not fit in full shape {tuple(full_shape)}")
    out = np.full((*arr.shape[:-3], *full_shape), fill, dtype=arr.dtype)
    crop(out, box)[...] = arr
    return out


def normalise(
    image: FloatArray,
    present: tuple[bool, ...],
    mask: BoolArray | None = None,
    *,
    case_id: str = "image",
) -> tuple[FloatArray, BoolArray, dict[str, dict[str, float]]]:
    """Z-score each present modality over the brain mask; background exactly 0.

    Parameters
    ----------
    image : ndarray, float32, (4, X, Y, Z)
        Raw intensities (any grid: full or cropped).
    present : tuple of 4 bool
    mask : ndarray, bool, (X, Y, Z), optional
        Brain mask; default :func:`brain_mask`.
    case_id : str
        Named in errors.

    Returns
    -------
    image : ndarray, float32, (4, X, Y, Z)
        New C-contiguous array; absent modalities and voxels outside the mask are 0.0.
    mask : ndarray, bool, (X, Y, Z), C-contiguous
    stats : dict
        ``{modality: {"mean": float, "std": float}}`` for present modalities
        (intensity units of the input), computed in float64.

    Raises
    ------
    CaseError
        Empty mask, or a present modality that is constant over the brain.
    """
    if mask is None:
        mask = brain_mask(image, present)
    if mask.shape != image.shape[1:]:
        raise ValueError(f"{case_id}: mask shape {mask.shape} != image shape {image.shape[1:]}")
    n_brain = int(np.count_nonzero(mask))
    if n_brain == 0:
        raise CaseError(case_id, EMPTY_BRAIN)
    # Statistics do not depend on voxel order: gather in memory order (loaded channels are
    # Fortran-ordered); the output is written C-ordered in the same pass as the shift.
    fortran = image[0].strides[0] < image[0].strides[-1]
    gather_mask = mask.T if fortran else mask
    brain = np.ascontiguousarray(mask)
    out = np.zeros(image.shape, dtype=np.float32)
    stats: dict[str, dict[str, float]] = {}
    for idx, (name, used) in enumerate(zip(MODALITIES, present, strict=True)):
        if not used:
            continue
        channel = image[idx]
        values = (channel.T if fortran else channel)[gather_mask].astype(np.float64)
        mean = float(values.mean())
        values -= mean
        np.square(values, out=values)  # not np.dot: BLAS threads stall on a busy machine
        std = float(np.sqrt(values.mean()))
        if std < _MIN_STD:
            raise CaseError(case_id, f"{name} is constant ({mean:.6g}) inside the brain mask")
        # Background stays the +0.0 of np.zeros (scaling keeps it +0.0, never -0.0).
        np.subtract(channel, np.float32(mean), out=out[idx], where=brain)
        out[idx] *= np.float32(1.0 / std)
        stats[name] = {"mean": mean, "std": std}
    return out, brain, stats


def preprocess_case(case: LoadedCase, *, margin: int = 0) -> PreprocessedCase:
    """Brain mask, crop to its bounding box (+ ``margin``), z-score over the brain.

    Returns
    -------
    PreprocessedCase
        Contiguous cropped arrays: image float32 ``(4, x, y, z)``, label uint8,
        brain mask bool; ``crop_box`` in the canonical full grid.
    """
    mask_full = case_brain_mask(case)
    box = bounding_box(mask_full, margin)
    mask = np.ascontiguousarray(crop(mask_full, box))
    image, mask, stats = normalise(crop(case.image, box), case.present, mask, case_id=case.case_id)
    label = None if case.label is None else np.ascontiguousarray(crop(case.label, box))
    return PreprocessedCase(
        case_id=case.case_id,
        image=image,
        label=label,
        brain_mask=mask,
        crop_box=box,
        present=case.present,
        geometry=case.geometry,
        stats=stats,
    )


def to_original(arr: npt.NDArray[_S], geometry: Geometry) -> npt.NDArray[_S]:
    """Undo the load-time reorientation: canonical ``(X, Y, Z)`` -> on-disk voxel order.

    Parameters
    ----------
    arr : ndarray, (X, Y, Z) canonical full grid, any dtype
    geometry : Geometry
        From the loaded case.

    Returns
    -------
    ndarray, contiguous, shape ``geometry.original_shape``; exact (no resampling).
    """
    ornt = np.asarray(geometry.ornt)
    inverse = np.empty_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inverse[int(dst_axis)] = (src_axis, flip)
    out = nio.apply_orientation(arr, inverse)
    if out.shape != tuple(geometry.original_shape):
        raise ValueError(
            f"array shape {arr.shape} does not match the canonical grid of "
            f"original shape {geometry.original_shape}"
        )
    return np.ascontiguousarray(out)


def write_label_like(
    label_internal_full_canonical: npt.NDArray[np.integer],
    geometry: Geometry,
    layout: Layout | str,
    reference_file: Path | str,
    out_path: Path | str,
) -> Path:
    """Write an internal-label volume on the original grid with the layout's label values.

    Parameters
    ----------
    label_internal_full_canonical : ndarray, integer, (X, Y, Z)
        Internal labels 0/1/2/3 in the canonical full grid.
    geometry : Geometry
        Of the case the labels belong to.
    layout : Layout or str
        Target label values (e.g. 0/1/2/4 for ``brats2020``).
    reference_file : Path or str
        A file of the case; its NIfTI header (codes, units) is reused.
    out_path : Path or str
        ``.nii``/``.nii.gz`` (NIfTI) or another SimpleITK format such as ``.mha``.

    Returns
    -------
    Path
        ``out_path``; the file holds uint8 labels.  It is written under a
        temporary name in the same folder and renamed into place, so a killed
        or failed write never leaves a partial file at ``out_path``.
    """
    lay = resolve_layout(layout) if isinstance(layout, str) else layout
    data = to_original(lay.to_layout_labels(label_internal_full_canonical), geometry)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(geometry.original_affine, dtype=np.float64)
    _remove_stale_temporaries(out_path)
    # The temporary name keeps the extension: nibabel and SimpleITK choose the format by it.
    tmp = out_path.with_name(f".tmp-{os.getpid()}-{out_path.name}")
    try:
        if out_path.name.lower().endswith((".nii", ".nii.gz")):
            _write_nifti(data, affine, Path(reference_file), tmp)
        else:
            _write_itk(data, affine, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _remove_stale_temporaries(out_path: Path) -> None:
    """Delete temporary files of ``out_path`` left by writers that were killed (dead pids)."""
    for stale in out_path.parent.glob(f".tmp-*-{out_path.name}"):
        pid = stale.name.split("-", 2)[1]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_nifti(data: np.ndarray, affine: np.ndarray, reference: Path, out_path: Path) -> None:
    header = None
    if reference.name.lower().endswith((".nii", ".nii.gz")):
        header = nib.load(reference).header.copy()
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_data_shape(data.shape)
    nib.save(img, out_path)


def _write_itk(data: np.ndarray, affine: np.ndarray, out_path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    direction, spacing, origin = itk_from_affine(affine)
    img.SetDirection(direction)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(out_path), useCompression=True)
