"""Segmentation losses: weighted cross-entropy + soft Dice, and a backbone's total loss.

Shapes: ``logits`` ``(B, K, X, Y, Z)`` (any float dtype; every loss is
computed in float32, so the functions are safe under bf16 autocast),
``target`` ``(B, X0, Y0, Z0)`` int64 class indices in ``[0, K)``.

Resolution: a prediction coarser than the target is compared with the
target *nearest-downsampled by striding*, ``target[:, ::f, ::f, ::f]``. With
stride-2, 3x3x3, padding-1 convolutions, voxel ``i`` of level ``l`` is centred
on full-resolution voxel ``i * 2**l``, so striding keeps label and prediction
aligned and is far cheaper than upsampling the prediction.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from train.config import CLASS_WEIGHTINGS
from train.models.base import ModelOutput

__all__ = [
    "CLASS_WEIGHTINGS",
    "downsample_target",
    "rfnet_loss",
    "segmentation_loss",
    "soft_dice_loss",
    "weighted_cross_entropy",
]

PROBABILITY_FLOOR = 1e-6


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 5:
        raise ValueError(f"logits must have shape (B, K, X, Y, Z), got {tuple(logits.shape)}")
    if target.dtype != torch.int64:
        raise ValueError(f"target must have dtype torch.int64, got {target.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != tuple(expected):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected {tuple(expected)}"
        )
    num_classes = logits.shape[1]
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"found range [{lo}, {hi}]"
        )


def downsample_target(target: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Nearest-downsample ``target`` ``(B, X, Y, Z)`` to ``spatial`` by integer striding.

    Raises
    ------
    ValueError
        If a target size is not an integer multiple of the requested size.
    """
    full = tuple(target.shape[1:])
    if full == tuple(spatial):
        return target
    if len(full) != len(spatial) or any(f % s for f, s in zip(full, spatial, strict=True)):
        raise ValueError(
            f"cannot downsample target of spatial size {full} to {tuple(spatial)}: "
            "sizes must divide by an integer factor"
        )
    steps = [f // s for f, s in zip(full, spatial, strict=True)]
    return target[:, :: steps[0], :: steps[1], :: steps[2]]


def _match_target(logits: Tensor, target: Tensor) -> Tensor:
    if target.ndim == 4 and logits.ndim == 5:
        return downsample_target(target, tuple(logits.shape[2:]))
    return target


# Class weightings of the cross-entropy term (``loss.class_weights`` in configs):
# ``rfnet``  ``w_c = 1 - freq_c`` per sample, as RFNet and the paper (background
#            weight ~0.02-0.05 on BraTS crops: false positives are cheap);
# ``none``   plain cross-entropy, every voxel weight 1;
# ``sqrt``   ``w_c = freq_c ** -0.5`` over the batch, scaled so that the mean voxel
#            weight is 1: rare classes count more, less extremely than ``rfnet``.


def _class_weights(target: Tensor, num_classes: int, weighting: str) -> Tensor | None:
    """Per-voxel weights ``(B, X, Y, Z)`` of ``weighting``, or ``None`` for unweighted CE."""
    if weighting == "none":
        return None
    counts = F.one_hot(target.flatten(1), num_classes).sum(dim=1).float()  # (B, K)
    if weighting == "rfnet":
        weights = 1.0 - counts / target[0].numel()
        return weights.gather(1, target.flatten(1)).view_as(target)
    if weighting == "sqrt":
        freq = counts.sum(0) / target.numel()  # (K,)
        w = torch.where(freq > 0, freq.clamp_min(1e-12).rsqrt(), torch.zeros_like(freq))
        w = w / (w * freq).sum()  # mean voxel weight 1
        return w[target]
    raise ValueError(f"class weighting must be one of {list(CLASS_WEIGHTINGS)}, got {weighting!r}")


def weighted_cross_entropy(logits: Tensor, target: Tensor, weighting: str = "rfnet") -> Tensor:
    """Cross-entropy with class weights chosen by ``weighting`` (see :data:`CLASS_WEIGHTINGS`).

    With ``"rfnet"``, ``w_c = 1 - freq_c`` where ``freq_c`` is the fraction of
    sample ``b``'s voxels labelled ``c``; the loss is the mean over all voxels
    of ``w_{b, y_v} * -log softmax(logits)_{y_v}``.  Unlike the published code
    the log-probability is not clamped at 0.005, so confidently wrong voxels
    keep their gradient.  A sample made of one class only has weight 0 and
    contributes nothing, as in RFNet.

    Parameters
    ----------
    logits : Tensor
        ``(B, K, X, Y, Z)`` unnormalised scores.
    target : Tensor
        ``(B, X, Y, Z)`` int64 labels (downsampled by striding if finer).
    weighting : str
        ``"rfnet"``, ``"none"`` or ``"sqrt"``.

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    target = _match_target(logits, target)
    _check(logits, target)
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, X, Y, Z)
    weights = _class_weights(target, logits.shape[1], weighting)
    return nll.mean() if weights is None else (weights * nll).mean()


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """``1 - mean_c Dice_c`` of softmax probabilities, pooled over the batch (as RFNet).

    ``Dice_c = (2 sum p_c t_c + smooth) / (sum p_c + sum t_c + smooth)`` over
    every voxel of every sample, for every class including background; the
    ``smooth`` term makes a class absent from target and prediction score 1.

    Parameters
    ----------
    logits : Tensor
        ``(B, K, X, Y, Z)`` unnormalised scores.
    target : Tensor
        ``(B, X, Y, Z)`` int64 labels (downsampled by striding if finer).
    smooth : float
        Additive smoothing of numerator and denominator (voxels).

    Returns
    -------
    Tensor
        Scalar float32 loss in ``[0, 1]``.
    """
    target = _match_target(logits, target)
    _check(logits, target)
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def segmentation_loss(logits: Tensor, target: Tensor, weighting: str = "rfnet") -> Tensor:
    """``weighted_cross_entropy(weighting) + soft_dice_loss``; scalar float32."""
    return weighted_cross_entropy(logits, target, weighting) + soft_dice_loss(logits, target)


def _probability_loss(probs: Tensor, target: Tensor, weighting: str) -> Tensor:
    # softmax(log p) == p, so the logit losses apply unchanged to probability maps.
    logp = torch.log(probs.float().clamp_min(PROBABILITY_FLOOR))
    return segmentation_loss(logp, target, weighting)


def rfnet_loss(
    out: ModelOutput,
    target: Tensor,
    *,
    modality_mask: Tensor | None = None,
    fused_weight: float = 1.0,
    class_weights: str = "rfnet",
    aux_weights: Mapping[str, float] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a backbone's output: fused + auxiliary + deep supervision + region maps
    (RFNet's terms) + the backbone's own weighted terms (U-HVED, RobustSeg).

    Every term is ``segmentation_loss`` (weighted CE + soft Dice) against
    ``target`` at the term's own resolution (strided): ``fused`` on
    ``out.logits``; ``aux`` summed over the modalities of ``out.aux_logits``
    (when present); ``deep`` summed over ``out.deep_logits``; ``region``
    summed over ``out.region_maps`` (probabilities; the region masks of the
    target, i.e. its one-hot classes, as RFNet's PRM loss). Terms an output
    lacks are 0. Each term of ``out.aux_losses`` (e.g. ``kl``, ``recon``; none
    for RFNet) is added times its weight in ``aux_weights``.

    Parameters
    ----------
    out : ModelOutput
        Backbone output for the batch.
    target : Tensor
        ``(B, X, Y, Z)`` int64 full-resolution labels.
    modality_mask : Tensor, optional
        ``(B, M)`` bool. When given, an auxiliary prediction counts only for
        samples where its modality is present; pass it when absent modalities'
        images are zeroed by the loader. ``None``: every auxiliary prediction
        the backbone computed counts (``out.aux_mask``; RFNet computes them
        for the modalities present in the mask of its forward pass only).
    fused_weight : float
        Factor on the fused term (RFNet trains with 0 for its first epochs).
    class_weights : str
        Cross-entropy class weighting of every term, one of :data:`CLASS_WEIGHTINGS`.
    aux_weights : mapping of str to float, optional
        Weight of each backbone term by name (the ``[loss]`` config's
        ``kl_weight`` and ``recon_weight``); required when ``out.aux_losses``
        is not empty.

    Returns
    -------
    loss : Tensor
        Scalar float32 total, differentiable.
    parts : dict of str to float
        ``fused``, ``aux``, ``deep``, ``region``, the backbone's own terms
        (unweighted) and ``total`` for logging.

    Raises
    ------
    ValueError
        ``out.aux_losses`` has a term without a weight in ``aux_weights``.
    """
    zero = out.logits.new_zeros((), dtype=torch.float32)
    w = class_weights
    fused = segmentation_loss(out.logits, target, w)
    aux = zero
    if out.aux_logits is not None:
        computed = out.aux_mask
        if computed is not None and modality_mask is not None:
            computed = computed & modality_mask.to(computed.device)
        aux = _aux_loss(out.aux_logits, target, modality_mask if computed is None else computed, w)
    deep = sum((segmentation_loss(d, target, w) for d in out.deep_logits), zero)
    region = sum((_probability_loss(r, target, w) for r in out.region_maps), zero)
    total = fused_weight * fused + aux + deep + region
    parts = {"fused": fused, "aux": aux, "deep": deep, "region": region}
    if out.aux_losses:
        total = total + _weighted_sum(out.aux_losses, aux_weights or {})
        parts |= out.aux_losses
    parts["total"] = total
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(
            f"the backbone's loss term(s) {missing} have no weight; "
            f"weights given for {sorted(weights)} (the [loss] config's kl_weight, recon_weight)"
        )
    return torch.stack([weights[k] * v.float() for k, v in terms.items()]).sum()


def _aux_loss(
    aux_logits: Tensor, target: Tensor, modality_mask: Tensor | None, weighting: str
) -> Tensor:
    """Sum over modalities of the per-modality loss ``(B, M, K, ...)``."""
    num_modalities = aux_logits.shape[1]
    if modality_mask is None:
        return sum(
            (segmentation_loss(aux_logits[:, m], target, weighting) for m in range(num_modalities)),
            aux_logits.new_zeros((), dtype=torch.float32),
        )
    if tuple(modality_mask.shape) != tuple(aux_logits.shape[:2]):
        raise ValueError(
            f"modality_mask shape {tuple(modality_mask.shape)} does not match aux_logits "
            f"(B, M) = {tuple(aux_logits.shape[:2])}"
        )
    total = aux_logits.new_zeros((), dtype=torch.float32)
    for m in range(num_modalities):
        present = modality_mask[:, m].to(aux_logits.device)
        if bool(present.any()):
            total = total + segmentation_loss(aux_logits[present, m], target[present], weighting)
    return total
