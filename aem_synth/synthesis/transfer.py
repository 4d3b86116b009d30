"""Transfer of a donor's tumour part onto another patient's anatomy, and its mirroring.

Same grid and array conventions as :mod:`aem_synth.synthesis.aem`: shared
(atlas) grid, canonical RAS axes ``(x, y, z)``, images float32
``(4, X, Y, Z)`` in the order ``MODALITIES`` (z-scores, background 0), labels
uint8 ``(X, Y, Z)``.  ``X_AB = X_A + T_B`` restricted to A's brain, and the
label is the ranked fusion of A's and B's labels.  The ``*_box`` functions
work on boxes of the grid and give bit-identical values to the full-grid ones.
"""

from __future__ import annotations

import numpy as np

from aem_synth.errors import CaseError
from aem_synth.synthesis.aem import Grid, TumourPart, bbox_of, check_image
from aem_synth.synthesis.boxes import (
    Origin,
    dims,
    intersect,
    origin_box,
    relative_slices,
)
from aem_synth.synthesis.fusion import fuse_labels
from aem_synth.synthesis.mirror import MirrorPlane, Spacing, padded_box, reflect_box
from aem_synth.types import BoolArray, Box, FloatArray, LabelArray

__all__ = ["mirror_tumour", "mirror_tumour_box", "transfer", "transfer_box"]


def mirror_tumour_box(
    part: TumourPart, plane: MirrorPlane, grid: Grid, spacing: Spacing = (1.0, 1.0, 1.0)
) -> TumourPart:
    """:func:`mirror_tumour` on boxes: reflect a tumour part across the donor's plane.

    Parameters
    ----------
    part : TumourPart
        From :func:`tumour_part_box`.
    plane : MirrorPlane
        The donor's calibrated plane.
    grid : tuple of int
        Full grid shape ``(X, Y, Z)``.
    spacing : tuple of float
        Voxel size in mm.

    Returns
    -------
    TumourPart
        On the box the tumour lands in (clipped to the grid, maybe empty);
        ``image`` is zero outside the reflected ``label``.
    """
    in_box = padded_box(part.box, grid)
    inner = relative_slices(part.box, tuple(a for a, _ in in_box))
    t_in = np.zeros((part.image.shape[0], *dims(in_box)), dtype=np.float32)
    t_in[(slice(None), *inner)] = part.image
    y_in = np.zeros(dims(in_box), dtype=part.label.dtype)
    y_in[inner] = part.label
    out_box, t = reflect_box(t_in, in_box, plane, grid, spacing, order=1)
    _, y = reflect_box(y_in, in_box, plane, grid, spacing, order=0)
    t[:, y == 0] = 0.0  # keep T zero outside its (mirrored) label, as tumour_part makes it
    return TumourPart(out_box, t, y)


def mirror_tumour(
    t_b: FloatArray, label_b: LabelArray, plane: MirrorPlane, spacing: Spacing = (1.0, 1.0, 1.0)
) -> tuple[FloatArray, LabelArray]:
    """Move a tumour part and its label to the other hemisphere (diversity option).

    The tumour is reflected across the donor's own plane (linear for ``t_b``,
    nearest for the label), so it keeps its shape and lands where the donor's
    mirror image would carry it; only the tumour's bounding box is resampled.
    ``t_b`` must be zero outside ``label_b > 0`` (as :func:`tumour_part` makes
    it).  The returned tumour part is zero outside the returned label.
    """
    box = bbox_of(label_b > 0)
    if box is None:
        return t_b.copy(), label_b.copy()
    sl = relative_slices(box, (0, 0, 0))
    part = TumourPart(box, t_b[(slice(None), *sl)].astype(np.float32), label_b[sl])
    moved = mirror_tumour_box(part, plane, label_b.shape, spacing)
    t = np.zeros(t_b.shape, dtype=np.float32)
    y = np.zeros(label_b.shape, dtype=label_b.dtype)
    if all(a < b for a, b in moved.box):
        t[(slice(None), *relative_slices(moved.box, (0, 0, 0)))] = moved.image
        y[relative_slices(moved.box, (0, 0, 0))] = moved.label
    return t, y


def _check_labels(label: LabelArray, case_id: str) -> None:
    top = int(label.max()) if label.size else 0
    if top > 3 or (label.size and int(label.min()) < 0):
        raise CaseError(
            case_id,
            f"label value {top if top > 3 else int(label.min())} outside the internal labels "
            "0 background, 1 NCR/NET, 2 ED, 3 ET (map dataset labels such as 4 before fusing)",
        )


def transfer_box(
    image_a: FloatArray,
    label_a: LabelArray,
    brain_mask_a: BoolArray,
    part: TumourPart | None,
    box: Box,
    *,
    origin_a: Origin = (0, 0, 0),
    anatomy_id: str = "anatomy",
    donor_id: str = "donor",
) -> tuple[FloatArray, LabelArray]:
    """:func:`transfer` on ``box`` for an anatomy given as a crop at ``origin_a``.

    A's image is copied onto ``box`` once (zeroed outside A's brain); the
    tumour part is added and the labels fused only where ``part.box``, A's
    crop and ``box`` overlap, so the cost beyond that copy follows the tumour.

    Parameters
    ----------
    image_a : ndarray, float32, (4, x, y, z)
        Normalised anatomy image on its crop (zero outside it).
    label_a : ndarray, uint8, (x, y, z)
    brain_mask_a : ndarray, bool, (x, y, z)
    part : TumourPart or None
        Donor tumour part in the same grid (None: no tumour).
    box : Box
        Grid box of the result.
    origin_a : tuple of int
        Grid position of the crop's voxel ``(0, 0, 0)``.
    anatomy_id, donor_id : str
        Case ids for error messages.

    Returns
    -------
    image_ab : ndarray, float32, (4, bx, by, bz)
        ``X_A + T_B`` inside A's brain, exactly +0.0 elsewhere.
    label_ab : ndarray, uint8, (bx, by, bz)
        ``label_a`` fused (ET > NCR/NET > ED > background) with the donor label
        restricted to A's brain.
    """
    check_image(image_a, anatomy_id)
    for name, arr in (("label", label_a), ("brain mask", brain_mask_a)):
        if arr.shape != image_a.shape[1:]:
            raise CaseError(
                anatomy_id, f"{name} shape {arr.shape} does not match image grid {image_a.shape}"
            )
    if part is not None and part.image.shape != (4, *part.label.shape):
        raise CaseError(
            donor_id,
            f"tumour part {part.image.shape} does not match its label {part.label.shape}",
        )
    _check_labels(label_a, anatomy_id)
    a32 = image_a.astype(np.float32, copy=False)
    lo = tuple(a for a, _ in box)
    inner = intersect(box, origin_box(origin_a, label_a.shape))
    # Every voxel is written below when A's crop covers the box (the build's case).
    alloc = np.empty if inner == box else np.zeros
    image = alloc((4, *dims(box)), dtype=np.float32)
    label = alloc(dims(box), dtype=np.uint8)
    if inner is None:
        return image, label
    src, dst = relative_slices(inner, origin_a), relative_slices(inner, lo)
    out = image[(slice(None), *dst)]
    # a * brain + 0 is a where brain, else +0.0, bit for bit like (a + 0) masked,
    # in two streaming passes (a masked ufunc or boolean assignment is ~5x slower).
    np.multiply(a32[(slice(None), *src)], brain_mask_a[src], out=out)
    np.add(out, np.float32(0.0), out=out)
    label[dst] = label_a[src]
    region = None if part is None else intersect(inner, part.box)
    if region is None or part is None:
        return image, label
    src, dst = relative_slices(region, origin_a), relative_slices(region, lo)
    t_src = relative_slices(region, tuple(a for a, _ in part.box))
    brain = brain_mask_a[src]
    np.add(
        a32[(slice(None), *src)],
        part.image[(slice(None), *t_src)],
        out=image[(slice(None), *dst)],
        where=brain,
    )
    donor_label = np.where(brain, part.label[t_src], 0).astype(np.uint8)
    label[dst] = fuse_labels(label_a[src], donor_label)
    return image, label


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
    full = origin_box((0, 0, 0), label_a.shape)
    part = TumourPart(full, t_b.astype(np.float32, copy=False), label_b)
    return transfer_box(
        image_a, label_a, brain_mask_a, part, full, anatomy_id=anatomy_id, donor_id=donor_id
    )
