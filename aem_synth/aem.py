"""Asymmetric error maps (AEM), the donor's tumour part, and its transfer onto an anatomy.

All volumes are full-grid (the shared BraTS atlas grid), canonical RAS axes
``(x, y, z)``, z-score normalised per modality over the brain with background
exactly 0 (:func:`aem_synth.preprocess.normalise`); images are float32
``(4, X, Y, Z)`` in the order ``MODALITIES``, labels uint8 ``(X, Y, Z)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .errors import CaseError
from .fusion import fuse_labels
from .mirror import MirrorPlane, Spacing, reflect, reflect_points
from .types import BoolArray, Box, FloatArray, LabelArray

__all__ = ["MODES", "Mode", "asymmetric_error_map", "mirror_tumour", "transfer", "tumour_part"]

Mode = Literal["signed", "abs"]
MODES: tuple[str, ...] = ("signed", "abs")

# A mirrored position counts as healthy when at least this fraction of its
# linear-interpolation weight falls on healthy brain voxels.
HEALTHY_FRACTION = 0.5
# Fewer healthy voxels than this near the contaminated voxels: use the whole brain.
MIN_REFERENCE_VOXELS = 50


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"AEM mode must be one of {MODES}, got {mode!r}")


def _check_image(image: FloatArray, case_id: str) -> None:
    if image.ndim != 4 or image.shape[0] != 4:
        raise CaseError(case_id, f"image must have shape (4, X, Y, Z), got {image.shape}")


def asymmetric_error_map(
    image: FloatArray,
    plane: MirrorPlane,
    spacing: Spacing = (1.0, 1.0, 1.0),
    *,
    mode: Mode = "signed",
) -> FloatArray:
    """``D = X - R(X)`` (``mode="signed"``) or ``|X - R(X)|`` (``mode="abs"``), per modality.

    Parameters
    ----------
    image : ndarray, float32, (4, X, Y, Z)
    plane : MirrorPlane
        The case's calibrated mirror plane.
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.
    mode : {"signed", "abs"}
        ``signed`` keeps hypo-intense tumour dark (the additive tumour part);
        ``abs`` is the paper's formula.

    Returns
    -------
    ndarray, float32, (4, X, Y, Z)
    """
    _check_mode(mode)
    _check_image(image, "image")
    diff = image.astype(np.float32, copy=False) - reflect(image, plane, spacing, order=1)
    return np.abs(diff) if mode == "abs" else diff


def _sample(volume: npt.NDArray[np.float32], coords: npt.NDArray[np.float64]) -> FloatArray:
    """Linear interpolation of ``volume`` at voxel positions ``coords`` (3, K); outside -> 0."""
    return ndimage.map_coordinates(
        volume, coords, order=1, mode="grid-constant", cval=0.0, prefilter=False, output=np.float32
    )


def _box_around(
    points: npt.NDArray[np.int64], margin: npt.NDArray[np.int64], shape: tuple[int, ...]
) -> Box:
    lo = np.maximum(points.min(axis=0) - margin, 0)
    hi = np.minimum(points.max(axis=0) + margin + 1, shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def _healthy_reference(
    image: FloatArray,
    healthy: BoolArray,
    near: npt.NDArray[np.int64],
    spacing: Spacing,
    margin_mm: float,
) -> npt.NDArray[np.float32]:
    """Per-modality median of healthy brain within ``margin_mm`` of the box of ``near``."""
    margin = np.ceil(margin_mm / np.asarray(spacing)).astype(np.int64)
    box = _box_around(near, margin, healthy.shape)
    sl = tuple(slice(a, b) for a, b in box)
    local = healthy[sl]
    if np.count_nonzero(local) >= MIN_REFERENCE_VOXELS:
        return np.median(image[(slice(None), *sl)][:, local], axis=1).astype(np.float32)
    if healthy.any():
        return np.median(image[:, healthy], axis=1).astype(np.float32)
    # No healthy brain at all: the z-score mean of the brain is 0 by construction.
    return np.zeros(image.shape[0], dtype=np.float32)


def tumour_part(
    image_b: FloatArray,
    label_b: LabelArray,
    plane: MirrorPlane,
    spacing: Spacing = (1.0, 1.0, 1.0),
    *,
    mode: Mode = "signed",
    brain_mask_b: BoolArray | None = None,
    reference_margin_mm: float = 15.0,
    case_id: str = "donor",
) -> FloatArray:
    """Tumour part ``T_B = D_B * (Y_B > 0)`` of a donor case.

    ``D_B = X_B - R(X_B)`` is evaluated at tumour voxels only (it is zero
    elsewhere), by linear interpolation of ``X_B`` at the mirrored positions,
    exactly as :func:`asymmetric_error_map` resamples it.

    **Rule for tumour voxels whose mirror is not healthy brain.**  ``R(X_B)``
    is meant to be the healthy tissue the tumour replaced.  When the mirrored
    position is itself tumour (midline-crossing tumours) or lies outside the
    brain, ``X_B - R(X_B)`` is tumour-minus-tumour or tumour-minus-background,
    not a tumour estimate.  A tumour voxel's mirror counts as healthy when at
    least ``HEALTHY_FRACTION`` (one half) of its interpolation weight falls on
    healthy brain (brain and ``Y_B == 0``).  For the other tumour voxels,
    ``R(X_B)`` is replaced, per modality, by a healthy reference: the median of
    the healthy brain voxels of that modality within ``reference_margin_mm``
    of the bounding box of those voxels (the local healthy tissue the tumour
    displaced); if fewer than ``MIN_REFERENCE_VOXELS`` are there, the median of
    all of B's healthy brain; with no healthy brain at all, 0 (the z-score
    mean of the brain).

    Parameters
    ----------
    image_b : ndarray, float32, (4, X, Y, Z)
        Normalised full-grid donor image.
    label_b : ndarray, uint8, (X, Y, Z)
    plane : MirrorPlane
        Donor's calibrated plane.
    spacing : tuple of float
        Voxel size in mm.
    mode : {"signed", "abs"}
    brain_mask_b : ndarray, bool, (X, Y, Z), optional
        Donor brain; default: any modality non-zero.
    reference_margin_mm : float
        Neighbourhood for the healthy reference, mm.
    case_id : str
        Donor id for error messages.

    Returns
    -------
    ndarray, float32, (4, X, Y, Z)
        Zero outside ``Y_B > 0``.
    """
    _check_mode(mode)
    _check_image(image_b, case_id)
    if label_b.shape != image_b.shape[1:]:
        raise CaseError(case_id, f"label shape {label_b.shape} != image grid {image_b.shape[1:]}")
    brain = np.any(image_b != 0, axis=0) if brain_mask_b is None else brain_mask_b
    tumour = label_b > 0
    out = np.zeros(image_b.shape, dtype=np.float32)
    if not tumour.any():
        return out
    points = np.argwhere(tumour)
    coords = reflect_points(points, plane, image_b.shape, spacing).T
    healthy = brain & ~tumour
    unhealthy = _sample(healthy.astype(np.float32), coords) < HEALTHY_FRACTION
    image = image_b.astype(np.float32, copy=False)
    mirrored = np.stack([_sample(image[c], coords) for c in range(image.shape[0])])
    if unhealthy.any():
        ref = _healthy_reference(image, healthy, points[unhealthy], spacing, reference_margin_mm)
        mirrored[:, unhealthy] = ref[:, None]
    diff = image[:, tumour] - mirrored
    out[:, tumour] = np.abs(diff) if mode == "abs" else diff
    return out


def _bbox(mask: BoolArray) -> Box | None:
    if not mask.any():
        return None
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    return tuple((int(i[0]), int(i[-1]) + 1) for i in idx)  # type: ignore[return-value]


def mirror_tumour(
    t_b: FloatArray, label_b: LabelArray, plane: MirrorPlane, spacing: Spacing = (1.0, 1.0, 1.0)
) -> tuple[FloatArray, LabelArray]:
    """Move a tumour part and its label to the other hemisphere (diversity option).

    The tumour is reflected across the donor's own plane (linear for ``t_b``,
    nearest for the label), so it keeps its shape and lands where the donor's
    mirror image would carry it; only the tumour's bounding box is resampled.
    The returned tumour part is zero outside the returned label.
    """
    box = _bbox(label_b > 0)
    if box is None:
        return t_b.copy(), label_b.copy()
    t = reflect(t_b, plane, spacing, order=1, support=box)
    y = reflect(label_b, plane, spacing, order=0, support=box)
    t[:, y == 0] = 0.0  # keep T zero outside its (mirrored) label, as tumour_part makes it
    return t, y


def transfer(
    image_a: FloatArray,
    label_a: LabelArray,
    brain_mask_a: BoolArray,
    t_b: FloatArray,
    label_b: LabelArray,
    *,
    anatomy_id: str = "anatomy",
    donor_id: str = "donor",
) -> tuple[FloatArray, LabelArray]:
    """Add a donor tumour part to an anatomy: ``X_AB = X_A + T_B`` inside A's brain.

    Parameters
    ----------
    image_a : ndarray, float32, (4, X, Y, Z)
        Normalised full-grid anatomy image (background exactly 0).
    label_a : ndarray, uint8, (X, Y, Z)
    brain_mask_a : ndarray, bool, (X, Y, Z)
    t_b : ndarray, float32, (4, X, Y, Z)
        Donor tumour part (:func:`tumour_part`, optionally :func:`mirror_tumour`).
    label_b : ndarray, uint8, (X, Y, Z)
        Donor label in the same frame as ``t_b``.
    anatomy_id, donor_id : str
        Case ids for error messages.

    Returns
    -------
    image_ab : ndarray, float32, (4, X, Y, Z)
        Exactly 0 outside A's brain: tumour outside it is dropped.
    label_ab : ndarray, uint8, (X, Y, Z)
        Ranked fusion of ``label_a`` and ``label_b`` restricted to A's brain.
    """
    grid_a, grid_b = image_a.shape, t_b.shape
    if grid_a != grid_b or len(grid_a) != 4:
        raise CaseError(
            anatomy_id,
            f"image grid {grid_a} does not match donor {donor_id} tumour part {grid_b}; "
            "cases must share the atlas grid (4, X, Y, Z)",
        )
    for name, arr, owner in (
        ("label", label_a, anatomy_id),
        ("brain mask", brain_mask_a, anatomy_id),
        ("label", label_b, donor_id),
    ):
        if arr.shape != grid_a[1:]:
            raise CaseError(
                owner,
                f"{name} shape {arr.shape} does not match the grid {grid_a[1:]} of anatomy "
                f"{anatomy_id} / donor {donor_id}",
            )
    image_ab = image_a.astype(np.float32) + t_b
    image_ab[:, ~brain_mask_a] = 0.0
    label_ab = fuse_labels(label_a, np.where(brain_mask_a, label_b, 0).astype(np.uint8))
    return image_ab, label_ab
