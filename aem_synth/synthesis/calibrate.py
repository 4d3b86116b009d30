"""Symmetry calibration: find the mid-sagittal mirror plane of a brain mask.

The search maximises the overlap between the brain outline and its mirror
image.  The mask is turned into a smooth occupancy field (block mean over
``f^3`` voxels, then a Gaussian of one coarse voxel), and a plane is scored by
the weighted mean of that field at the mirrored positions of the brain's
voxels (a soft mask Dice that varies smoothly with sub-voxel offsets).  The
search runs coarse to fine (``f = 4`` grid scans then pattern search, ``f = 2``
pattern search at 240x240x155; ``f = 2`` then 1 on small grids, with fewer
scored points, so the cost shrinks with the volume); only voxels near the
outline are scored at the fine level, since deep interior voxels score 1 for
every candidate plane.  The final plane is checked with the exact
(nearest-neighbour) mask Dice at full resolution and replaced by the plain
flip whenever it does not beat it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from aem_synth.dataset.preprocess import bounding_box
from aem_synth.errors import CaseError
from aem_synth.synthesis.mirror import MirrorPlane, Spacing, reflect, reflection_affine
from aem_synth.types import BoolArray

__all__ = ["Calibration", "calibrate", "mask_dice", "plane_errors"]

Params = npt.NDArray[np.float64]  # (offset voxels, yaw degrees, roll degrees)

# Scored sample points per level at most: bounds the cost of one evaluation.
MAX_POINTS = 60_000
# ... and at most one per VOXELS_PER_POINT voxels of the full grid (but never
# fewer than MIN_POINTS), so small volumes cost less than BraTS-size ones.
VOXELS_PER_POINT = 12
MIN_POINTS = 12_000
# The coarse level keeps at least this many voxels (a factor of 4 at 240x240x155).
MIN_COARSE_VOXELS = 8_000
# Coarse voxels deeper inside the brain than this (in coarse voxels) are not scored: the
# field is 1 all around them, so they add a near-constant term to every candidate's
# score (dropping them found the same planes on phantoms and the real samples, ~7 % faster).
COARSE_BAND = 4


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    plane : MirrorPlane
        The calibrated plane (the plain flip when nothing better was found).
    dice_flip : float
        Brain-mask Dice between the mask and its plain flip about the array centre.
    dice_plane : float
        Brain-mask Dice between the mask and its reflection across ``plane``
        (nearest-neighbour resampling); never below ``dice_flip``.
    seconds : float
        Wall time of the calibration.
    """

    plane: MirrorPlane
    dice_flip: float
    dice_plane: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "plane": self.plane.to_dict(),
            "dice_flip": float(self.dice_flip),
            "dice_plane": float(self.dice_plane),
            "seconds": float(self.seconds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(
            plane=MirrorPlane.from_dict(data["plane"]),
            dice_flip=float(data["dice_flip"]),
            dice_plane=float(data["dice_plane"]),
            seconds=float(data["seconds"]),
        )


def mask_dice(a: BoolArray, b: BoolArray) -> float:
    """Dice coefficient of two boolean masks of equal shape (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def plane_errors(
    found: MirrorPlane, true: MirrorPlane, spacing: Spacing = (1.0, 1.0, 1.0)
) -> tuple[float, float]:
    """Offset error (voxels, at the array centre) and normal angle error (degrees).

    Both planes are parameterised through the line along axis 0 through the
    array centre, so their offsets are where they cross that line and can be
    compared directly; the angle is between the (unsigned) normals.  The
    spacing does not enter: it is accepted for symmetry with the other calls.
    """
    del spacing
    a, b = found.normal(), true.normal()
    if a @ b < 0:
        b = -b
    # 2*atan2(|a-b|, |a+b|) stays accurate for tiny angles, unlike acos(a·b).
    angle = 2.0 * math.atan2(float(np.linalg.norm(a - b)), float(np.linalg.norm(a + b)))
    return abs(found.offset - true.offset), math.degrees(angle)


@dataclass
class _Level:
    """The scoring problem at one resolution (all voxel units are coarse ones)."""

    factor: int
    field: npt.NDArray[np.float32]
    points: npt.NDArray[np.float64]  # (N, 3)
    weights: npt.NDArray[np.float64]  # (N,)
    shape: tuple[int, ...]  # full-resolution grid
    spacing: Spacing

    def score(self, params: Params) -> float:
        plane = MirrorPlane(*(float(p) for p in params))
        matrix, shift = reflection_affine(plane, self.shape, self.spacing)
        # Coarse voxel u covers full-resolution voxels centred at f*u + (f-1)/2.
        b = np.full(3, (self.factor - 1) / 2.0)
        shift_c = (matrix @ b + shift - b) / self.factor
        moved = self.points @ matrix.T + shift_c
        vals = ndimage.map_coordinates(
            self.field, moved.T, order=1, mode="grid-constant", cval=0.0, prefilter=False
        )
        return float(vals @ self.weights)


def _occupancy(mask: BoolArray, factor: int) -> npt.NDArray[np.float32]:
    """Fraction of brain voxels in each ``factor^3`` block, float32, shape ``ceil(shape / f)``.

    Only blocks meeting the brain's bounding box are counted (the rest are 0),
    with one strided integer add per position inside the block: the values
    equal a float32 block mean of the zero-padded mask exactly (counts of at
    most 64 divided by a power of two), at a few percent of its cost.
    """
    dims = mask.shape
    out = np.zeros(tuple(-(-d // factor) for d in dims), dtype=np.float32)
    if not mask.any():
        return out
    box = bounding_box(mask)
    lo = [a - a % factor for a, _ in box]
    hi = [b + (-b) % factor for _, b in box]
    part = mask[tuple(slice(a, min(b, d)) for a, b, d in zip(lo, hi, dims, strict=True))]
    part = np.pad(part, [(0, b - min(b, d)) for b, d in zip(hi, dims, strict=True)])
    counts = np.zeros(tuple((b - a) // factor for a, b in zip(lo, hi, strict=True)), np.uint8)
    cells = part.view(np.uint8)
    for i in range(factor):
        for j in range(factor):
            for k in range(factor):
                counts += cells[i::factor, j::factor, k::factor]
    at = tuple(slice(a // factor, a // factor + n) for a, n in zip(lo, counts.shape, strict=True))
    out[at] = counts * np.float32(1.0 / factor**3)
    return out


def _filtered(
    occ: npt.NDArray[np.float32], band: int | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]:
    """Gaussian field (sigma 1) of ``occ`` and, with ``band``, its deep-interior mask.

    Both filters run on the occupancy's bounding box grown by more than their
    reach (4 voxels for the Gaussian's truncation, ``band`` for the box
    filter): outside it every output is exactly 0 / False, and inside it each
    output sums the same inputs in the same order as on the whole grid (the box
    filter's running sum crosses only exact zeros before the box), so the
    result is bit-identical at a fraction of the cost.
    """
    margin = max(4, band or 0) + 1
    box = tuple(
        slice(max(a - margin, 0), min(b + margin, n))
        for (a, b), n in zip(bounding_box(occ > 0), occ.shape, strict=True)
    )
    part = occ[box]
    field = np.zeros_like(occ)
    field[box] = ndimage.gaussian_filter(part, sigma=1.0, mode="constant")
    if band is None:
        return field, None
    deep = np.zeros(occ.shape, dtype=bool)
    deep[box] = ndimage.uniform_filter(part, size=2 * band + 1, mode="constant") > 0.999
    return field, deep


def _level(mask: BoolArray, spacing: Spacing, factor: int, band: int | None) -> _Level:
    occ = _occupancy(mask, factor)
    field, deep = _filtered(occ, band)
    keep = field > 0.01
    if deep is not None:
        # Voxels whose whole (2*band+1)^3 neighbourhood is brain score the same
        # for every plane within reach; drop them.
        keep &= ~deep
    # Sample at jittered sub-voxel positions: on-grid samples would score the
    # planes that map the grid onto itself (yaw or roll exactly 0) too high,
    # because only off-grid reads pay the smoothing of linear interpolation.
    rng = np.random.default_rng(0)
    points = np.argwhere(keep).astype(np.float64)
    cap = _max_points(mask.shape)
    if len(points) > cap:
        # A fixed random subset: the score is a mean, so this only adds a little noise.
        points = points[np.sort(rng.choice(len(points), cap, replace=False))]
    points += rng.uniform(-0.5, 0.5, size=points.shape)
    weights = ndimage.map_coordinates(
        field, points.T, order=1, mode="grid-constant", prefilter=False
    )
    weights = weights.astype(np.float64)
    return _Level(factor, field, points, weights / weights.sum(), mask.shape, spacing)


def _max_points(shape: tuple[int, ...]) -> int:
    """Points scored per level: ``MAX_POINTS`` at BraTS size, fewer for small grids."""
    voxels = int(np.prod(shape))
    return min(MAX_POINTS, max(MIN_POINTS, voxels // VOXELS_PER_POINT))


def _factors(shape: tuple[int, ...]) -> tuple[int, int]:
    """Coarse and fine downsampling factors (4 and 2 at 240x240x155).

    The coarse factor is the largest of 4, 2, 1 leaving the coarse grid at
    least ``MIN_COARSE_VOXELS`` voxels, so the scans run on a coarse grid at
    every size (a fixed full-resolution fallback made small volumes the
    slowest); the fine factor is half of it.
    """
    voxels = float(np.prod(shape))
    coarse = next(f for f in (4, 2, 1) if voxels / f**3 >= MIN_COARSE_VOXELS or f == 1)
    return coarse, max(1, coarse // 2)


def _compass(
    score: Callable[[Params], float],
    start: Params,
    step: float,
    min_step: float,
    bounds: Params,
) -> tuple[Params, float]:
    """Pattern search: try +-step on each parameter, halve the step when stuck."""
    x = start.copy()
    best = score(x)
    while step >= min_step:
        moved = False
        for d in range(3):
            for sign in (1.0, -1.0):
                cand = x.copy()
                cand[d] = np.clip(cand[d] + sign * step, -bounds[d], bounds[d])
                value = score(cand)
                if value > best + 1e-12:
                    x, best, moved = cand, value, True
                    break
        if not moved:
            step /= 2.0
    return x, best


def _scan(
    score: Callable[[Params], float], start: Params, dim: int, values: npt.NDArray[np.float64]
) -> Params:
    """Best parameter vector when only ``dim`` varies over ``values``."""
    cands = np.repeat(start[None, :], len(values), axis=0)
    cands[:, dim] = values
    scores = [score(c) for c in cands]
    return cands[int(np.argmax(scores))]


def _search(mask: BoolArray, spacing: Spacing, max_offset: float, max_angle: float) -> Params:
    bounds = np.array([max_offset, max_angle, max_angle])
    f_coarse, f_fine = _factors(mask.shape)
    coarse = _level(mask, spacing, factor=f_coarse, band=COARSE_BAND)
    x = np.zeros(3)
    x = _scan(coarse.score, x, 0, np.arange(-max_offset, max_offset + 1e-9, 1.0))
    x = _scan(coarse.score, x, 1, np.arange(-max_angle, max_angle + 1e-9, 2.0))
    x = _scan(coarse.score, x, 2, np.arange(-max_angle, max_angle + 1e-9, 2.0))
    x, _ = _compass(coarse.score, x, step=1.0, min_step=0.25, bounds=bounds)
    # The fine search moves at most ~1 voxel / 1 degree: 6 coarse voxels of band
    # cover the displacement of every brain voxel with margin.
    fine = coarse if f_fine == f_coarse else _level(mask, spacing, factor=f_fine, band=6)
    # The coarse search ended at steps of 0.25; the fine one goes on from there.
    x, _ = _compass(fine.score, x, step=0.25, min_step=0.05, bounds=bounds)
    return x


def calibrate(
    brain_mask: BoolArray,
    spacing: Spacing = (1.0, 1.0, 1.0),
    *,
    max_offset: float = 8.0,
    max_angle: float = 8.0,
    case_id: str = "case",
) -> Calibration:
    """Find the mirror plane that best maps the brain mask onto itself.

    Parameters
    ----------
    brain_mask : ndarray, bool, (X, Y, Z)
        Canonical RAS axes (axis 0 left -> right), full grid.
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.
    max_offset : float
        Search range of the offset, +- voxels along axis 0.
    max_angle : float
        Search range of yaw and roll, +- degrees.
    case_id : str
        Used in error messages.

    Returns
    -------
    Calibration
        ``dice_plane >= dice_flip`` always: the plain flip is returned when the
        search does not beat it.
    """
    start = time.perf_counter()
    mask = np.asarray(brain_mask)
    if mask.ndim != 3 or mask.dtype != np.bool_:
        raise CaseError(
            case_id, f"calibrate needs a bool (X,Y,Z) brain mask, got {mask.dtype} {mask.shape}"
        )
    if not mask.any():
        raise CaseError(case_id, "calibrate: the brain mask is empty (no voxel > 0)")
    if max_offset < 0 or max_angle < 0:
        raise CaseError(
            case_id, f"calibrate: search ranges must be >= 0, got {max_offset}, {max_angle}"
        )
    dice_flip = mask_dice(mask, np.flip(mask, axis=0))
    params = _search(mask, spacing, max_offset, max_angle)
    plane = MirrorPlane(*(round(float(p), 4) for p in params))
    mirrored = reflect(mask, plane, spacing, order=0, support=bounding_box(mask))
    dice_plane = mask_dice(mask, mirrored)
    if dice_plane < dice_flip:
        plane, dice_plane = MirrorPlane(), dice_flip
    return Calibration(plane, dice_flip, dice_plane, time.perf_counter() - start)
