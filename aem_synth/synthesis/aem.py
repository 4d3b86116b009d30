"""Asymmetric error maps (AEM) and the donor's tumour part.

Volumes live in the shared (atlas) grid, canonical RAS axes ``(x, y, z)``,
z-score normalised per modality over the brain with background exactly 0
(:func:`aem_synth.dataset.preprocess.normalise`); images are float32 ``(4, X, Y, Z)``
in the order ``MODALITIES``, labels uint8 ``(X, Y, Z)``.

The ``*_box`` functions do the same work on boxes of that grid (half-open
voxel ranges, :data:`aem_synth.types.Box`): a case may be given as a crop at
``origin`` (zero / background / False outside it), and the tumour part lives
on the tumour's bounding box, so the cost of a sample follows the size of the
tumour rather than of the grid.  They give bit-identical values to the
full-grid functions, which are thin wrappers around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from aem_synth.dataset.preprocess import bounding_box
from aem_synth.errors import CaseError
from aem_synth.synthesis.boxes import (
    Origin,
    box_around,
    relative_slices,
    window,
)
from aem_synth.synthesis.mirror import (
    MirrorPlane,
    Spacing,
    reflect,
    reflect_points,
)
from aem_synth.types import BoolArray, Box, FloatArray, LabelArray

Grid = tuple[int, int, int]

__all__ = [
    "MODES",
    "Mode",
    "TumourPart",
    "asymmetric_error_map",
    "tumour_part",
    "tumour_part_box",
]

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


def check_image(image: FloatArray, case_id: str) -> None:
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
    check_image(image, "image")
    diff = image.astype(np.float32, copy=False) - reflect(image, plane, spacing, order=1)
    return np.abs(diff) if mode == "abs" else diff


@dataclass(frozen=True)
class TumourPart:
    """A donor's tumour part ``T_B`` and label on a box of the grid.

    Attributes
    ----------
    box : Box
        Half-open voxel ranges in the grid, axes ``(x, y, z)``; the tumour's
        bounding box (after :func:`mirror_tumour_box`: where it landed,
        possibly empty when it left the grid).
    image : ndarray, float32, (4, bx, by, bz)
        ``T_B`` on ``box``, zero where ``label`` is 0.
    label : ndarray, uint8, (bx, by, bz)
        The donor's label on ``box``.
    """

    box: Box
    image: FloatArray
    label: LabelArray


def _sample(volume: npt.NDArray[np.float32], coords: npt.NDArray[np.float64]) -> FloatArray:
    """Linear interpolation of ``volume`` at voxel positions ``coords`` (3, K); outside -> 0."""
    return ndimage.map_coordinates(
        volume, coords, order=1, mode="grid-constant", cval=0.0, prefilter=False, output=np.float32
    )


@dataclass(frozen=True)
class _Donor:
    """A donor case as a crop at ``origin`` of ``grid`` (zero / background outside)."""

    image: FloatArray
    label: LabelArray
    brain: BoolArray | None
    origin: Origin
    grid: Grid

    def window(self, box: Box) -> tuple[FloatArray, LabelArray, BoolArray]:
        """Image, label and brain mask on ``box`` (grid coordinates)."""
        image = window(self.image, self.origin, box)
        if self.brain is None:
            brain = np.any(image != 0, axis=0)
        else:
            brain = window(self.brain, self.origin, box)
        return image, window(self.label, self.origin, box), brain

    def healthy_everywhere(self) -> tuple[FloatArray, BoolArray]:
        brain = np.any(self.image != 0, axis=0) if self.brain is None else self.brain
        return self.image, brain & (self.label == 0)


def _healthy_reference(
    donor: _Donor, near: npt.NDArray[np.int64], spacing: Spacing, margin_mm: float
) -> npt.NDArray[np.float32]:
    """Per-modality median of healthy brain within ``margin_mm`` of the box of ``near``."""
    margin = np.ceil(margin_mm / np.asarray(spacing)).astype(np.int64)
    image, label, brain = donor.window(box_around(near, margin, donor.grid))
    local = brain & (label == 0)
    if np.count_nonzero(local) >= MIN_REFERENCE_VOXELS:
        return np.median(image[:, local], axis=1).astype(np.float32)
    image, healthy = donor.healthy_everywhere()
    if healthy.any():
        return np.median(image[:, healthy], axis=1).astype(np.float32)
    # No healthy brain at all: the z-score mean of the brain is 0 by construction.
    return np.zeros(image.shape[0], dtype=np.float32)


def _mirrored_values(
    donor: _Donor, coords: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float32], BoolArray]:
    """``R(X_B)`` at ``coords`` (3, K) and whether each mirror counts as healthy.

    Reads only the window around the positions: it holds every grid voxel the
    linear interpolation touches, and shifting the positions by the window's
    integer origin is exact, so the values equal full-grid interpolation.
    """
    k = coords.shape[1]
    lo = np.maximum(np.floor(coords.min(axis=1)).astype(np.int64) - 1, 0)
    hi = np.minimum(np.floor(coords.max(axis=1)).astype(np.int64) + 3, donor.grid)
    if np.any(hi <= lo):  # every position is far outside the grid: all reads are 0
        return np.zeros((donor.image.shape[0], k), np.float32), np.ones(k, bool)
    box: Box = tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[assignment]
    image, label, brain = donor.window(box)
    local = coords - lo[:, None].astype(np.float64)
    healthy = (brain & (label == 0)).astype(np.float32)
    unhealthy = _sample(healthy, local) < HEALTHY_FRACTION
    return np.stack([_sample(image[c], local) for c in range(image.shape[0])]), unhealthy


def bbox_of(mask: BoolArray) -> Box | None:
    return bounding_box(mask) if mask.any() else None


def tumour_part_box(
    image_b: FloatArray,
    label_b: LabelArray,
    plane: MirrorPlane,
    spacing: Spacing = (1.0, 1.0, 1.0),
    *,
    mode: Mode = "signed",
    brain_mask_b: BoolArray | None = None,
    reference_margin_mm: float = 15.0,
    case_id: str = "donor",
    origin: Origin = (0, 0, 0),
    grid: Grid | None = None,
) -> TumourPart | None:
    """:func:`tumour_part` on the tumour's bounding box, for a donor given as a crop.

    Parameters
    ----------
    image_b : ndarray, float32, (4, x, y, z)
        Normalised donor image: the crop at ``origin`` of the full grid ``grid``
        (zero outside it), or the full grid itself.
    label_b : ndarray, uint8, (x, y, z)
    plane, spacing, mode, brain_mask_b, reference_margin_mm, case_id
        As for :func:`tumour_part`; ``brain_mask_b`` is on the same crop.
    origin : tuple of int
        Grid position of the crop's voxel ``(0, 0, 0)``.
    grid : tuple of int, optional
        Full grid shape (the plane is defined on it); default: the crop's shape.

    Returns
    -------
    TumourPart or None
        None when the donor has no tumour voxel; otherwise ``T_B`` on the
        tumour's bounding box, equal to the crop of :func:`tumour_part`.
    """
    _check_mode(mode)
    check_image(image_b, case_id)
    if label_b.shape != image_b.shape[1:]:
        raise CaseError(case_id, f"label shape {label_b.shape} != image grid {image_b.shape[1:]}")
    if brain_mask_b is not None and brain_mask_b.shape != label_b.shape:
        raise CaseError(case_id, f"brain mask shape {brain_mask_b.shape} != grid {label_b.shape}")
    full: Grid = grid if grid is not None else label_b.shape
    if any(o < 0 or o + d > g for o, d, g in zip(origin, label_b.shape, full, strict=True)):
        raise CaseError(
            case_id, f"crop of shape {label_b.shape} at {origin} does not fit in the grid {full}"
        )
    local_box = bbox_of(label_b > 0)
    if local_box is None:
        return None
    box = tuple((a + o, b + o) for (a, b), o in zip(local_box, origin, strict=True))
    donor = _Donor(image_b.astype(np.float32, copy=False), label_b, brain_mask_b, origin, full)
    sl = relative_slices(box, origin)  # type: ignore[arg-type]
    tumour = label_b[sl] > 0
    points = np.argwhere(tumour) + np.array([a for a, _ in box], dtype=np.int64)
    coords = reflect_points(points, plane, full, spacing).T
    mirrored, unhealthy = _mirrored_values(donor, coords)
    if unhealthy.any():
        ref = _healthy_reference(donor, points[unhealthy], spacing, reference_margin_mm)
        mirrored[:, unhealthy] = ref[:, None]
    diff = donor.image[(slice(None), *sl)][:, tumour] - mirrored
    out = np.zeros((image_b.shape[0], *tumour.shape), dtype=np.float32)
    out[:, tumour] = np.abs(diff) if mode == "abs" else diff
    return TumourPart(box, out, label_b[sl].copy())  # type: ignore[arg-type]


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
    part = tumour_part_box(
        image_b,
        label_b,
        plane,
        spacing,
        mode=mode,
        brain_mask_b=brain_mask_b,
        reference_margin_mm=reference_margin_mm,
        case_id=case_id,
    )
    out = np.zeros(image_b.shape, dtype=np.float32)
    if part is not None:
        out[(slice(None), *relative_slices(part.box, (0, 0, 0)))] = part.image
    return out
