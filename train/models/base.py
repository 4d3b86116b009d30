"""Interface shared by every segmentation backbone: inputs, outputs, validation.

Conventions
-----------
* ``image``: float tensor ``(B, M, X, Y, Z)``; channel ``m`` follows
  :data:`aem_synth.types.MODALITIES` (flair, t1, t1ce, t2); spatial axes are the
  canonical RAS voxel axes. Each spatial size must be a multiple of
  :attr:`Backbone.size_divisor` and at least :attr:`Backbone.min_size`.
* ``mask``: bool tensor ``(B, M)``; ``mask[b, m]`` is ``True`` when modality
  ``m`` is available for sample ``b``. At least one modality per sample.
* Level ``l`` of a feature pyramid has spatial size ``(X, Y, Z) / 2**l``;
  level 0 is full resolution.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "EncoderOutput", "ModelOutput", "check_image", "check_mask"]


@dataclass(frozen=True)
class EncoderOutput:
    """Mask-independent encoder features, reusable for every modality subset.

    Attributes
    ----------
    levels : list of Tensor
        One stacked tensor per level, finest first: ``levels[l]`` has shape
        ``(B, M, C_l, X / 2**l, Y / 2**l, Z / 2**l)`` with ``M`` modalities in
        MODALITIES order (for RFNet ``C_l = 16 * 2**l``). Depends only on the
        image; decoders must never modify these tensors in place.
    """

    levels: list[Tensor]

    @property
    def per_modality(self) -> list[list[Tensor]]:
        """Views ``per_modality[m][l]`` of shape ``(B, C_l, X_l, Y_l, Z_l)``."""
        num_modalities = self.levels[0].shape[1]
        return [[level[:, m] for level in self.levels] for m in range(num_modalities)]

    @property
    def batch_size(self) -> int:
        """Number of samples ``B``."""
        return int(self.levels[0].shape[0])

    def repeat_batch(self, times: int) -> EncoderOutput:
        """The batch repeated ``times`` times along ``B`` (block order: the whole batch, again...)."""
        return EncoderOutput([torch.cat([level] * times) for level in self.levels])


@dataclass(frozen=True)
class ModelOutput:
    """Everything a backbone predicts for one batch and one modality mask.

    Attributes
    ----------
    logits : Tensor
        Fused prediction ``(B, K, X, Y, Z)`` before softmax, ``K`` classes.
    aux_logits : Tensor or None
        Per-modality predictions of the weight-shared auxiliary decoder,
        ``(B, M, K, X, Y, Z)`` in MODALITIES order; computed in training mode
        only (``None`` in eval mode), for the entries flagged in ``aux_mask``.
    deep_logits : list of Tensor
        Intermediate fused predictions ``(B, K, X_l, Y_l, Z_l)`` at the coarser
        decoder levels, coarsest first (deep supervision); may be empty.
    region_maps : list of Tensor
        Region probability maps ``(B, K, X_l, Y_l, Z_l)`` (softmax over the
        ``K`` regions) of the region-aware fusion at every level, coarsest
        first; empty for backbones without region fusion.
    features : list of Tensor
        Mask-dependent fused decoder features ``(B, C_l, X_l, Y_l, Z_l)`` at
        every level, coarsest first (knowledge-distillation targets).
    aux_losses : dict of str to Tensor
        The backbone's own auxiliary loss terms, unweighted scalar float32
        tensors (e.g. U-HVED's ``"kl"`` and ``"recon"``), computed by
        ``forward`` in training mode only; the segmentation objective weights
        them by the ``[loss]`` config and logs each as a part. Empty for
        RFNet and in eval mode.
    aux_mask : Tensor or None
        Bool ``(B, M)``: the entries of ``aux_logits`` that were computed (the
        modalities present in the mask the output was made for); the others
        hold zeros and carry no loss. ``None``: every entry was computed.
    """

    logits: Tensor
    aux_logits: Tensor | None = None
    deep_logits: list[Tensor] = field(default_factory=list)
    region_maps: list[Tensor] = field(default_factory=list)
    features: list[Tensor] = field(default_factory=list)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    aux_mask: Tensor | None = None

    @property
    def intermediate_predictions(self) -> list[Tensor]:
        """Mask-dependent predictions for distillation: ``deep_logits`` then ``logits``."""
        return [*self.deep_logits, self.logits]

    def distillation_targets(self) -> list[Tensor]:
        """Every mask-dependent tensor a student should match: features then predictions."""
        return [*self.features, *self.intermediate_predictions]


def check_image(image: Tensor, num_modalities: int, size_divisor: int, min_size: int) -> None:
    """Raise ``ValueError`` unless ``image`` is a valid ``(B, M, X, Y, Z)`` float batch.

    Parameters
    ----------
    image : Tensor
        Candidate input batch.
    num_modalities : int
        Expected channel count ``M``.
    size_divisor : int
        Every spatial size must be a multiple of this (voxels).
    min_size : int
        Every spatial size must be at least this (voxels).
    """
    shape = tuple(image.shape)
    if image.ndim != 5 or shape[1] != num_modalities:
        raise ValueError(f"image must have shape (B, {num_modalities}, X, Y, Z), got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor, got dtype {image.dtype}")
    spatial = shape[2:]
    if any(s % size_divisor or s < min_size for s in spatial):
        raise ValueError(
            f"image spatial size {spatial} (full shape {shape}) must be a multiple of "
            f"{size_divisor} and at least {min_size} on every axis; pad the input"
        )


def check_mask(mask: Tensor, batch_size: int, num_modalities: int) -> None:
    """Raise ``ValueError`` unless ``mask`` is a ``(B, M)`` bool tensor, no empty row.

    Parameters
    ----------
    mask : Tensor
        Candidate modality mask.
    batch_size : int
        Expected ``B``.
    num_modalities : int
        Expected ``M``.
    """
    if tuple(mask.shape) != (batch_size, num_modalities):
        raise ValueError(
            f"modality mask must have shape ({batch_size}, {num_modalities}), "
            f"got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"modality mask must have dtype torch.bool, got {mask.dtype}")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"modality mask has no available modality for batch sample(s) {empty}; "
            "at least one of the modalities must be present"
        )


class Backbone(nn.Module, abc.ABC):
    """A segmentation network for incomplete multi-modal input.

    Subclasses implement :meth:`encode` (image only) and :meth:`decode`
    (features + mask); :meth:`forward` composes them, so evaluation can encode
    a window once and decode it for all 15 modality subsets.

    Attributes
    ----------
    name : str
        Registry key of the backbone.
    num_classes : int
        Number of output classes ``K`` (background included).
    num_modalities : int
        Number of input modalities ``M`` (4).
    init_args : dict
        Constructor keyword arguments, stored in checkpoints to rebuild the model.
    size_divisor, min_size : int
        Spatial-size rules of :func:`check_image`.
    """

    name: ClassVar[str] = "backbone"
    size_divisor: ClassVar[int] = 8
    min_size: ClassVar[int] = 16

    def __init__(self, num_classes: int, num_modalities: int = 4, **init_args: Any) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        self.num_classes = num_classes
        self.num_modalities = num_modalities
        self.init_args: dict[str, Any] = {
            "num_classes": num_classes,
            "num_modalities": num_modalities,
            **init_args,
        }

    @abc.abstractmethod
    def encode(self, image: Tensor) -> EncoderOutput:
        """Mask-independent features of ``image`` ``(B, M, X, Y, Z)``."""

    @abc.abstractmethod
    def decode(self, enc: EncoderOutput, mask: Tensor) -> ModelOutput:
        """Predictions from ``enc`` using only the modalities flagged in ``mask`` ``(B, M)``."""

    def forward(self, image: Tensor, mask: Tensor) -> ModelOutput:
        """``decode(encode(image), mask)``."""
        # Validate both before the (expensive) encoders run.
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        check_mask(mask, int(image.shape[0]), self.num_modalities)
        return self.decode(self.encode(image), mask)
