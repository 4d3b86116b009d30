"""Mixup baseline for the paper's ablation: a convex blend of two whole cases.

Label rule
----------
Mixup (Zhang et al., 2018) trains on the soft target ``lam * Y_A + (1 - lam)
* Y_B`` (one-hot labels).  The shard store holds hard uint8 labels, so the
default rule (``label_rule="weighted"``) stores the hard projection of that
soft target: per voxel the arg-max of ``lam * onehot(Y_A) + (1 - lam) *
onehot(Y_B)``, i.e. the label of the case with the larger weight wherever the
two differ, with the tie at ``lam = 0.5`` broken by the fusion rank (ET >
NCR/NET > ED > background).  It is the only hard rule that agrees with mixup's
own target whenever one weight dominates, which is what Beta-distributed
``lam`` makes common.  ``label_rule="fusion"`` (ranked fusion of both labels,
as AEM samples use) is available for comparison.

Arrays: images float32 ``(4, X, Y, Z)`` normalised full grid, background 0;
labels uint8 ``(X, Y, Z)``; canonical RAS axes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from aem_synth.synthesis.fusion import fuse_labels
from aem_synth.types import BoolArray, FloatArray, LabelArray

__all__ = ["LABEL_RULES", "LabelRule", "mixup"]

LabelRule = Literal["weighted", "fusion"]
LABEL_RULES: tuple[str, ...] = ("weighted", "fusion")


def _label(label_a: LabelArray, label_b: LabelArray, lam: float, rule: str) -> LabelArray:
    if rule == "fusion" or lam == 0.5:
        return fuse_labels(label_a, label_b)
    dominant = label_a if lam > 0.5 else label_b
    return fuse_labels(dominant, dominant)  # validates 0..3 and returns a fresh uint8 array


def mixup(
    image_a: FloatArray,
    label_a: LabelArray,
    image_b: FloatArray,
    label_b: LabelArray,
    lam: float,
    *,
    brain_mask_a: BoolArray | None = None,
    brain_mask_b: BoolArray | None = None,
    label_rule: LabelRule = "weighted",
) -> tuple[FloatArray, LabelArray]:
    """Blend two cases: ``image = lam * A + (1 - lam) * B`` inside the union of brains.

    Parameters
    ----------
    image_a, image_b : ndarray, float32, (4, X, Y, Z)
    label_a, label_b : ndarray, uint8, (X, Y, Z)
    lam : float
        Weight of A, in [0, 1].
    brain_mask_a, brain_mask_b : ndarray, bool, (X, Y, Z), optional
        Default: any modality non-zero.
    label_rule : {"weighted", "fusion"}
        See the module docstring.

    Returns
    -------
    image : ndarray, float32, (4, X, Y, Z)
        Exactly 0 outside the union of the two brains.
    label : ndarray, uint8, (X, Y, Z)
        0 outside the union of the two brains.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixup: lam must be in [0, 1], got {lam}")
    if label_rule not in LABEL_RULES:
        raise ValueError(f"mixup: label_rule must be one of {LABEL_RULES}, got {label_rule!r}")
    if image_a.shape != image_b.shape or image_a.ndim != 4:
        raise ValueError(
            f"mixup: images must share the grid (4, X, Y, Z), got {image_a.shape} and {image_b.shape}"
        )
    if label_a.shape != image_a.shape[1:] or label_b.shape != image_a.shape[1:]:
        raise ValueError(
            f"mixup: labels {label_a.shape}, {label_b.shape} do not match grid {image_a.shape[1:]}"
        )
    brain_a = np.any(image_a != 0, axis=0) if brain_mask_a is None else brain_mask_a
    brain_b = np.any(image_b != 0, axis=0) if brain_mask_b is None else brain_mask_b
    union = brain_a | brain_b
    image = (np.float32(lam) * image_a + np.float32(1.0 - lam) * image_b).astype(np.float32)
    image[:, ~union] = 0.0
    label = _label(label_a, label_b, float(lam), label_rule)
    label[~union] = 0
    return image, label
