"""Segmentation metrics of the BraTS regions: Dice and HD95, with stated empty-mask rules.

Conventions
-----------
* Labels are ``uint8`` arrays ``(X, Y, Z)`` in the internal convention
  0 background, 1 NCR/NET, 2 ED, 3 ET; regions WT = {1, 2, 3}, TC = {1, 3},
  ET = {3} (``aem_synth.types.REGIONS``).
* ``spacing`` is the voxel size in mm along the same axes as the arrays.
* HD95 is the 95th percentile of the pooled symmetric surface distances
  (prediction surface -> ground-truth surface and back), in mm; surface voxels
  are foreground voxels with a background face neighbour (6-connectivity),
  voxels on the array border count as surface.  This is the definition of
  ``medpy.metric.hd95``, which the BraTS toolkits use.
* Empty masks (see the ``*_EMPTY*`` constants; they are written into every
  evaluation output):

  ============================  ======  =====================
  case                          Dice    HD95 (mm)
  ============================  ======  =====================
  both empty                    1.0     0.0
  exactly one empty             0.0     ``HD95_EMPTY_MM``
  ============================  ======  =====================

  ``HD95_EMPTY_MM`` = 373.13 mm, the diagonal of the 240 x 240 x 155 mm BraTS
  atlas grid, i.e. the largest distance two voxels of a BraTS volume can have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from aem_synth.types import REGIONS, BoolArray, LabelArray

__all__ = [
    "DICE_BOTH_EMPTY",
    "DICE_ONE_EMPTY",
    "ET_LABEL",
    "HD95_BOTH_EMPTY_MM",
    "HD95_EMPTY_MM",
    "NCR_LABEL",
    "REGION_NAMES",
    "case_metrics",
    "conventions",
    "dice",
    "hd95",
    "postprocess_et",
    "region_masks",
    "surface_distances",
]

DICE_BOTH_EMPTY = 1.0
DICE_ONE_EMPTY = 0.0
HD95_BOTH_EMPTY_MM = 0.0
HD95_EMPTY_MM = round(math.sqrt(240.0**2 + 240.0**2 + 155.0**2), 2)
ET_LABEL = 3
NCR_LABEL = 1
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)
_FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def conventions() -> dict[str, object]:
    """The metric definitions and empty-mask rules, for the evaluation outputs."""
    return {
        "regions": {k: list(v) for k, v in REGIONS.items()},
        "dice_both_empty": DICE_BOTH_EMPTY,
        "dice_one_empty": DICE_ONE_EMPTY,
        "hd95_both_empty_mm": HD95_BOTH_EMPTY_MM,
        "hd95_one_empty_mm": HD95_EMPTY_MM,
        "hd95_one_empty_rule": "diagonal of the 240x240x155 mm BraTS grid",
        "hd95_definition": (
            "95th percentile of pooled symmetric surface distances in mm "
            "(surface = foreground voxels with a background face neighbour)"
        ),
    }


def region_masks(label: LabelArray) -> dict[str, BoolArray]:
    """Boolean masks of WT, TC and ET.

    Parameters
    ----------
    label : ndarray, uint8, (X, Y, Z)
        Internal labels 0/1/2/3.

    Returns
    -------
    dict
        ``{"WT": bool (X, Y, Z), "TC": ..., "ET": ...}``.
    """
    return {name: np.isin(label, values) for name, values in REGIONS.items()}


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has shape {pred.shape} but ground truth has {gt.shape}")


def dice(pred: BoolArray, gt: BoolArray) -> float:
    """Dice coefficient ``2 |P & G| / (|P| + |G|)`` of two boolean masks.

    Returns ``DICE_BOTH_EMPTY`` when both masks are empty (and therefore
    ``DICE_ONE_EMPTY`` = 0 when exactly one is).
    """
    _check_pair(pred, gt)
    p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return DICE_BOTH_EMPTY
    return 2.0 * int(np.count_nonzero(p & g)) / total


def _surface(mask: BoolArray) -> BoolArray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_STRUCTURE, border_value=0)


def _union_box(pred: BoolArray, gt: BoolArray) -> tuple[slice, ...]:
    coords = np.nonzero(pred | gt)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def surface_distances(
    pred: BoolArray, gt: BoolArray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface.

    Both masks must be non-empty.  The work is restricted to the bounding box
    of their union, padded by one background voxel, which gives the same
    distances as the full grid because every surface voxel lies in that box.

    Returns
    -------
    pred_to_gt, gt_to_pred : ndarray, float64, (K,) and (L,)
    """
    box = _union_box(pred, gt)
    p = np.pad(pred[box], 1)
    g = np.pad(gt[box], 1)
    sp, sg = _surface(p), _surface(g)
    sampling = tuple(float(s) for s in spacing)
    to_g = ndimage.distance_transform_edt(~sg, sampling=sampling)
    to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return to_g[sp], to_p[sg]


def hd95(pred: BoolArray, gt: BoolArray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    Parameters
    ----------
    pred, gt : ndarray, bool, (X, Y, Z)
    spacing : sequence of 3 float
        Voxel size in mm along (X, Y, Z); anisotropic spacing is honoured.

    Returns
    -------
    float
        ``HD95_BOTH_EMPTY_MM`` when both are empty, ``HD95_EMPTY_MM`` when
        exactly one is.
    """
    _check_pair(pred, gt)
    if len(spacing) != pred.ndim or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be {pred.ndim} positive values in mm, got {tuple(spacing)}")
    p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return HD95_BOTH_EMPTY_MM
    if not p_any or not g_any:
        return HD95_EMPTY_MM
    a, b = surface_distances(p, g, spacing)
    return float(np.percentile(np.concatenate([a, b]), 95))


def postprocess_et(label: LabelArray, min_voxels: int) -> LabelArray:
    """Relabel a predicted ET that is too small to be credible as NCR/NET.

    The rule of the RFNet / BraTS evaluation code: when the *total* number of
    ET voxels of a case is below ``min_voxels``, every ET voxel becomes NCR/NET
    (label 1), so TC is unchanged and ET becomes empty.  Ground-truth-free.

    Parameters
    ----------
    label : ndarray, uint8, (X, Y, Z)
    min_voxels : int
        Threshold in voxels (500 in the reference code); 0 disables the rule.

    Returns
    -------
    ndarray, uint8, (X, Y, Z)
        A new array (the input is not modified).
    """
    if min_voxels < 0:
        raise ValueError(f"ET post-processing threshold must be >= 0 voxels, got {min_voxels}")
    out = label.copy()
    et = out == ET_LABEL
    if 0 < int(et.sum()) < min_voxels:
        out[et] = NCR_LABEL
    return out


def case_metrics(
    pred: LabelArray,
    gt: LabelArray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    with_hd95: bool = True,
) -> dict[str, float]:
    """Dice and HD95 of WT, TC and ET for one predicted label volume.

    Returns
    -------
    dict
        Keys ``dice_WT, dice_TC, dice_ET, hd95_WT, hd95_TC, hd95_ET`` (the
        HD95 keys only ``with_hd95``); Dice as a fraction in [0, 1], HD95 in mm.
    """
    _check_pair(pred, gt)
    pm, gm = region_masks(pred), region_masks(gt)
    out: dict[str, float] = {}
    for name in REGION_NAMES:
        out[f"dice_{name}"] = dice(pm[name], gm[name])
    if with_hd95:
        for name in REGION_NAMES:
            out[f"hd95_{name}"] = hd95(pm[name], gm[name], spacing)
    return out
