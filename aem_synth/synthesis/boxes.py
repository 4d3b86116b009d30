"""Boxes of the common grid: half-open voxel ranges ``((x0, x1), (y0, y1), (z0, z1))``.

Arrays may be crops of the grid: such a crop carries the grid coordinates of
its voxel 0 (its ``origin``) and is zero / background / False outside. The
helpers here move between grid coordinates and crop coordinates; axis order
is canonical RAS ``(x, y, z)``, leading axes (e.g. modalities) are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from aem_synth.types import Box

__all__ = ["Origin", "box_around", "dims", "intersect", "origin_box", "relative_slices", "window"]

Origin = tuple[int, int, int]


def dims(box: Box) -> tuple[int, int, int]:
    """Size of ``box`` in voxels along (x, y, z); 0 for an empty range."""
    return tuple(max(0, b - a) for a, b in box)  # type: ignore[return-value]


def relative_slices(box: Box, origin: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """Slices of ``box`` (grid coordinates) in an array whose voxel 0 sits at ``origin``."""
    return tuple(slice(a - o, b - o) for (a, b), o in zip(box, origin, strict=True))  # type: ignore[return-value]


def intersect(a: Box, b: Box) -> Box | None:
    """The common part of two boxes, or None when they do not overlap."""
    box = tuple((max(p, r), min(q, s)) for (p, q), (r, s) in zip(a, b, strict=True))
    return box if all(lo < hi for lo, hi in box) else None  # type: ignore[return-value]


def origin_box(origin: Origin, shape: tuple[int, ...]) -> Box:
    """The box covered by a crop at ``origin`` whose last three axes have ``shape[-3:]``."""
    return tuple((o, o + d) for o, d in zip(origin, shape[-3:], strict=True))  # type: ignore[return-value]


def window(arr: npt.NDArray[Any], origin: Origin, box: Box) -> npt.NDArray[Any]:
    """``arr`` (a crop at ``origin``, zero outside) on ``box``: a view when it lies inside."""
    inner = intersect(box, origin_box(origin, arr.shape))
    if inner == box:
        return arr[(..., *relative_slices(box, origin))]
    out = np.zeros((*arr.shape[:-3], *dims(box)), dtype=arr.dtype)
    if inner is not None:
        out[(..., *relative_slices(inner, tuple(a for a, _ in box)))] = arr[
            (..., *relative_slices(inner, origin))
        ]
    return out


def box_around(
    points: npt.NDArray[np.int64], margin: npt.NDArray[np.int64], shape: tuple[int, ...]
) -> Box:
    """Box of ``points`` (K, 3) grown by ``margin`` (3,) voxels, clipped to a grid of ``shape``."""
    lo = np.maximum(points.min(axis=0) - margin, 0)
    hi = np.minimum(points.max(axis=0) + margin + 1, shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]
