"""Building blocks of RFNet (Ding et al., ICCV 2021).

Tensors are ``(B, C, X, Y, Z)`` unless stated; stacked per-modality features
are ``(B, M, C, X, Y, Z)`` with ``M`` modalities in MODALITIES order. Level
``l`` has ``C_l = base * 2**l`` channels at ``1 / 2**l`` resolution.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AuxDecoder",
    "ConvNormAct",
    "DecoderStep",
    "ModalityEncoder",
    "PointwiseConv3d",
    "RegionAwareFusion",
    "RegionMapGenerator",
    "mask_features",
    "upsample2",
]

LEAKY_SLOPE = 0.2


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 ``Conv3d`` computed as one matrix product over the flattened voxels.

    Same parameters and state-dict keys as ``nn.Conv3d(in, out, 1)``; on CPU
    oneDNN's 1x1x1 convolution is 5-10x slower than the equivalent GEMM at
    full resolution (e.g. 64 -> 16 channels on 80^3 voxels: 100 ms against 17
    ms on two cores), and the fusion decoder is dominated by such layers.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, X, Y, Z)`` -> ``(B, C_out, X, Y, Z)``."""
        batch, channels = x.shape[:2]
        if x.ndim != 5 or channels != self.in_channels:
            raise ValueError(
                f"PointwiseConv3d expected {self.in_channels} input channels, got {channels} "
                f"(input shape {tuple(x.shape)}, want (B, C, X, Y, Z))"
            )
        weight = self.weight.view(self.out_channels, channels)
        flat = x.reshape(batch, channels, -1)
        if self.bias is None:
            out = torch.matmul(weight, flat)
        elif batch == 1:
            out = torch.addmm(self.bias[:, None], weight, flat[0])[None]
        else:
            out = torch.baddbmm(self.bias[None, :, None], weight.expand(batch, -1, -1), flat)
        return out.view(batch, self.out_channels, *x.shape[2:])


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation without affine parameters, as ``GroupNorm`` with one group
    per channel (about ten times faster than ``InstanceNorm3d`` on CPU).

    The input is made contiguous first: on CPU the convolutions run channels-last
    (:func:`train.fit.distributed.place_model`), and ``GroupNorm``'s channels-last
    kernels are several times slower than its contiguous ones at few channels,
    far more than the copy costs.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous())


class PaddedConv3d(nn.Conv3d):
    """``nn.Conv3d`` (reflect padding) with a faster CPU path: the same parameters and
    state-dict keys, the same outputs up to fp32 round-off.

    On CPU with a channels-last weight (:func:`train.fit.distributed.place_model`)
    the module pads its input itself and hands oneDNN a channels-last input, in
    one of three shapes, all measured at the demo's size
    (``benchmarks/bench_step.py``); every output voxel is computed by the same
    oneDNN kernel as in a batch of two, so the outputs are bitwise those of
    ``nn.Conv3d`` run channels-last on a batch (the weight gradients, summed in
    another order, agree to fp32 round-off):

    * The padded input is converted to channels-last here, not inside the
      convolution: same one copy forward, but the convolution keeps the
      converted input for its backward pass instead of converting it again.
    * A batch of one sample, which PyTorch sends to its reference kernel instead
      of oneDNN (a heuristic made for 2-D inputs; 4x slower at 4 channels on
      32^3), is convolved as two half-depth slabs batched together (the input
      slabs overlap by the kernel's extent minus the stride); the output halves
      are joined by a view.
    * A convolution that reduces channels (``in >= 2 * out``, ``2 * out <= 16``)
      at a width of at least 32 computes two neighbouring voxels along the last
      axis as ``2 * out`` channels of a stride-2 convolution whose kernel is one
      wider (each half of the weight shifted by one voxel): oneDNN vectorises
      over output channels in blocks of 16, so few output channels leave most of
      a vector idle; the channels-last result is already the interleaved output.
      1.16x on 8 -> 4 channels at 32^3 (the decoders' finest level), a loss at
      fewer input channels or smaller widths, where it is not used.

    With a contiguous weight on CPU only the single-sample slabs apply (in the
    contiguous layout); on other devices this is ``nn.Conv3d``.
    """

    #: output channels oneDNN computes in one AVX-512 vector (fp32)
    VECTOR = 16
    #: smallest output width at which packing two voxels as channels pays
    MIN_PACK_WIDTH = 32

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode == "zeros" or input.device.type != "cpu":
            return super()._conv_forward(input, weight, bias)
        channels_last = weight.is_contiguous(memory_format=torch.channels_last_3d)
        if not channels_last and input.shape[0] != 1:
            return super()._conv_forward(input, weight, bias)
        padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        slabs = self._depth_halves(padded) if padded.shape[0] == 1 else None
        x = padded if slabs is None else slabs
        if not channels_last:  # only a single sample in slabs
            x = x.contiguous()
            return self._join_halves(
                F.conv3d(x, weight, bias, self.stride, 0, self.dilation, self.groups), slabs
            )
        x = x.contiguous(memory_format=torch.channels_last_3d)
        if not self._packs_width(x.shape[4]):
            out = F.conv3d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
            return self._join_halves(out, slabs)
        # Output channel j * C + c of the packed convolution is channel c at width
        # 2 * i + j: the kernel's taps shifted by j along the width.
        packed = torch.cat((F.pad(weight, (0, 1)), F.pad(weight, (1, 0))))
        out = F.conv3d(
            x,
            packed.contiguous(memory_format=torch.channels_last_3d),
            None if bias is None else bias.repeat(2),
            (self.stride[0], self.stride[1], 2),
            0,
            self.dilation,
        )
        # (N, 2C, D, H, W/2) channels-last is (N, D, H, W/2, 2, C) in memory, that is
        # (N, C, D, H, W) channels-last: a view
        n, _, d, h, w = out.shape
        out = out.permute(0, 2, 3, 4, 1).reshape(n, d, h, 2 * w, self.out_channels)
        return self._join_halves(out.permute(0, 4, 1, 2, 3), slabs)

    @staticmethod
    def _join_halves(out: Tensor, slabs: Tensor | None) -> Tensor:
        """The output of :meth:`_depth_halves`' slabs ``(2, C, D/2, H, W)`` as the single
        sample's ``(1, C, D, H, W)`` (a view when ``out`` is channels-last); ``out`` itself
        when there were no slabs."""
        if slabs is None:
            return out
        return out.transpose(0, 1).reshape(1, out.shape[1], -1, *out.shape[3:])

    def _packs_width(self, padded_width: int) -> bool:
        """Whether to compute two neighbouring output voxels along the width as channels."""
        if (
            self.groups != 1
            or self.stride[2] != 1
            or self.dilation[2] != 1
            or self.in_channels < 2 * self.out_channels
            or 2 * self.out_channels > self.VECTOR
        ):
            return False
        width = padded_width - self.kernel_size[2] + 1
        return width >= self.MIN_PACK_WIDTH and width % 2 == 0

    def _depth_halves(self, padded: Tensor) -> Tensor | None:
        """The padded single sample ``(1, C, D, H, W)`` as ``(2, C, D', H, W)``: the input
        slabs of the first and the second half of the output depth; ``None`` when the
        output depth is odd."""
        extent = self.dilation[0] * (self.kernel_size[0] - 1) + 1
        stride = self.stride[0]
        depth = (padded.shape[2] - extent) // stride + 1
        if depth < 2 or depth % 2:
            return None
        half = depth // 2
        size = (half - 1) * stride + extent
        # (cheaper, both ways, than the overlapping windows of ``unfold``)
        return torch.cat((padded.narrow(2, 0, size), padded.narrow(2, half * stride, size)))


class ConvNormAct(nn.Sequential):
    """Conv3d (reflect padding, bias) -> instance norm -> LeakyReLU(0.2).

    Instance normalisation (no affine parameters, as published) is computed
    as ``GroupNorm`` with one group per channel: identical result, but about
    ten times faster than ``InstanceNorm3d`` on CPU.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        padding = kernel_size // 2
        conv: nn.Conv3d
        if kernel_size == 1 and stride == 1:
            conv = PointwiseConv3d(in_channels, out_channels)
        else:
            conv = PaddedConv3d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                # A reflect mode with zero padding still copies the input.
                padding_mode="reflect" if padding else "zeros",
                bias=True,
            )
        super().__init__(
            conv,
            InstanceNorm(out_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )


def bottleneck(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 -> 3x3 -> 1x1 ``ConvNormAct`` chain used by the fusion modules."""
    return nn.Sequential(
        ConvNormAct(in_channels, mid_channels, kernel_size=1),
        ConvNormAct(mid_channels, mid_channels, kernel_size=3),
        ConvNormAct(mid_channels, out_channels, kernel_size=1),
    )


def upsample2(x: Tensor) -> Tensor:
    """Trilinear x2 upsampling of ``(B, C, X, Y, Z)`` to ``(B, C, 2X, 2Y, 2Z)``.

    On CPU the input is made channels-last first: PyTorch's channels-last
    trilinear kernels (forward and backward) are 3-4x faster than the
    contiguous ones at these few channels, the copy of the coarse input costs
    an eighth of the output, and the channels-last result feeds the next
    convolution (channels-last on CPU) without the copy it would otherwise
    make. Same values up to fp32 round-off (the kernels sum in another order).
    """
    if x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)


def mask_features(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the features of absent modalities.

    ``torch.where`` (not multiplication) so that the result does not depend
    on the absent features at all, even if they are non-finite.

    Parameters
    ----------
    x : Tensor
        Stacked features ``(B, M, C, X, Y, Z)``.
    mask : Tensor
        Bool ``(B, M)``, ``True`` = present.
    """
    return torch.where(mask[:, :, None, None, None, None], x, 0.0)


class EncoderLevel(nn.Module):
    """Entry conv (stride 1 or 2) followed by a residual pair of convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.entry = ConvNormAct(in_channels, out_channels, stride=stride)
        self.residual = nn.Sequential(
            ConvNormAct(out_channels, out_channels), ConvNormAct(out_channels, out_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.entry(x)
        return x + self.residual(x)


class ModalityEncoder(nn.Module):
    """Four-level encoder of one modality: ``(B, 1, X, Y, Z)`` -> 4 feature maps.

    Level 0 keeps full resolution; levels 1-3 downsample by a stride-2 conv.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        ins = (1, *channels[:-1])
        self.levels = nn.ModuleList(
            EncoderLevel(c_in, c_out, stride=1 if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip(ins, channels, strict=True))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class DecoderStep(nn.Module):
    """Upsample the coarser map, merge it with a skip map of the finer level.

    ``up``: ``(B, 2C, X, Y, Z)`` -> conv -> ``(B, C, 2X, 2Y, 2Z)``; ``merge``:
    ``cat(skip, up)`` ``(B, 2C, ...)`` -> 3x3 conv -> 1x1 conv -> ``(B, C, ...)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up = ConvNormAct(2 * channels, channels)
        self.merge = nn.Sequential(
            ConvNormAct(2 * channels, channels), ConvNormAct(channels, channels, kernel_size=1)
        )

    def upsample(self, coarse: Tensor) -> Tensor:
        """Coarse decoder map ``(B, 2C, ...)`` -> ``(B, C, 2X, 2Y, 2Z)``."""
        return self.up(upsample2(coarse))

    def forward(self, skip: Tensor, upsampled: Tensor) -> Tensor:
        return self.merge(torch.cat((skip, upsampled), dim=1))


class AuxDecoder(nn.Module):
    """U-Net decoder shared by all modalities (RFNet's auxiliary regulariser).

    Takes one modality's encoder pyramid (finest first) and returns logits
    ``(B, K, X, Y, Z)``; modalities are folded into the batch by the caller.
    """

    def __init__(self, channels: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        # steps[i] merges into level i (0 = finest).
        self.steps = nn.ModuleList(DecoderStep(c) for c in channels[:-1])
        self.head = PointwiseConv3d(channels[0], num_classes)

    def forward(self, levels: list[Tensor]) -> Tensor:
        x = levels[-1]
        for i in reversed(range(len(self.steps))):
            step = cast(DecoderStep, self.steps[i])
            x = step(levels[i], step.upsample(x))
        return self.head(x)


class RegionMapGenerator(nn.Module):
    """Probabilistic region map generator (RFNet's PRM).

    Embeds the concatenated masked modality features ``(B, M*C, ...)`` and,
    except at the coarsest level, concatenates the upsampled decoder map
    ``(B, C, ...)``; predicts softmax probabilities ``(B, K, ...)`` over the
    ``K`` regions (= classes).
    """

    def __init__(
        self, channels: int, num_modalities: int, num_classes: int, hidden: int, coarsest: bool
    ) -> None:
        super().__init__()
        self.coarsest = coarsest
        self.embed = bottleneck(num_modalities * channels, max(channels // 4, 1), channels)
        head_in = channels if coarsest else 2 * channels
        self.head = nn.Sequential(
            ConvNormAct(head_in, hidden, kernel_size=1), PointwiseConv3d(hidden, num_classes)
        )

    def forward(self, masked: Tensor, decoder: Tensor | None) -> Tensor:
        y = self.embed(masked.flatten(1, 2))
        if not self.coarsest:
            if decoder is None:
                raise ValueError("RegionMapGenerator below the coarsest level needs a decoder map")
            y = torch.cat((decoder, y), dim=1)
        return torch.softmax(self.head(y), dim=1)


class RegionAwareFusion(nn.Module):
    """Region-aware fusion module (RFNet's RFM).

    For every region ``r`` the masked modality features are weighted by the
    region map, a small MLP turns their region-averaged statistics into one
    sigmoid weight per modality, and the weighted sum over modalities gives
    the region feature. Region features are fused by a bottleneck and
    concatenated with a shortcut over all masked modality features.

    Equivalent to the published module, but computes the region-weighted
    averages with one einsum and applies the region map after the modality
    sum, so no ``(B, M, K, C, X, Y, Z)`` tensor is built.
    """

    def __init__(self, channels: int, num_modalities: int, num_classes: int) -> None:
        super().__init__()
        self.weighting = nn.ModuleList(
            nn.Sequential(
                nn.Linear(num_modalities * channels + 1, 128),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                nn.Linear(128, num_modalities),
            )
            for _ in range(num_classes)
        )
        self.region_fusion = bottleneck(num_classes * channels, channels, channels // 2)
        self.shortcut = bottleneck(num_modalities * channels, channels, channels - channels // 2)

    def modality_weights(self, masked: Tensor, region_maps: Tensor) -> Tensor:
        """Sigmoid weights ``(B, K, M)`` of each modality inside each region.

        Parameters
        ----------
        masked : Tensor
            Masked features ``(B, M, C, X, Y, Z)``.
        region_maps : Tensor
            Region probabilities ``(B, K, X, Y, Z)``.
        """
        n_vox = region_maps[0, 0].numel()
        occupancy = region_maps.flatten(2).mean(dim=2) + 1e-7  # (B, K)
        weighted_sum = torch.einsum("bmcv,bkv->bkmc", masked.flatten(3), region_maps.flatten(2))
        region_mean = weighted_sum / n_vox / occupancy[:, :, None, None]
        stats = torch.cat((region_mean.flatten(2), occupancy[:, :, None]), dim=2)
        logits = torch.stack([mlp(stats[:, k]) for k, mlp in enumerate(self.weighting)], dim=1)
        return torch.sigmoid(logits)

    def forward(self, masked: Tensor, region_maps: Tensor) -> Tensor:
        """Fused features ``(B, C, X, Y, Z)`` from ``masked`` ``(B, M, C, ...)``."""
        weights = self.modality_weights(masked, region_maps)  # (B, K, M)
        mixed = torch.einsum("bmcxyz,bkm->bkcxyz", masked, weights.to(masked.dtype))
        regions = mixed * region_maps[:, :, None].to(mixed.dtype)
        fused = self.region_fusion(regions.flatten(1, 2))
        return torch.cat((fused, self.shortcut(masked.flatten(1, 2))), dim=1)
