"""RobustSeg: feature disentanglement and gated fusion for incomplete multi-modal segmentation.

Chen, Dou, Jin, Qin, Heng, "Robust Multimodal Brain Tumor Segmentation via
Feature Disentanglement and Gated Fusion", MICCAI 2019 (public code:
github.com/cchen-cc/Robust-Mseg, TensorFlow).

Layout (``b = base_channels``, 16 in the paper; ``M`` modalities, ``K`` classes):

* ``M`` content encoders, four levels with ``b, 2b, 4b, 8b`` channels (entry
  conv, then a residual pair; conv-IN-LeakyReLU(0.2), reflect padding): the
  encoder RFNet took from RobustSeg, :class:`train.models.blocks.ModalityEncoder`.
  Mask-independent: :meth:`RobustSeg.encode`.
* Gated fusion at every level (mask-dependent): the absent modalities'
  content codes are zeroed, a 3x3x3 conv + IN + sigmoid over the
  concatenated codes gives one gate map per modality, the gated codes are
  concatenated and fused by a 1x1x1 conv-IN-LeakyReLU to ``C_l`` channels.
* A U-Net segmentation decoder over the fused codes (RFNet's decoder,
  :class:`train.models.blocks.AuxDecoder`; the published one is the same up to
  nearest instead of trilinear upsampling and the order of a concatenation).
* Training only: ``M`` appearance encoders (conv7 then four stride-2 conv4,
  ReLU, no norm, global average pooling, a linear layer) giving a diagonal
  Gaussian appearance code of 8 dimensions per modality, and ``M`` image
  decoders that reconstruct each modality from the fused coarsest content
  code and a sample of that modality's appearance code: an MLP maps the code
  to AdaIN scales and shifts for four adaptive residual blocks at ``8b``
  channels, then three (nearest x2 upsampling, conv5, layer norm, ReLU) steps
  and a conv7 to one channel.

Training losses (``ModelOutput.aux_losses``, weighted by ``loss.recon_weight``
and ``loss.kl_weight``, 0.1 each as published): ``recon``, the L1 error of each
present modality's reconstruction, summed over modalities and averaged over
the batch; ``kl``, the KL divergence of each present modality's appearance
code to N(0, I), summed over code dimensions and modalities, batch mean.

Knowledge distillation: ``features`` are the fused content codes of every
level, coarsest first.  (The public AEM reference code distils the
per-modality content codes, which do not depend on the mask, so its KD term
is identically zero.)

Parameters: the published network has 37,472,233 parameters at ``K = 5``
(37,472,216 at ``K = 4``), counted from its ``model.py``: 4 content encoders
of 1,467,936, gated fusion 191,488, segmentation decoder 587,060, 4
appearance encoders of 2,765,000 and 4 image decoders of 4,940,481; the
segmentation path (what inference runs) is 6,650,292.  This implementation
has 37,469,400 at ``b = 16``, ``K = 4`` (-2,816).  Differences, and why:

* Instance norms without affine parameters (RFNet's convention, and the
  reason the content encoder and decoder can be shared with RFNet): -6,944
  (content encoders -5,760, fusion -512, decoder -672).
* The appearance head outputs a mean and a log-variance (16 numbers, +1,032
  per modality, +4,128): the paper's KL loss constrains a Gaussian appearance code,
  whereas the released code feeds a deterministic 8-d code to the decoders
  and applies its "KL" to the AdaIN parameters.
* Reconstruction and KL are computed for the present modalities only: the
  training stream zeroes dropped modalities before they reach the model
  (``train.data.crops``); the released code also reconstructs the dropped
  modalities from the fused content and their own appearance codes.
* The published weight decay (1e-4 L2 on kernels) is the optimiser's weight
  decay here; the segmentation loss is the project's (``loss.class_weights``).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models.base import Backbone, EncoderOutput, ModelOutput, check_image, check_mask
from train.models.blocks import AuxDecoder, ConvNormAct, ModalityEncoder, mask_features
from train.models.hetero_blocks import (
    NoiseSource,
    init_weights,
    instance_norm,
    kl_to_standard_normal,
    layer_norm,
    reconstruction_error,
    upsample_nearest2,
)

__all__ = ["RobustSeg"]

NUM_LEVELS = 4
APPEARANCE_DIM = 8
LEAKY_SLOPE = 0.2
LOGVAR_CLIP = 50.0
ADAIN_EPS = 1e-5


def _reflect_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=(kernel - 1) // 2,
        padding_mode="reflect",
    )


class GatedFusion(nn.Module):
    """Gated fusion of masked content codes ``(B, M, C, ...)`` -> ``(B, C, ...)``."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            _reflect_conv(num_modalities * channels, num_modalities, 3),
            instance_norm(num_modalities, affine=False),
            nn.Sigmoid(),
        )
        self.fuse = ConvNormAct(num_modalities * channels, channels, kernel_size=1)

    def forward(self, masked: Tensor) -> Tensor:
        gates = self.gate(masked.flatten(1, 2))  # (B, M, X, Y, Z)
        return self.fuse((masked * gates[:, :, None]).flatten(1, 2))


class AppearanceEncoder(nn.Module):
    """One modality ``(B, 1, X, Y, Z)`` -> appearance code ``(mean, log-variance)``, each ``(B, D)``."""

    def __init__(self, width: int, code_dim: int = APPEARANCE_DIM) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = [_reflect_conv(1, width, 7), nn.ReLU(inplace=True)]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [
                nn.Conv3d(c_in, c_out, 4, stride=2, padding=1, padding_mode="reflect"),
                nn.ReLU(inplace=True),
            ]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 2 * code_dim)
        self.code_dim = code_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        code = self.head(self.convs(x).mean(dim=(2, 3, 4)))
        mean, logvar = code[:, : self.code_dim], code[:, self.code_dim :]
        return mean, logvar.clamp(-LOGVAR_CLIP, LOGVAR_CLIP)


def adaptive_instance_norm(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``scale * IN(x) + shift``: ``x`` ``(B, C, X, Y, Z)``, ``scale``/``shift`` ``(B, C)``."""
    normed = F.group_norm(x, x.shape[1], eps=ADAIN_EPS)
    return scale[:, :, None, None, None] * normed + shift[:, :, None, None, None]


class AdaptiveResBlock(nn.Module):
    """``x + AdaIN(conv(ReLU(AdaIN(conv(x)))))`` at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _reflect_conv(channels, channels, 3)
        self.conv2 = _reflect_conv(channels, channels, 3)

    def forward(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        y = F.relu(adaptive_instance_norm(self.conv1(x), scale, shift))
        return x + adaptive_instance_norm(self.conv2(y), scale, shift)


class ImageDecoder(nn.Module):
    """Fused content ``(B, C, X/8, Y/8, Z/8)`` + appearance code ``(B, D)`` -> image ``(B, 1, X, Y, Z)``."""

    def __init__(self, channels: int, code_dim: int = APPEARANCE_DIM, num_blocks: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(code_dim, channels),
            nn.ReLU(inplace=True),
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Linear(channels, channels)
        self.shift = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(AdaptiveResBlock(channels) for _ in range(num_blocks))
        widths = [channels // 2**i for i in range(4)]
        self.ups = nn.ModuleList(
            nn.Sequential(_reflect_conv(c, c // 2, 5), layer_norm(c // 2), nn.ReLU(inplace=True))
            for c in widths[:-1]
        )
        self.out = _reflect_conv(widths[-1], 1, 7)

    def forward(self, content: Tensor, code: Tensor) -> Tensor:
        y = self.mlp(code)
        scale, shift = self.scale(y), self.shift(y)
        x = content
        for block in self.blocks:
            x = block(x, scale, shift)
        for up in self.ups:
            x = up(upsample_nearest2(x))
        return self.out(x)


class RobustSeg(Backbone):
    """RobustSeg backbone; see the module docstring for the architecture and its losses.

    Parameters
    ----------
    num_classes : int
        Output classes ``K`` including background.
    base_channels : int
        Channels ``b`` of the first content-encoder level (16 in the paper), >= 2;
        appearance encoders start at ``2b``, image decoders work at ``8b``.
    num_modalities : int
        Input modalities ``M`` (4: flair, t1, t1ce, t2).

    Notes
    -----
    Inputs follow :mod:`train.models.base`. Weights are initialised with
    Kaiming-normal from the global torch generator. The segmentation path is
    deterministic; in training mode the appearance codes are sampled, with
    noise from ``forward``'s ``generator`` (the stage objectives pass the
    training loop's) or else the global torch RNG.
    """

    name: ClassVar[str] = "robustseg"
    samples_noise: ClassVar[bool] = True
    """The training forward samples: objectives pass their generator (``train.fit.objectives``)."""

    def __init__(self, num_classes: int = 4, base_channels: int = 16, num_modalities: int = 4):
        if base_channels < 2:
            raise ValueError(f"base_channels must be >= 2, got {base_channels}")
        super().__init__(num_classes, num_modalities, base_channels=base_channels)
        channels = tuple(base_channels * 2**level for level in range(NUM_LEVELS))
        self.channels = channels
        self.encoders = nn.ModuleList(ModalityEncoder(channels) for _ in range(num_modalities))
        self.fusions = nn.ModuleList(GatedFusion(c, num_modalities) for c in channels)
        self.seg_decoder = AuxDecoder(channels, num_classes)
        self.appearance_encoders = nn.ModuleList(
            AppearanceEncoder(2 * base_channels) for _ in range(num_modalities)
        )
        self.image_decoders = nn.ModuleList(
            ImageDecoder(channels[-1]) for _ in range(num_modalities)
        )
        self.apply(functools.partial(init_weights, slope=LEAKY_SLOPE))

    def encode(self, image: Tensor) -> EncoderOutput:
        """Stacked per-modality content codes of ``image`` ``(B, M, X, Y, Z)``.

        ``levels[l]`` is ``(B, M, C_l, X / 2**l, Y / 2**l, Z / 2**l)``, ``C_l = b * 2**l``.
        """
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        pyramids = [enc(image[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
        levels = [torch.stack([p[lvl] for p in pyramids], dim=1) for lvl in range(NUM_LEVELS)]
        return EncoderOutput(levels=levels)

    def decode(self, enc: EncoderOutput, mask: Tensor) -> ModelOutput:
        """Segmentation from the gated fusion of the content codes flagged in ``mask`` ``(B, M)``."""
        check_mask(mask, enc.batch_size, self.num_modalities)
        present = mask.to(enc.levels[0].device)
        fused = [
            fusion(mask_features(level, present))
            for fusion, level in zip(self.fusions, enc.levels, strict=True)
        ]
        return ModelOutput(logits=self.seg_decoder(fused), features=fused[::-1])

    def forward(
        self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> ModelOutput:
        """``decode(encode(image), mask)``; in training mode also the reconstruction and KL losses.

        Parameters
        ----------
        image : Tensor
            ``(B, M, X, Y, Z)`` float; absent modalities may hold anything.
        mask : Tensor
            ``(B, M)`` bool.
        generator : torch.Generator, optional
            CPU generator of the appearance-code noise in training mode (one draw per call).
        """
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        check_mask(mask, int(image.shape[0]), self.num_modalities)
        out = self.decode(self.encode(image), mask)
        if not self.training:
            return out
        codes = [enc(image[:, m : m + 1]) for m, enc in enumerate(self.appearance_encoders)]
        mean = torch.stack([c[0] for c in codes], dim=1)  # (B, M, D)
        logvar = torch.stack([c[1] for c in codes], dim=1)
        sample = NoiseSource(generator).sample(mean, logvar)
        content = out.features[0]  # the fused coarsest content code
        recon = torch.cat(
            [dec(content, sample[:, m]) for m, dec in enumerate(self.image_decoders)], dim=1
        )
        present = mask.to(image.device)
        kl = torch.where(present, kl_to_standard_normal(mean, logvar).sum(dim=2), 0.0)
        errors = reconstruction_error(recon, image, present, "l1")
        return replace(out, aux_losses={"kl": kl.sum(1).mean(), "recon": errors.sum(1).mean()})
