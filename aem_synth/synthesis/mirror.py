"""The mid-sagittal mirror plane and reflection of volumes across it.

Plane convention (shared with :mod:`aem_synth.phantom.generator`, which records ground
truth in it): in the canonical RAS voxel grid of shape ``(X, Y, Z)`` with
spacing ``s`` (mm), the plane passes through the voxel position
``c = ((X-1)/2 + offset, (Y-1)/2, (Z-1)/2)`` and has the unit normal, in
physical (mm) axes, ``n = (cos(yaw)cos(roll), sin(yaw)cos(roll), -sin(roll))``
(yaw about the superior axis, roll about the anterior axis, degrees).  A
physical point ``p`` reflects to ``p' = p - 2((p - c_mm)·n) n``.
``MirrorPlane(0, 0, 0)`` is the plain flip of axis 0 about the array centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from aem_synth.types import Box

__all__ = [
    "MirrorPlane",
    "Spacing",
    "padded_box",
    "reflect",
    "reflect_box",
    "reflect_points",
    "reflected_box",
    "reflection_affine",
]

Spacing = tuple[float, float, float]
Affine = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]

# Zero-valued margin (voxels) kept around a support box so that cropped
# interpolation sees the same neighbours as the full grid.
_PAD = 2


@dataclass(frozen=True)
class MirrorPlane:
    """A mirror plane: offset (voxels along axis 0) and yaw/roll (degrees).

    Attributes
    ----------
    offset : float
        Shift of the plane from the array centre along axis 0, in voxels.
    yaw : float
        Rotation of the normal about the superior (z) axis, degrees.
    roll : float
        Rotation of the normal about the anterior (y) axis, degrees.
    """

    offset: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0

    @property
    def is_flip(self) -> bool:
        """True for the plain flip about the array centre."""
        return self.offset == 0.0 and self.yaw == 0.0 and self.roll == 0.0

    def normal(self) -> npt.NDArray[np.float64]:
        """Unit normal ``(3,)`` in physical (mm) axes ``(x, y, z)``."""
        yaw, roll = math.radians(self.yaw), math.radians(self.roll)
        return np.array(
            [math.cos(yaw) * math.cos(roll), math.sin(yaw) * math.cos(roll), -math.sin(roll)]
        )

    def centre(self, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        """Voxel position ``(3,)`` the plane passes through, for grid ``shape[-3:]``."""
        x, y, z = shape[-3:]
        return np.array([(x - 1) / 2 + self.offset, (y - 1) / 2, (z - 1) / 2])

    def to_dict(self) -> dict[str, float]:
        """JSON-able form ``{"offset", "yaw", "roll"}``."""
        return {"offset": float(self.offset), "yaw": float(self.yaw), "roll": float(self.roll)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MirrorPlane:
        """Inverse of :meth:`to_dict`; rejects unknown or missing keys."""
        keys = set(data)
        if keys != {"offset", "yaw", "roll"}:
            raise ValueError(
                f"MirrorPlane.from_dict needs exactly keys offset, yaw, roll, got {sorted(keys)}"
            )
        return cls(float(data["offset"]), float(data["yaw"]), float(data["roll"]))


def _check_spacing(spacing: Spacing) -> npt.NDArray[np.float64]:
    s = np.asarray(spacing, dtype=np.float64)
    if s.shape != (3,) or not np.all(s > 0):
        raise ValueError(f"spacing must be three positive lengths in mm, got {spacing!r}")
    return s


def reflection_affine(plane: MirrorPlane, shape: tuple[int, ...], spacing: Spacing) -> Affine:
    """The reflection as a voxel-coordinate affine map ``v' = matrix @ v + shift``.

    Parameters
    ----------
    plane : MirrorPlane
    shape : tuple of int
        Grid shape; only the last three (spatial) entries are used.
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.

    Returns
    -------
    matrix : ndarray, float64, (3, 3)
    shift : ndarray, float64, (3,)
        Voxel units.  The map is an involution, so it is also its own inverse.
    """
    s = _check_spacing(spacing)
    n = plane.normal()
    householder = np.eye(3) - 2.0 * np.outer(n, n)
    matrix = householder * s[None, :] / s[:, None]
    c_mm = plane.centre(shape) * s
    shift = 2.0 * float(c_mm @ n) * n / s
    return matrix, shift


def reflect_points(
    points: npt.ArrayLike, plane: MirrorPlane, shape: tuple[int, ...], spacing: Spacing
) -> npt.NDArray[np.float64]:
    """Reflect voxel positions ``(N, 3)`` (axes x, y, z) across ``plane``."""
    matrix, shift = reflection_affine(plane, shape, spacing)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ matrix.T + shift


def reflected_box(box: Box, plane: MirrorPlane, shape: tuple[int, ...], spacing: Spacing) -> Box:
    """Half-open voxel box that contains the reflection of ``box``, padded, clipped to ``shape``."""
    corners = np.array(
        [[x, y, z] for x in (box[0][0], box[0][1] - 1) for y in (box[1][0], box[1][1] - 1)
         for z in (box[2][0], box[2][1] - 1)],
        dtype=np.float64,
    )  # fmt: skip
    moved = reflect_points(corners, plane, shape, spacing)
    lo = np.floor(moved.min(axis=0)).astype(int) - _PAD
    hi = np.ceil(moved.max(axis=0)).astype(int) + 1 + _PAD
    dims = shape[-3:]
    return tuple((max(0, int(a)), min(d, int(b))) for a, b, d in zip(lo, hi, dims, strict=True))  # type: ignore[return-value]


def padded_box(box: Box, shape: tuple[int, ...]) -> Box:
    """``box`` grown by the interpolation margin (2 voxels) on every side, clipped to ``shape``."""
    dims = shape[-3:]
    return tuple(  # type: ignore[return-value]
        (max(0, a - _PAD), min(d, b + _PAD)) for (a, b), d in zip(box, dims, strict=True)
    )


def _slices(box: Box) -> tuple[slice, slice, slice]:
    return (slice(*box[0]), slice(*box[1]), slice(*box[2]))


def _flip_box(box: Box, shape: tuple[int, ...]) -> Box:
    x = shape[-3]
    return ((x - box[0][1], x - box[0][0]), box[1], box[2])


def reflect_box(
    crop: npt.NDArray[Any],
    box: Box,
    plane: MirrorPlane,
    shape: tuple[int, ...],
    spacing: Spacing = (1.0, 1.0, 1.0),
    *,
    order: int,
) -> tuple[Box, npt.NDArray[Any]]:
    """Reflect a volume given only on a box, zero outside it; return the box it lands in.

    The result equals the crop of ``reflect(full, plane, spacing, order=order)``
    to the returned box, where ``full`` is ``crop`` pasted into zeros of grid
    ``shape`` (that volume is zero outside the returned box).  ``box`` should
    include a zero margin of two voxels around the support, as :func:`reflect`
    pads its ``support``, for the cropped interpolation to see every neighbour.

    Parameters
    ----------
    crop : ndarray, (X', Y', Z') or (C, X', Y', Z')
        The volume on ``box``; dtype rules as for :func:`reflect`.
    box : Box
        Half-open voxel ranges of ``crop`` in the grid, axes ``(x, y, z)``.
    plane : MirrorPlane
    shape : tuple of int
        Grid shape; only the last three (spatial) entries are used.
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.
    order : int
        0 (nearest, masks and labels) or 1 (linear, images).

    Returns
    -------
    out_box : Box
        Where the reflection lands (clipped to the grid; may be empty).
    out : ndarray
        The reflection on ``out_box``, float32 for ``order >= 1``, else ``crop.dtype``.
    """
    if crop.ndim not in (3, 4):
        raise ValueError(f"reflect needs a (X,Y,Z) or (C,X,Y,Z) volume, got shape {crop.shape}")
    if order not in (0, 1):
        raise ValueError(f"reflect supports order 0 (nearest) or 1 (linear), got {order}")
    if crop.shape[-3:] != tuple(b - a for a, b in box):
        raise ValueError(f"reflect_box: crop shape {crop.shape} does not match box {box}")
    _check_spacing(spacing)
    if plane.is_flip:
        return _flip_box(box, shape), np.ascontiguousarray(np.flip(crop, axis=-3))
    out_dtype = np.float32 if order >= 1 else crop.dtype
    work = crop.astype(np.uint8) if crop.dtype == np.bool_ else crop
    if order >= 1:
        work = work.astype(np.float32, copy=False)
    channels = work.reshape((-1, *work.shape[-3:]))
    out_box = reflected_box(box, plane, shape, spacing)
    out_shape = tuple(max(0, b - a) for a, b in out_box)
    out = np.zeros((channels.shape[0], *out_shape), dtype=work.dtype)
    if 0 in out_shape:
        return out_box, out.reshape((*crop.shape[:-3], *out_shape)).astype(out_dtype, copy=False)
    matrix, shift = reflection_affine(plane, shape, spacing)
    o_in = np.array([a for a, _ in box], dtype=np.float64)
    o_out = np.array([a for a, _ in out_box], dtype=np.float64)
    _resample(channels, out, matrix, matrix @ o_out + shift - o_in, order)
    return out_box, out.reshape((*crop.shape[:-3], *out_shape)).astype(out_dtype, copy=False)


def _resample(
    channels: npt.NDArray[Any],
    out: npt.NDArray[Any],
    matrix: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64],
    order: int,
) -> None:
    # One 3-D transform per channel: a 4-D transform would interpolate along the
    # channel axis too (16 neighbours instead of 8) for no benefit.
    for c in range(channels.shape[0]):
        ndimage.affine_transform(
            channels[c],
            matrix,
            offset=offset,
            output_shape=out.shape[1:],
            output=out[c],
            order=order,
            mode="grid-constant",
            cval=0.0,
            prefilter=False,
        )


def reflect(
    volume: npt.NDArray[Any],
    plane: MirrorPlane,
    spacing: Spacing = (1.0, 1.0, 1.0),
    *,
    order: int,
    support: Box | None = None,
) -> npt.NDArray[Any]:
    """Resample ``volume`` reflected across ``plane``: ``out[v] = volume[R(v)]``.

    Parameters
    ----------
    volume : ndarray, (X, Y, Z) or (C, X, Y, Z)
        Canonical RAS axes.  Images are float32; masks/labels any integer or
        bool dtype (use ``order=0``).
    plane : MirrorPlane
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.
    order : int
        Interpolation order: 1 (linear) for images, 0 (nearest) for masks and
        labels.  Positions that reflect outside the grid become 0 (within the
        last half voxel, linear interpolation blends towards 0).
    support : Box, optional
        A box outside which ``volume`` is zero (e.g. the tumour's bounding
        box).  Only the reflected box is then resampled, which is much faster
        for small supports; the result equals the full-grid one up to
        floating-point rounding of sample positions.

    Returns
    -------
    ndarray
        Same shape as ``volume``; float32 for ``order >= 1``, else the input dtype.
    """
    if volume.ndim not in (3, 4):
        raise ValueError(f"reflect needs a (X,Y,Z) or (C,X,Y,Z) volume, got shape {volume.shape}")
    if order not in (0, 1):
        raise ValueError(f"reflect supports order 0 (nearest) or 1 (linear), got {order}")
    _check_spacing(spacing)
    if plane.is_flip:
        return np.ascontiguousarray(np.flip(volume, axis=-3))
    if support is None:
        return _reflect_full(volume, plane, spacing, order)
    in_box = padded_box(support, volume.shape)
    out_box, moved = reflect_box(
        volume[(..., *_slices(in_box))], in_box, plane, volume.shape, spacing, order=order
    )
    out = np.zeros(volume.shape, dtype=moved.dtype)
    out[(..., *_slices(out_box))] = moved
    return out


def _reflect_full(
    volume: npt.NDArray[Any], plane: MirrorPlane, spacing: Spacing, order: int
) -> npt.NDArray[Any]:
    out_dtype = np.float32 if order >= 1 else volume.dtype
    work = volume.astype(np.uint8) if volume.dtype == np.bool_ else volume
    if order >= 1:
        work = work.astype(np.float32, copy=False)
    channels = work.reshape((-1, *work.shape[-3:]))
    out = np.zeros(channels.shape, dtype=work.dtype)
    matrix, shift = reflection_affine(plane, volume.shape, spacing)
    _resample(channels, out, matrix, shift, order)
    return out.reshape(volume.shape).astype(out_dtype, copy=False)
