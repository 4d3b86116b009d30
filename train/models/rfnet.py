"""RFNet: region-aware fusion network for incomplete multi-modal segmentation.

Ding, Yu, Yang, "RFNet: Region-aware Fusion Network for Incomplete
Multi-modal Brain Tumor Segmentation", ICCV 2021.

Layout (``b = base_channels``, ``M`` modalities, ``K`` classes):

* ``M`` modality-specific encoders, four levels with ``b, 2b, 4b, 8b``
  channels at full, 1/2, 1/4 and 1/8 resolution (mask-independent).
* An auxiliary U-Net decoder whose weights are shared by all modalities,
  run on every modality's pyramid in training mode only.
* A fusion decoder with, at every level, a region map generator (PRM) and a
  region-aware fusion module (RFM) over the masked modality features; the
  fused map of the coarser level is upsampled and merged with the RFM output.
  The RFM uses the region maps detached, as published: the maps are trained
  by their own loss only.
* Deep supervision: besides the fused logits and the region maps, a 1x1
  head on the fused decoder features at levels 3, 2, 1 gives intermediate
  fused predictions (``deep_logits``). These three heads are the only
  addition to the published network (``(8b + 4b + 2b + 3) * K`` parameters,
  908 at ``b = 16``, ``K = 4``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, cast

import torch
from torch import Tensor, nn

from train.models.base import Backbone, EncoderOutput, ModelOutput, check_image, check_mask
from train.models.blocks import (
    AuxDecoder,
    DecoderStep,
    ModalityEncoder,
    PointwiseConv3d,
    RegionAwareFusion,
    RegionMapGenerator,
    mask_features,
)

__all__ = ["RFNet"]

NUM_LEVELS = 4


class FusionDecoder(nn.Module):
    """Region-aware fusion decoder over the masked stacked encoder pyramid."""

    def __init__(self, channels: tuple[int, ...], num_modalities: int, num_classes: int) -> None:
        super().__init__()
        coarsest = len(channels) - 1
        self.region_maps = nn.ModuleList(
            RegionMapGenerator(c, num_modalities, num_classes, channels[0], coarsest=i == coarsest)
            for i, c in enumerate(channels)
        )
        self.fusions = nn.ModuleList(
            RegionAwareFusion(c, num_modalities, num_classes) for c in channels
        )
        self.steps = nn.ModuleList(DecoderStep(c) for c in channels[:-1])
        self.deep_heads = nn.ModuleList(PointwiseConv3d(c, num_classes) for c in channels[1:])
        self.head = PointwiseConv3d(channels[0], num_classes)

    def forward(self, levels: list[Tensor], mask: Tensor) -> ModelOutput:
        """Fused prediction from stacked features ``levels[l]`` ``(B, M, C_l, ...)``."""
        top = len(levels) - 1
        masked = mask_features(levels[top], mask)
        prm = self.region_maps[top](masked, None)
        x = self.fusions[top](masked, prm.detach())
        region_maps, features = [prm], [x]
        for i in reversed(range(top)):
            step = cast(DecoderStep, self.steps[i])
            up = step.upsample(x)
            masked = mask_features(levels[i], mask)
            prm = self.region_maps[i](masked, up)
            x = step(self.fusions[i](masked, prm.detach()), up)
            region_maps.append(prm)
            features.append(x)
        deep = [self.deep_heads[top - 1 - j](f) for j, f in enumerate(features[:-1])]
        return ModelOutput(
            logits=self.head(x), deep_logits=deep, region_maps=region_maps, features=features
        )


class RFNet(Backbone):
    """RFNet backbone; see the module docstring for the architecture.

    Parameters
    ----------
    num_classes : int
        Output classes ``K`` including background (4 for BraTS 2018-2020).
    base_channels : int
        Channels at level 0 (16 in the paper); levels double it. Multiple of 4.
    num_modalities : int
        Input modalities ``M`` (4: flair, t1, t1ce, t2).

    Notes
    -----
    Inputs follow :mod:`train.models.base`: ``image`` ``(B, M, X, Y, Z)`` float
    with every spatial size a multiple of 8 and >= 16, ``mask`` ``(B, M)``
    bool. Weights are initialised with Kaiming-normal (LeakyReLU slope 0.2)
    from the global torch generator: seed it with ``torch.manual_seed``.
    """

    name: ClassVar[str] = "rfnet"

    def __init__(self, num_classes: int = 4, base_channels: int = 16, num_modalities: int = 4):
        if base_channels < 4 or base_channels % 4:
            raise ValueError(f"base_channels must be a positive multiple of 4, got {base_channels}")
        super().__init__(num_classes, num_modalities, base_channels=base_channels)
        channels = tuple(base_channels * 2**level for level in range(NUM_LEVELS))
        self.channels = channels
        self.encoders = nn.ModuleList(ModalityEncoder(channels) for _ in range(num_modalities))
        self.aux_decoder = AuxDecoder(channels, num_classes)
        self.fusion_decoder = FusionDecoder(channels, num_modalities, num_classes)
        self.apply(_init_weights)

    def encode(self, image: Tensor) -> EncoderOutput:
        """Stacked per-modality pyramid of ``image`` ``(B, M, X, Y, Z)``; see EncoderOutput."""
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        pyramids = [enc(image[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
        levels = [torch.stack([p[lvl] for p in pyramids], dim=1) for lvl in range(NUM_LEVELS)]
        return EncoderOutput(levels=levels)

    def decode(self, enc: EncoderOutput, mask: Tensor) -> ModelOutput:
        """Fused (and, in training mode, per-modality) predictions for ``mask`` ``(B, M)``.

        In training mode the auxiliary decoder runs on the present modalities
        only (``aux_mask`` = ``mask``): the others' predictions carry no loss.
        """
        check_mask(mask, enc.batch_size, self.num_modalities)
        mask = mask.to(enc.levels[0].device)
        out = self.fusion_decoder(enc.levels, mask)
        if not self.training:
            return out
        return replace(out, aux_logits=self._aux_logits(enc.levels, mask), aux_mask=mask)

    def forward(self, image: Tensor, mask: Tensor) -> ModelOutput:
        """``decode(encode(image), mask)``; in training mode absent modalities are not encoded.

        Their features are zeroed by the fusion decoder and their auxiliary
        predictions are not computed, so skipping them changes neither the
        output nor the gradients (the encoder of a modality absent from the
        whole batch runs on an empty batch and gets a zero gradient, as
        before); on average over the 15 subsets it halves the encoder and
        auxiliary-decoder work of a training step.
        """
        if not self.training:
            return super().forward(image, mask)
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        check_mask(mask, int(image.shape[0]), self.num_modalities)
        return self.decode(self._encode_present(image, mask.to(image.device)), mask)

    def _encode_present(self, image: Tensor, mask: Tensor) -> EncoderOutput:
        """Like :meth:`encode`, but absent modalities' features are not computed (zeros) where
        that saves work; the fusion decoder masks them either way."""
        per_modality = []
        for m, enc in enumerate(self.encoders):
            if bool(mask[:, m].all()):
                per_modality.append(enc(image[:, m : m + 1]))
                continue
            rows = _rows_to_encode(mask[:, m])
            part = enc(image[rows, m : m + 1])
            per_modality.append([_scatter_rows(p, rows, image.shape[0]) for p in part])
        levels = [torch.stack([p[lvl] for p in per_modality], dim=1) for lvl in range(NUM_LEVELS)]
        return EncoderOutput(levels=levels)

    def _aux_logits(self, levels: list[Tensor], mask: Tensor) -> Tensor:
        """Shared-decoder logits ``(B, M, K, X, Y, Z)`` of the modalities present in ``mask``
        (zeros elsewhere): the present (sample, modality) pairs are folded into one batch."""
        batch, mods = levels[0].shape[:2]
        folded = [level.flatten(0, 1) for level in levels]
        if bool(mask.all()):
            return self.aux_decoder(folded).unflatten(0, (batch, mods))
        rows = mask.flatten().nonzero().flatten()
        logits = self.aux_decoder([level[rows] for level in folded])
        return _scatter_rows(logits, rows, batch * mods).unflatten(0, (batch, mods))


def _rows_to_encode(present: Tensor) -> Tensor:
    """Indices of the samples ``present`` ``(B,)`` flags.

    A single sample is encoded on its own: on CPU the encoder's convolutions
    (:class:`~train.models.blocks.PaddedConv3d`) keep a batch of one on oneDNN.
    """
    return present.nonzero().flatten()


def _scatter_rows(part: Tensor, rows: Tensor, total: int) -> Tensor:
    """``(len(rows), ...)`` -> ``(total, ...)`` with ``part`` at ``rows`` and zeros elsewhere."""
    if part.shape[0] == total:
        return part
    return part.new_zeros((total, *part.shape[1:])).index_copy(0, rows, part)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv3d | nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
