"""Batch augmentation on the tensors' device: flips, small 3-D rotations, intensity scale/shift.

Tensors use the layout of :mod:`train.data.crops`: image ``(B, 4, X, Y, Z)`` float,
label ``(B, X, Y, Z)`` int64 in 0..3, modality mask ``(B, 4)`` bool, spatial
axes in canonical RAS order.

Parameters are drawn by :meth:`BatchAugment.sample` from an explicit
``torch.Generator`` and applied by the pure :meth:`BatchAugment.apply`, so a
batch can be replayed exactly from its :class:`AugmentParams`.

Rules that keep labels and backgrounds valid
--------------------------------------------
* Flips act on image and label alike.
* Rotations resample the image bilinearly and the label with NEAREST
  neighbour; both are padded with zeros, so voxels rotated in from outside the
  crop are background (label 0, intensity 0) and never an invalid class.
* Intensity: ``x * scale + shift`` per sample and channel, only for present
  modalities and only inside the brain, defined as the voxels where any
  channel is non-zero after the spatial transform.  The background (exactly
  0 after z-scoring) and absent (all-zero) modalities therefore stay 0; the
  shift is in z-score units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentParams", "BatchAugment", "rotate", "rotation_matrices"]


@dataclass(frozen=True)
class AugmentParams:
    """Drawn parameters of one batch (all tensors on the generator's device).

    Attributes
    ----------
    flips : Tensor, bool, (B, 3)
        Flip spatial axis x, y, z of sample b.
    angles : Tensor, float32, (B, 3)
        Rotation angles in radians about the x, y, z axes (0 when not rotated).
    rotate : Tensor, bool, (B,)
        Whether sample b is rotated at all.
    scale, shift : Tensor, float32, (B, 4)
        Intensity factor and offset per channel; 1 and 0 for absent modalities.
    """

    flips: torch.Tensor
    angles: torch.Tensor
    rotate: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


def _check_batch(image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None) -> None:
    if image.ndim != 5 or image.shape[1] != 4:
        raise ValueError(f"image must be (B, 4, X, Y, Z), got shape {tuple(image.shape)}")
    if label.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(
            f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}"
        )
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be (B, 4) = {tuple(image.shape[:2])}, got {tuple(mask.shape)}")


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``R = Rz @ Ry @ Rx`` acting on (x, y, z) voxel offsets.

    Parameters
    ----------
    angles : Tensor, float, (B, 3)
        Angles in radians about the x, y and z axes.

    Returns
    -------
    Tensor, float, (B, 3, 3)
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    cx, cy, cz = cos.unbind(1)
    sx, sy, sz = sin.unbind(1)
    rx = mat([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    ry = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    rz = mat([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    return rz @ ry @ rx


def _theta(angles: torch.Tensor, spatial: tuple[int, int, int]) -> torch.Tensor:
    """``affine_grid`` matrices rotating about the crop centre in voxel units.

    ``affine_grid`` works in normalised coordinates ordered (W, H, D), i.e.
    (z, y, x) for our (X, Y, Z) tensors, and with ``align_corners=True`` a
    normalised unit is ``(n - 1) / 2`` voxels along each axis.  Conjugating
    by that scaling keeps the rotation rigid in voxel space for non-cubic
    crops.
    """
    rot = rotation_matrices(angles)
    half = torch.tensor([(n - 1) / 2 for n in spatial], dtype=rot.dtype, device=rot.device)
    half = half.clamp(min=0.5)
    voxel = torch.diag_embed(1.0 / half) @ rot @ torch.diag_embed(half).expand_as(rot)
    flip = torch.arange(2, -1, -1, device=rot.device)
    grid_order = voxel[:, flip][:, :, flip]
    zeros = torch.zeros(rot.shape[0], 3, 1, dtype=rot.dtype, device=rot.device)
    return torch.cat([grid_order, zeros], dim=2)


def rotate(
    image: torch.Tensor, label: torch.Tensor, angles: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample about its crop centre.

    Parameters
    ----------
    image : Tensor, float, (B, C, X, Y, Z)
        Resampled (tri)linearly, zeros outside.
    label : Tensor, int64, (B, X, Y, Z)
        Resampled with nearest neighbour, 0 (background) outside.
    angles : Tensor, float, (B, 3)
        Radians about x, y, z; the rotation maps output voxel offsets from the
        centre to input offsets (``in = R @ out``).

    Returns
    -------
    (image, label) with the input shapes and dtypes.
    """
    spatial = (image.shape[2], image.shape[3], image.shape[4])
    theta = _theta(angles.to(device=image.device, dtype=torch.float32), spatial)
    grid = F.affine_grid(theta, [image.shape[0], 1, *spatial], align_corners=True)
    img = F.grid_sample(
        image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    ).to(image.dtype)
    lab = F.grid_sample(
        label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True
    )
    return img, lab[:, 0].round().to(label.dtype)


@dataclass(frozen=True)
class BatchAugment:
    """Random flips, small rotations and intensity scale/shift for a batch.

    Parameters
    ----------
    flip : bool
        Flip each spatial axis independently with probability 1/2.
    rotate_deg : float
        Maximum absolute rotation angle in degrees about each axis (uniform).
    scale : float
        Intensity factor drawn uniformly in ``[1 - scale, 1 + scale]``.
    shift : float
        Intensity offset drawn uniformly in ``[-shift, shift]`` (z-score units).
    p_rotate : float
        Probability that a sample is rotated.
    """

    flip: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.1
    p_rotate: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_rotate <= 1.0:
            raise ValueError(f"p_rotate must be in [0, 1], got {self.p_rotate}")
        for name in ("rotate_deg", "scale", "shift"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.scale >= 1.0:
            raise ValueError(f"scale must be < 1 so intensities keep their sign, got {self.scale}")

    def sample(self, mask: torch.Tensor, generator: torch.Generator) -> AugmentParams:
        """Draw the parameters of one batch.

        Parameters
        ----------
        mask : Tensor, bool, (B, 4)
            Present modalities; absent ones get scale 1 and shift 0.
        generator : torch.Generator
            Source of randomness; parameters live on its device.
        """
        if mask.ndim != 2 or mask.shape[1] != 4:
            raise ValueError(f"mask must be (B, 4), got shape {tuple(mask.shape)}")
        b, dev = mask.shape[0], generator.device

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=dev)

        flips = (uniform(b, 3) < 0.5) & self.flip
        rot = uniform(b) < self.p_rotate
        angles = (uniform(b, 3) * 2 - 1) * math.radians(self.rotate_deg) * rot[:, None]
        on = mask.to(dev).bool()
        scale = torch.where(on, 1 + (uniform(b, 4) * 2 - 1) * self.scale, 1.0)
        shift = torch.where(on, (uniform(b, 4) * 2 - 1) * self.shift, 0.0)
        return AugmentParams(flips, angles, rot & (self.rotate_deg > 0), scale, shift)

    def apply(
        self, params: AugmentParams, image: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply drawn parameters; a pure function of its inputs.

        Parameters
        ----------
        params : AugmentParams
        image : Tensor, float, (B, 4, X, Y, Z)
        label : Tensor, int64, (B, X, Y, Z)

        Returns
        -------
        (image, label): new tensors on the input device, same shapes and dtypes.
        """
        _check_batch(image, label, None)
        if params.flips.shape[0] != image.shape[0]:
            raise ValueError(
                f"params were drawn for batch {params.flips.shape[0]}, image has {image.shape[0]}"
            )
        dev = image.device
        flips = params.flips.to(dev)
        for axis in range(3):
            f = flips[:, axis]
            if bool(f.any()):
                image = torch.where(f[:, None, None, None, None], image.flip(2 + axis), image)
                label = torch.where(f[:, None, None, None], label.flip(1 + axis), label)
        idx = torch.nonzero(params.rotate.to(dev)).flatten()
        if idx.numel():
            image, label = image.clone(), label.clone()
            image[idx], label[idx] = rotate(image[idx], label[idx], params.angles.to(dev)[idx])
        brain = (image != 0).any(dim=1, keepdim=True)
        scale = params.scale.to(device=dev, dtype=image.dtype)[:, :, None, None, None]
        shift = params.shift.to(device=dev, dtype=image.dtype)[:, :, None, None, None]
        return torch.where(brain, image * scale + shift, image), label

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw parameters with ``generator`` and apply them (see :meth:`apply`)."""
        _check_batch(image, label, mask)
        return self.apply(self.sample(mask, generator), image, label)
