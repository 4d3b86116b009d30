"""Rendering of a phantom case from its parameters (deterministic).

:func:`render_phantom` turns a :class:`~aem_synth.phantom.anatomy.PhantomParams`
into arrays with no randomness except the voxel noise, drawn from
``params.noise_seed``.  Arrays use the canonical RAS voxel grid ``(x, y, z)``
of 1 mm voxels; images are float32, tissue codes and labels uint8, the brain
mask bool.  Healthy anatomy is a function of the plane-frame coordinates
``(|q0|, q1, q2)`` and hence mirror-symmetric; bias field and noise are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from aem_synth.phantom.anatomy import (
    INTENSITY,
    TISSUE_CODE,
    TISSUE_LABEL,
    PhantomArrays,
    PhantomParams,
    brain_rho2,
    plane_frame,
)
from aem_synth.phantom.hard import hard_intensity_table, vessel_mask
from aem_synth.types import MODALITIES, BoolArray, FloatArray, LabelArray

__all__ = ["render_phantom"]


def render_phantom(params: PhantomParams) -> PhantomArrays:
    """Render the arrays of one case from its parameters (deterministic)."""
    shape = params.shape
    centre, rot = plane_frame(params.plane, shape)
    box = _brain_box(params, centre, rot)
    inside, q = _brain_in_box(params, centre, rot, box)
    mask = np.zeros(shape, dtype=bool)
    mask[box] = inside
    vox = np.stack([ix.astype(np.float32) for ix in np.nonzero(inside)])
    vox += np.array([s.start for s in box], dtype=np.float32)[:, None]
    tissue = _healthy_tissue(_mass_effect(q, params), params)
    texture = _healthy_texture(q, params)
    for lesion in [params.tumour, *params.tumour.get("satellites", [])]:
        _add_tumour(params, lesion, vox, q, tissue, texture)
    full_tissue = np.zeros(shape, dtype=np.uint8)
    full_tissue[mask] = tissue
    images = {}
    noise_rng = np.random.default_rng(params.noise_seed)
    vessels = None
    if params.hard is not None:  # enhancing vessels in healthy tissue, T1ce only
        vessels = vessel_mask(*_normalised(q, params), params.hard)
        vessels &= tissue < TISSUE_CODE["edema"]
    for m, name in enumerate(MODALITIES):
        values = _intensities(params, m, tissue, texture, vox, noise_rng, vessels)
        image = np.zeros(shape, dtype=np.float32)
        image[mask] = values
        images[name] = image
    return PhantomArrays(
        images=images, label=TISSUE_LABEL[full_tissue], tissue=full_tissue, brain_mask=mask
    )


def _brain_box(
    params: PhantomParams, centre: npt.NDArray[np.float64], rot: npt.NDArray[np.float64]
) -> tuple[slice, slice, slice]:
    """Axis-aligned voxel box that contains the (rotated) brain, clipped to the grid."""
    semi = np.asarray(params.semi_axes) * np.array([1.0 + params.egg * 1.2, 1.0, 1.0])
    brain_centre = centre + rot @ np.array([0.0, *params.brain_shift])
    half = np.sqrt(((rot * semi[None, :]) ** 2).sum(axis=1)) + 2.0
    lo = np.clip(np.floor(brain_centre - half), 0, None).astype(int)
    hi = np.minimum(np.ceil(brain_centre + half).astype(int) + 1, params.shape)
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _brain_in_box(
    params: PhantomParams,
    centre: npt.NDArray[np.float64],
    rot: npt.NDArray[np.float64],
    box: tuple[slice, slice, slice],
) -> tuple[BoolArray, FloatArray]:
    """Brain mask over ``box`` and plane-frame coordinates (3, N) of its voxels (mm)."""
    axes = [
        (np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)).reshape(
            [-1 if i == k else 1 for k in range(3)]
        )
        for i, (s, c) in enumerate(zip(box, centre, strict=True))
    ]
    q_box = [
        axes[0] * float(rot[0, j]) + axes[1] * float(rot[1, j]) + axes[2] * float(rot[2, j])
        for j in range(3)
    ]
    rho2 = brain_rho2(q_box, params.semi_axes, params.brain_shift, params.egg, params.flat)
    inside = rho2 < 1.0
    return inside, np.stack([qj[inside] for qj in q_box])


def _normalised(q: FloatArray, params: PhantomParams) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Symmetric normalised coordinates ``(|q0|/a, (q1-y0)/b, (q2-z0)/c)``."""
    a, b, c = params.semi_axes
    y0, z0 = params.brain_shift
    return np.abs(q[0]) / a, (q[1] - y0) / b, (q[2] - z0) / c


def _mass_effect(q: FloatArray, params: PhantomParams) -> FloatArray:
    """Plane-frame coordinates at which healthy tissue is looked up (hard variant).

    Tissue is pushed radially away from the main tumour, by up to
    ``mass_effect`` x its radius, fading over a few radii: ventricles are
    compressed and the midline shifts next to large tumours, so the two
    hemispheres are no longer mirror images.  The simple variant returns ``q``.
    """
    if params.hard is None:
        return q
    t = params.tumour
    centre = np.asarray(t["centre_plane_mm"], dtype=np.float32)[:, None]
    radius = float(np.max(t["radii_mm"])) * float(t["edema_ratio"])
    d = q - centre
    dist = np.sqrt((d**2).sum(axis=0)) + np.float32(1e-3)
    push = params.hard["mass_effect"] * radius * np.exp(-((dist / (2.5 * radius)) ** 2))
    return (q - d * (push / dist)[None, :]).astype(np.float32)


def _healthy_tissue(q: FloatArray, params: PhantomParams) -> LabelArray:
    """Tissue codes of the brain voxels from their plane-frame coordinates (symmetric)."""
    u, v, w = _normalised(q, params)
    rho2 = brain_rho2(q, params.semi_axes, params.brain_shift, params.egg, params.flat)
    tissue = np.full(u.shape, TISSUE_CODE["white_matter"], dtype=np.uint8)
    deep = ((u - 0.2) / 0.11) ** 2 + ((v + 0.08) / 0.16) ** 2 + ((w + 0.02) / 0.13) ** 2 < 1.0
    tissue[deep] = TISSUE_CODE["deep_grey"]
    p0, p1, p2 = params.fold_phase
    hard = params.hard or {}
    f = float(hard.get("fold_frequency", 1.0))
    depth = float(hard.get("cortex_depth", 1.0))
    # Gyral folding: the grey-matter depth varies with a symmetric 3-D pattern.
    fold = 0.5 + 0.5 * np.sin(28.6 * f * u + p0) * np.sin(31.4 * f * v + p1) * np.sin(
        26.2 * f * w + p2
    )
    tissue[np.sqrt(rho2) > 1.0 - depth * (0.05 + 0.08 * fold)] = TISSUE_CODE["grey_matter"]
    s = params.ventricle_scale
    w_curve = w - (0.16 - 0.25 * (v - 0.02) ** 2)
    lateral = ((u - 0.14) / (0.085 * s)) ** 2 + ((v - 0.02) / (0.42 * s**0.5)) ** 2
    lateral += (w_curve / (0.11 * s)) ** 2
    half_gap = max(0.5, 0.012 * params.semi_axes[0])
    midline = np.abs(q[0]) < half_gap
    third = midline & (np.abs(v + 0.05) < 0.15) & (np.abs(w + 0.02) < 0.12)
    fissure = midline & (w > 0.3)
    tissue[(lateral < 1.0) | third | fissure] = TISSUE_CODE["csf"]
    return tissue


def _healthy_texture(q: FloatArray, params: PhantomParams) -> FloatArray:
    """Smooth, mirror-symmetric multiplicative texture of healthy tissue (about +-3 %)."""
    u, v, w = _normalised(q, params)
    p0, p1, p2 = params.texture_phase
    pattern = np.sin(21.0 * u + p0) * np.cos(23.0 * v + p1) * np.sin(19.0 * w + p2)
    if params.hard is None:
        return (1.0 + 0.03 * pattern).astype(np.float32)
    fine = np.sin(53.0 * u + p2) * np.cos(47.0 * v + p0) * np.sin(59.0 * w + p1)
    amp = params.hard["texture_amplitude"]
    return (1.0 + amp * (0.6 * pattern + 0.4 * fine)).astype(np.float32)


def _add_tumour(
    params: PhantomParams,
    t: dict[str, Any],
    vox: FloatArray,
    q: FloatArray,
    tissue: LabelArray,
    texture: FloatArray,
) -> None:
    """Paint ED, ET rim, necrotic and non-enhancing core of lesion ``t`` into ``tissue``.

    The lesion is a lobulated ellipsoid; it never leaves its hemisphere and
    oedema does not enter CSF.  ``texture`` gets the tumour heterogeneity.  A
    hard case without enhancement paints the rim as non-enhancing tumour.
    """
    radii = np.asarray(t["radii_mm"], dtype=np.float32)
    amp = np.asarray(t["lobe_amp"], dtype=np.float32)
    ed_ratio = float(t["edema_ratio"])
    reach = float(radii.max()) * ed_ratio * (1.0 + float(amp[1].sum())) + 1.0
    d = vox - np.asarray(t["centre_voxel"], dtype=np.float32)[:, None]
    sel = np.flatnonzero((d**2).sum(axis=0) < reach**2)
    local = np.asarray(t["rotation"], dtype=np.float32).T @ d[:, sel]
    dist = np.sqrt(((local / radii[:, None]) ** 2).sum(axis=0))
    direction = local / np.maximum(np.sqrt((local**2).sum(axis=0)), 1e-6)
    k = np.asarray(t["lobe_k"], dtype=np.float32)
    phase = np.asarray(t["lobe_phase"], dtype=np.float32)
    lobes = [
        1.0 + (amp[i][:, None] * np.cos(k[i] @ direction + phase[i][:, None])).sum(0)
        for i in (0, 1)
    ]
    side = 1.0 if t["side"] == "right" else -1.0
    hemisphere = side * q[0, sel] > 0.5
    core = dist / lobes[0]
    sub = tissue[sel]
    sub[(dist / lobes[1] < ed_ratio) & hemisphere & (sub != TISSUE_CODE["csf"])] = TISSUE_CODE[
        "edema"
    ]
    no_et = bool((params.hard or {}).get("no_enhancement", False))
    sub[(core < 1.0) & hemisphere] = TISSUE_CODE["non_enhancing" if no_et else "enhancing"]
    necrotic = (core < float(t["necrotic_fraction"])) & hemisphere
    sub[necrotic] = TISSUE_CODE["necrosis"]
    net = necrotic & (np.asarray(t["net_normal"], dtype=np.float32) @ local > 0)
    sub[net] = TISSUE_CODE["non_enhancing"]
    tissue[sel] = sub
    tumour_k = np.asarray(t["texture_k"], dtype=np.float32)
    hetero = 1.0 + 0.1 * np.cos(tumour_k @ local + float(t["texture_phase"]))
    in_tumour = sub >= TISSUE_CODE["edema"]
    texture[sel[in_tumour]] = hetero[in_tumour]


def _intensities(
    params: PhantomParams,
    m: int,
    tissue: LabelArray,
    texture: FloatArray,
    vox: FloatArray,
    rng: np.random.Generator,
    vessels: npt.NDArray[np.bool_] | None = None,
) -> FloatArray:
    """Integer-valued intensities (>= 1) of modality ``m`` at the brain voxels.

    Tissue contrast x case scale x texture x smooth bias field, with Rician
    noise (magnitude of a complex Gaussian signal).
    """
    jitter = np.asarray(params.jitter, dtype=np.float32)[:, m]
    base = INTENSITY if params.hard is None else hard_intensity_table(INTENSITY, params.hard)
    table = base[:, m] * jitter * np.float32(params.scale[m])
    signal = table[tissue] * texture * _bias_field(params.bias[m], vox, params.shape)
    if vessels is not None and params.hard is not None and MODALITIES[m] == "t1ce":
        signal[vessels] *= np.float32(params.hard["vessel_strength"])
    sigma = np.float32(params.noise * INTENSITY[TISSUE_CODE["white_matter"], m] * params.scale[m])
    noise = rng.standard_normal((2, signal.size), dtype=np.float32) * sigma
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    return np.clip(np.rint(magnitude), 1.0, 32767.0).astype(np.float32)


def _bias_field(coeffs: list[float], vox: FloatArray, shape: tuple[int, int, int]) -> FloatArray:
    """``exp`` of a quadratic polynomial in grid coordinates scaled to [-1, 1]."""
    half = (np.asarray(shape, dtype=np.float32) - 1.0) / 2.0
    x, y, z = (vox - half[:, None]) / half[:, None]
    terms = (x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, x * z, y * z)
    log_bias = sum((float(c) * term for c, term in zip(coeffs, terms, strict=True)), np.float32(0))
    return np.exp(log_bias).astype(np.float32)
