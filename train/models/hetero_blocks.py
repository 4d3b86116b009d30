"""Pieces shared by the hetero-modal backbones U-HVED and RobustSeg.

* Gaussian latents: the product of Gaussian experts over the present
  modalities (with a standard-normal prior expert), the KL divergence to the
  standard normal, reparameterised sampling whose noise comes from an explicit
  generator.
* Reconstruction errors of the per-modality image decoders, zero where a
  modality is absent.
* Normalisation layers and weight initialisation.

Shapes: stacked per-modality tensors are ``(B, M, C, X, Y, Z)`` with ``M``
modalities in MODALITIES order (FLAIR, T1, T1ce, T2); modality masks are
bool ``(B, M)``, ``True`` = present.  All statistics are computed in at least
float32 (half-precision inputs, e.g. under bf16 autocast, are widened).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PRECISION_EPS",
    "NoiseSource",
    "init_weights",
    "instance_norm",
    "kl_to_standard_normal",
    "layer_norm",
    "product_of_gaussians",
    "reconstruction_error",
    "upsample_nearest2",
]

PRECISION_EPS = 1e-7
"""Added to variances before inverting them and to the fused variance before its log (U-HVED's value)."""


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a half-precision type, else unchanged (float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """``(B, M)`` bool -> broadcastable to ``like`` ``(B, M, ...)``."""
    return mask.to(like.device).reshape(*mask.shape, *([1] * (like.ndim - 2)))


def product_of_gaussians(mu: Tensor, logvar: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Fuse per-modality diagonal Gaussians of the present modalities and N(0, I).

    The product of Gaussian densities is Gaussian with precision
    ``T = 1 + sum_m 1 / (var_m + eps)`` (the 1 is the prior's) and mean
    ``sum_m (mu_m / (var_m + eps)) / T``; the returned log-variance is
    ``log(1 / T + eps)``, as U-HVED computes it.  Absent modalities are
    excluded with ``torch.where``, so their parameters cannot influence the
    result (not even when they are non-finite).

    Parameters
    ----------
    mu, logvar : Tensor
        Per-modality means and log-variances ``(B, M, C, X, Y, Z)``.
    mask : Tensor
        Bool ``(B, M)``.

    Returns
    -------
    (Tensor, Tensor)
        Fused mean and log-variance ``(B, C, X, Y, Z)``, float32 (or float64).
    """
    present = _expand(mask, mu)
    precision = torch.where(present, 1.0 / (torch.exp(_wide(logvar)) + PRECISION_EPS), 0.0)
    total = 1.0 + precision.sum(dim=1)
    mean = (precision * torch.where(present, _wide(mu), 0.0)).sum(dim=1) / total
    return mean, torch.log(1.0 / total + PRECISION_EPS)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise ``KL(N(mu, exp(logvar)) || N(0, 1))``, at least float32, shape of ``mu``."""
    mu, logvar = _wide(mu), _wide(logvar)
    return 0.5 * (mu.square() + torch.exp(logvar) - 1.0 - logvar)


class NoiseSource:
    """Standard-normal noise for reparameterised sampling, reproducible from one generator.

    One integer drawn from ``generator`` (the training loop's CPU generator,
    whose state the checkpoints keep) seeds a generator on the device of the
    sampled tensors, so the noise is drawn where it is used and a resumed run
    draws what an uninterrupted one would.  Without a generator the global
    torch RNG is used (seed it with ``torch.manual_seed``).

    Parameters
    ----------
    generator : torch.Generator or None
        CPU generator, or ``None``.
    """

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._seed = (
            None
            if generator is None
            else int(torch.randint(0, 2**62, (1,), generator=generator).item())
        )

    def normal_like(self, x: Tensor) -> Tensor:
        """Noise of ``x``'s shape and device, float32 (float64 for a float64 ``x``)."""
        dtype = _wide(x).dtype
        if self._seed is None:
            return torch.randn(x.shape, device=x.device, dtype=dtype)
        gen = self._device_generators.get(x.device)
        if gen is None:
            gen = torch.Generator(device=x.device).manual_seed(self._seed)
            self._device_generators[x.device] = gen
        return torch.randn(x.shape, generator=gen, device=x.device, dtype=dtype)

    def sample(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """``mu + exp(logvar / 2) * eps`` in at least float32."""
        return _wide(mu) + torch.exp(0.5 * _wide(logvar)) * self.normal_like(mu)


def reconstruction_error(pred: Tensor, target: Tensor, mask: Tensor, norm: str) -> Tensor:
    """Mean reconstruction error per sample and modality, 0 where the modality is absent.

    Parameters
    ----------
    pred, target : Tensor
        Reconstructed and input images ``(B, M, X, Y, Z)`` (any float dtype).
    mask : Tensor
        Bool ``(B, M)``: only present modalities have an image to compare with
        (the loader zeroes the dropped ones).
    norm : {"l1", "l2"}
        Mean absolute or mean squared error over the voxels.

    Returns
    -------
    Tensor
        ``(B, M)`` float32 (float64 for float64 inputs).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"reconstruction {tuple(pred.shape)} and image {tuple(target.shape)} shapes differ"
        )
    diff = _wide(pred) - _wide(target)
    if norm == "l1":
        err = diff.abs().flatten(2).mean(dim=2)
    elif norm == "l2":
        err = diff.square().flatten(2).mean(dim=2)
    else:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return torch.where(mask.to(err.device), err, 0.0)


def instance_norm(channels: int, affine: bool) -> nn.GroupNorm:
    """Instance normalisation of ``(B, C, X, Y, Z)`` as ``GroupNorm`` with one group per
    channel: identical result, about ten times faster than ``InstanceNorm3d`` on CPU."""
    return nn.GroupNorm(channels, channels, affine=affine)


def layer_norm(channels: int) -> nn.GroupNorm:
    """Layer normalisation over ``(C, X, Y, Z)`` per sample with a per-channel scale and
    shift (TensorFlow's ``layers.layer_norm`` on channels-last tensors)."""
    return nn.GroupNorm(1, channels, affine=True)


def upsample_nearest2(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 upsampling of ``(B, C, X, Y, Z)``."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def init_weights(module: nn.Module, slope: float) -> None:
    """Kaiming-normal weights for the LeakyReLU ``slope`` (0 = ReLU), zero biases.

    Apply with ``model.apply(functools.partial(init_weights, slope=...))``;
    draws from the global torch generator (seed it with ``torch.manual_seed``).
    """
    if isinstance(module, nn.Conv3d | nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=slope, nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
