"""U-HVED: hetero-modal variational encoder-decoder.

Dorent, Joutard, Modat, Ourselin, Vercauteren, "Hetero-Modal Variational
Encoder-Decoder for Joint Modality Completion and Segmentation", MICCAI 2019
(public code: github.com/ReubenDo/U-HVED, NiftyNet / TensorFlow).

Layout (``b = base_channels``, 8 in the paper; ``M`` modalities, ``K`` classes):

* ``M`` modality-specific encoders: a 1x1x1 conv (``1 -> b``, LeakyReLU) then
  four pre-activation blocks ``IN -> LeakyReLU -> conv3 -> IN -> LeakyReLU ->
  conv3`` with ``b, 2b, 4b, 8b`` channels, a 2x max-pool between blocks. The
  output of block ``l`` (level ``l``, ``1 / 2**l`` resolution) holds the
  parameters of a diagonal Gaussian posterior with ``h_l = b * 2**l / 2``
  channels: the first half is the mean, the second the log-variance (clipped
  to [-50, 50]).  Mask-independent: :meth:`UHVED.encode`.
* Fusion (mask-dependent): at every level the product of the present
  modalities' Gaussians and the N(0, I) prior
  (:func:`~train.models.hetero_blocks.product_of_gaussians`).
* Latents: a sample of each fused posterior in training mode (the noise from
  the training loop's generator, see ``forward``), the posterior mean in eval
  mode.
* ``1 + M`` decoders, no weights shared: one for the segmentation (``K``
  channels) and one per modality reconstructing its image (1 channel). Each
  upsamples the coarser latent (trilinear), concatenates the latent of the
  next level and applies a pre-activation block (``in -> 2c -> c`` for the
  output ``c = h_l``), then a 1x1x1 conv.

Training losses (``ModelOutput.aux_losses``, weighted by ``loss.kl_weight`` and
``loss.recon_weight``, 0.1 each as published): ``kl``, the KL divergence of
the fused posterior to N(0, I), elementwise mean, averaged over the four
levels; ``recon``, the mean squared error of the reconstructed images.

Knowledge distillation: ``features`` are the fused posterior parameters
``cat(mean, log-variance)`` of every level, coarsest first; they depend on the
mask, unlike the per-modality encoder outputs.

Parameters: 1,250,552 at ``b = 8``, ``K = 4``, exactly the trainable variables
of the published checkpoint (``models/u_hved/models/model.ckpt-60000``: 4
encoders of 221,560, 5 decoders of 72,856 plus their 1x1x1 heads: 4 x 4 for
the images, 16 for the segmentation). The layers, widths, norms (affine
instance norm), LeakyReLU slope (0.02, NiftyNet's) and bias-free convolutions
follow it.  Differences from the published training, and why:

* The KL term is the paper's ``KL(q(z | x_S) || N(0, I))`` for the drawn subset
  ``S`` only.  The released code instead averages the prior KL over all 15
  subsets and adds ``KL(q_S || q_S')`` for every subset ``S'``; both need the
  images of modalities outside ``S``, which the training stream zeroes before
  they reach the model (``train.data.crops``).
* For the same reason the reconstruction error is taken over the present
  modalities only (absent ones count 0 in the mean over ``B x M``); the
  published model also learns to impute the dropped modalities.
* Segmentation loss: the project's weighted cross-entropy + soft Dice
  (``loss.class_weights``), as for every backbone, instead of NiftyNet's.
* In eval mode the segmentation decodes the posterior means (the released
  inference samples).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models.base import Backbone, EncoderOutput, ModelOutput, check_image, check_mask
from train.models.hetero_blocks import (
    NoiseSource,
    init_weights,
    instance_norm,
    kl_to_standard_normal,
    product_of_gaussians,
    reconstruction_error,
)

__all__ = ["UHVED"]

NUM_LEVELS = 4
LEAKY_SLOPE = 0.02  # NiftyNet's "leakyrelu"
LOGVAR_CLIP = 50.0


class PreActBlock(nn.Sequential):
    """``IN -> LeakyReLU -> conv3 -> IN -> LeakyReLU -> conv3`` (no bias, no residual).

    ``(B, C_in, X, Y, Z)`` -> ``(B, C_out, X, Y, Z)`` through ``C_mid`` channels.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__(
            instance_norm(in_channels, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv3d(in_channels, mid_channels, 3, padding=1, bias=False),
            instance_norm(mid_channels, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv3d(mid_channels, out_channels, 3, padding=1, bias=False),
        )


class GaussianEncoder(nn.Module):
    """One modality ``(B, 1, X, Y, Z)`` -> Gaussian parameters at four levels.

    Level ``l``: ``(B, C_l, X / 2**l, ...)`` with ``C_l = b * 2**l``; channels
    ``[:C_l / 2]`` are the mean, ``[C_l / 2:]`` the (clipped) log-variance.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(1, channels[0], 1, bias=False), nn.LeakyReLU(LEAKY_SLOPE)
        )
        ins = (channels[0], *channels[:-1])
        self.blocks = nn.ModuleList(
            PreActBlock(c_in, c, c) for c_in, c in zip(ins, channels, strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool3d(x, 2)
            x = block(x)
            half = x.shape[1] // 2
            out.append(torch.cat((x[:, :half], x[:, half:].clamp(-LOGVAR_CLIP, LOGVAR_CLIP)), 1))
        return out


class LatentDecoder(nn.Module):
    """U-Net decoder over the latents of all levels (finest first) -> ``(B, out, X, Y, Z)``."""

    def __init__(self, latents: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        # steps[i] merges into level i (0 = finest): the coarser map has 2 * h_i channels
        # (the latent h_{i+1} or the previous step's output), the skip latent h_i.
        self.steps = nn.ModuleList(PreActBlock(3 * h, 2 * h, h) for h in latents[:-1])
        self.head = nn.Conv3d(latents[0], out_channels, 1, bias=False)

    def forward(self, latents: list[Tensor]) -> Tensor:
        x = latents[-1]
        for i in reversed(range(len(self.steps))):
            skip = latents[i]
            up = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = self.steps[i](torch.cat((up, skip), dim=1))
        return self.head(x)


class UHVED(Backbone):
    """U-HVED backbone; see the module docstring for the architecture and its losses.

    Parameters
    ----------
    num_classes : int
        Output classes ``K`` including background.
    base_channels : int
        Channels ``b`` of the first encoder block (8 in the paper); even, >= 2.
    num_modalities : int
        Input modalities ``M`` (4: flair, t1, t1ce, t2).

    Notes
    -----
    Inputs follow :mod:`train.models.base`. Weights are initialised with
    Kaiming-normal from the global torch generator. In training mode the
    latents are sampled: ``forward(image, mask, generator=g)`` draws the noise
    from ``g`` (the stage objectives pass the training loop's generator),
    ``decode`` and ``forward`` without one use the global torch RNG.
    """

    name: ClassVar[str] = "uhved"
    samples_noise: ClassVar[bool] = True
    """The training forward samples: objectives pass their generator (``train.fit.objectives``)."""

    def __init__(self, num_classes: int = 4, base_channels: int = 8, num_modalities: int = 4):
        if base_channels < 2 or base_channels % 2:
            raise ValueError(f"base_channels must be an even number >= 2, got {base_channels}")
        super().__init__(num_classes, num_modalities, base_channels=base_channels)
        channels = tuple(base_channels * 2**level for level in range(NUM_LEVELS))
        self.channels = channels
        self.latents = tuple(c // 2 for c in channels)
        self.encoders = nn.ModuleList(GaussianEncoder(channels) for _ in range(num_modalities))
        self.seg_decoder = LatentDecoder(self.latents, num_classes)
        self.image_decoders = nn.ModuleList(
            LatentDecoder(self.latents, 1) for _ in range(num_modalities)
        )
        self.apply(functools.partial(init_weights, slope=LEAKY_SLOPE))

    def encode(self, image: Tensor) -> EncoderOutput:
        """Per-modality Gaussian parameters of ``image`` ``(B, M, X, Y, Z)``.

        ``levels[l]`` is ``(B, M, C_l, X_l, Y_l, Z_l)``: ``cat(mean, log-variance)``
        along ``C_l = 2 h_l``.
        """
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        pyramids = [enc(image[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
        levels = [torch.stack([p[lvl] for p in pyramids], dim=1) for lvl in range(NUM_LEVELS)]
        return EncoderOutput(levels=levels)

    def posteriors(self, enc: EncoderOutput, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Fused ``(mean, log-variance)``, each ``(B, h_l, X_l, Y_l, Z_l)`` float32, finest first."""
        check_mask(mask, enc.batch_size, self.num_modalities)
        out = []
        for level in enc.levels:
            half = level.shape[2] // 2
            out.append(product_of_gaussians(level[:, :, :half], level[:, :, half:], mask))
        return out

    def decode(self, enc: EncoderOutput, mask: Tensor) -> ModelOutput:
        """Segmentation for ``mask`` ``(B, M)``: latents sampled (training) or the means (eval)."""
        out, _ = self._decode(enc, mask, NoiseSource(None))
        return out

    def forward(
        self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> ModelOutput:
        """``decode(encode(image), mask)``; in training mode also the reconstructions' losses.

        Parameters
        ----------
        image : Tensor
            ``(B, M, X, Y, Z)`` float; absent modalities may hold anything.
        mask : Tensor
            ``(B, M)`` bool.
        generator : torch.Generator, optional
            CPU generator of the latent noise in training mode (one draw per call).
        """
        check_image(image, self.num_modalities, self.size_divisor, self.min_size)
        check_mask(mask, int(image.shape[0]), self.num_modalities)
        out, latents = self._decode(self.encode(image), mask, NoiseSource(generator))
        if not self.training:
            return out
        recon = torch.cat([dec(latents) for dec in self.image_decoders], dim=1)
        errors = reconstruction_error(recon, image, mask, "l2")
        kl = torch.stack(
            [kl_to_standard_normal(*self._split(f)).mean() for f in out.features]
        ).mean()
        return replace(out, aux_losses={"kl": kl, "recon": errors.mean()})

    def _decode(
        self, enc: EncoderOutput, mask: Tensor, noise: NoiseSource
    ) -> tuple[ModelOutput, list[Tensor]]:
        posts = self.posteriors(enc, mask.to(enc.levels[0].device))
        if self.training:
            latents = [noise.sample(mu, logvar) for mu, logvar in posts]
        else:
            latents = [mu for mu, _ in posts]
        features = [torch.cat(p, dim=1) for p in reversed(posts)]
        return ModelOutput(logits=self.seg_decoder(latents), features=features), latents

    @staticmethod
    def _split(feature: Tensor) -> tuple[Tensor, Tensor]:
        half = feature.shape[1] // 2
        return feature[:, :half], feature[:, half:]
