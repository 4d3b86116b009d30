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


def _check_logits(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 5:
        raise ValueError(f"logits must have shape (B, K, X, Y, Z), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != tuple(expected):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected {tuple(expected)}"
        )


def _check_labels(target: Tensor, num_classes: int) -> None:
    if target.dtype != torch.int64:
        raise ValueError(f"target must have dtype torch.int64, got {target.dtype}")
    lo, hi = (int(v) for v in torch.aminmax(target))
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


# Class weightings of the cross-entropy term (``loss.class_weights`` in configs):
# ``rfnet``  ``w_c = 1 - freq_c`` per sample, as RFNet and the paper (background
#            weight ~0.02-0.05 on BraTS crops: false positives are cheap);
# ``none``   plain cross-entropy, every voxel weight 1;
# ``sqrt``   ``w_c = freq_c ** -0.5`` over the batch, scaled so that the mean voxel
#            weight is 1: rare classes count more, less extremely than ``rfnet``.


class _Labels:
    """A (checked) target at one resolution and what every loss term against it needs:
    its one-hot classes, their counts and the cross-entropy voxel weights, each computed
    once however many terms (fused, auxiliary, deep, region) use them."""

    def __init__(self, target: Tensor, num_classes: int) -> None:
        self.target = target
        self.num_classes = num_classes
        self._hot: Tensor | None = None
        self._onehot: Tensor | None = None
        self._totals: Tensor | None = None
        self._weights: dict[str, Tensor | None] = {}

    @property
    def hot(self) -> Tensor:
        """Bool ``(B, K, X, Y, Z)``: whether the voxel has class ``k`` (one comparison, not
        ``F.one_hot``'s zero fill and scatter)."""
        if self._hot is None:
            classes = torch.arange(self.num_classes, device=self.target.device)
            self._hot = self.target.unsqueeze(1) == classes.view(1, -1, 1, 1, 1)
        return self._hot

    @property
    def onehot(self) -> Tensor:
        """Float32 ``(B, K, X, Y, Z)`` one-hot classes."""
        if self._onehot is None:
            self._onehot = self.hot.float()
        return self._onehot

    @property
    def totals(self) -> Tensor:
        """Float32 ``(K,)``: the one-hot classes summed over the batch and the voxels."""
        if self._totals is None:
            self._totals = self.onehot.sum((0, 2, 3, 4))
        return self._totals

    @property
    def counts(self) -> Tensor:
        """Float32 ``(B, K)`` voxel count of every class in every sample (summed as integers)."""
        return self.hot.flatten(2).sum(dim=2).float()

    def weights(self, weighting: str) -> Tensor | None:
        """Per-voxel weights ``(B, X, Y, Z)`` of ``weighting``, or ``None`` for unweighted CE."""
        if weighting not in self._weights:
            self._weights[weighting] = self._class_weights(weighting)
        return self._weights[weighting]

    def _class_weights(self, weighting: str) -> Tensor | None:
        target = self.target
        if weighting == "none":
            return None
        if weighting == "rfnet":
            weights = 1.0 - self.counts / target[0].numel()
            return weights.gather(1, target.flatten(1)).view_as(target)
        if weighting == "sqrt":
            freq = self.counts.sum(0) / target.numel()  # (K,)
            w = torch.where(freq > 0, freq.clamp_min(1e-12).rsqrt(), torch.zeros_like(freq))
            w = w / (w * freq).sum()  # mean voxel weight 1
            return w[target]
        raise ValueError(
            f"class weighting must be one of {list(CLASS_WEIGHTINGS)}, got {weighting!r}"
        )


class _Targets:
    """A full-resolution target, its labels checked once, and its :class:`_Labels` at every
    resolution a loss term asks for (downsampled by striding, :func:`downsample_target`)."""

    def __init__(self, target: Tensor, num_classes: int, *, checked: bool = False) -> None:
        if target.dtype != torch.int64:
            raise ValueError(f"target must have dtype torch.int64, got {target.dtype}")
        if not checked:
            _check_labels(target, num_classes)
        self.target = target
        self.num_classes = num_classes
        self._at: dict[tuple[int, ...], _Labels] = {}

    def like(self, logits: Tensor) -> _Labels:
        """The labels at ``logits``' resolution and number of classes, checked against it."""
        if logits.ndim != 5:
            raise ValueError(f"logits must have shape (B, K, X, Y, Z), got {tuple(logits.shape)}")
        key = tuple(logits.shape[1:])
        labels = self._at.get(key)
        if labels is None:
            target = downsample_target(self.target, key[1:])
            _check_logits(logits, target)
            if key[0] != self.num_classes:
                _check_labels(target, key[0])
            labels = self._at[key] = _Labels(target, key[0])
        else:
            _check_logits(logits, labels.target)
        return labels

    def subset(self, rows: Tensor) -> _Targets:
        """The same for the samples ``rows`` (bool ``(B,)``) of the batch."""
        return _Targets(self.target[rows], self.num_classes, checked=True)


def _cross_entropy(logits: Tensor, labels: _Labels, weighting: str) -> Tensor:
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -(log_p * labels.onehot).sum(1)  # (B, X, Y, Z)
    weights = labels.weights(weighting)
    return nll.mean() if weights is None else (weights * nll).mean()


def _dice(logits: Tensor, labels: _Labels, smooth: float = 1e-5) -> Tensor:
    probs = torch.softmax(logits.float(), dim=1)
    dims = (0, 2, 3, 4)
    intersection = (probs * labels.onehot).sum(dims)
    denominator = probs.sum(dims) + labels.totals
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def _targets(logits: Tensor, target: Tensor) -> _Targets:
    """``target`` at ``logits``' resolution, checked as the public losses check it."""
    if logits.ndim == 5 and target.ndim == 4:
        target = downsample_target(target, tuple(logits.shape[2:]))
    if logits.ndim != 5:
        raise ValueError(f"logits must have shape (B, K, X, Y, Z), got {tuple(logits.shape)}")
    if target.dtype != torch.int64:
        raise ValueError(f"target must have dtype torch.int64, got {target.dtype}")
    _check_logits(logits, target)
    return _Targets(target, logits.shape[1])


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
    return _cross_entropy(logits, _targets(logits, target).like(logits), weighting)


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
    return _dice(logits, _targets(logits, target).like(logits), smooth)


def segmentation_loss(logits: Tensor, target: Tensor, weighting: str = "rfnet") -> Tensor:
    """``weighted_cross_entropy(weighting) + soft_dice_loss``; scalar float32."""
    return _segmentation_loss(logits, _targets(logits, target), weighting)


def _segmentation_loss(logits: Tensor, targets: _Targets, weighting: str) -> Tensor:
    labels = targets.like(logits)
    return _cross_entropy(logits, labels, weighting) + _dice(logits, labels)


def _probability_loss(probs: Tensor, targets: _Targets, weighting: str) -> Tensor:
    # softmax(log p) == p, so the logit losses apply unchanged to probability maps.
    logp = torch.log(probs.float().clamp_min(PROBABILITY_FLOOR))
    return _segmentation_loss(logp, targets, weighting)


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
    if out.logits.ndim != 5:
        raise ValueError(f"logits must have shape (B, K, X, Y, Z), got {tuple(out.logits.shape)}")
    targets = _Targets(target, out.logits.shape[1])
    fused = _segmentation_loss(out.logits, targets, w)
    aux = zero
    if out.aux_logits is not None:
        computed = out.aux_mask
        if computed is not None and modality_mask is not None:
            computed = computed & modality_mask.to(computed.device)
        aux = _aux_loss(out.aux_logits, targets, modality_mask if computed is None else computed, w)
    deep = sum((_segmentation_loss(d, targets, w) for d in out.deep_logits), zero)
    region = sum((_probability_loss(r, targets, w) for r in out.region_maps), zero)
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
    aux_logits: Tensor, targets: _Targets, modality_mask: Tensor | None, weighting: str
) -> Tensor:
    """Sum over modalities of the per-modality loss ``(B, M, K, ...)``.

    A modality present in every sample is scored on its slice of ``aux_logits``
    (a view) against the full batch's labels; one present in some samples only,
    on those samples, against their labels (computed once per subset of samples).
    """
    if modality_mask is None:
        return sum(
            (_segmentation_loss(logits, targets, weighting) for logits in aux_logits.unbind(1)),
            aux_logits.new_zeros((), dtype=torch.float32),
        )
    if tuple(modality_mask.shape) != tuple(aux_logits.shape[:2]):
        raise ValueError(
            f"modality_mask shape {tuple(modality_mask.shape)} does not match aux_logits "
            f"(B, M) = {tuple(aux_logits.shape[:2])}"
        )
    total = aux_logits.new_zeros((), dtype=torch.float32)
    present_all = modality_mask.to(aux_logits.device)
    subsets: dict[tuple[bool, ...], _Targets] = {}
    # unbind: one stack of the modalities' gradients in backward, not a zero-filled
    # (B, M, K, ...) gradient per modality
    for m, logits in enumerate(aux_logits.unbind(1)):
        present = present_all[:, m]
        flags = tuple(bool(f) for f in present.tolist())
        if all(flags):
            total = total + _segmentation_loss(logits, targets, weighting)
        elif any(flags):
            if flags not in subsets:
                subsets[flags] = targets.subset(present)
            total = total + _segmentation_loss(logits[present], subsets[flags], weighting)
    return total
