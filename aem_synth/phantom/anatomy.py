"""Procedural brain anatomy of the phantom: tissues, parameters and their sampling.

Sampling is separate from rendering (STYLE 2): :func:`sample_phantom_params`
draws every random choice of a case from one ``np.random.Generator`` into a
frozen :class:`PhantomParams`; :func:`aem_synth.phantom.render.render_phantom` turns those parameters
into arrays without further randomness except the voxel noise, which is drawn
from ``params.noise_seed``.  The same parameters therefore always give the
same bytes.

Geometry
--------
All arrays use the canonical RAS voxel grid ``(x, y, z)`` of 1 mm voxels
(axis 0 left -> right).  The mid-sagittal plane passes through the voxel
point ``c = ((X-1)/2 + offset, (Y-1)/2, (Z-1)/2)`` with unit normal
``n = (cos(yaw)cos(roll), sin(yaw)cos(roll), -sin(roll))`` (degrees).  The
plane frame is ``q = Mᵀ (p - c)`` with ``M = Rz(yaw) Ry(roll)``, whose first
column is ``n``.  Healthy anatomy is a function of ``(|q0|, q1, q2)``, hence
exactly mirror-symmetric about the plane; the bias field and the noise are
not, as in real scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from aem_synth.types import BoolArray, FloatArray, LabelArray

__all__ = [
    "PHANTOM_VARIANTS",
    "PLANE_RANGES",
    "TISSUES",
    "TISSUE_LABEL",
    "PhantomArrays",
    "PhantomParams",
    "plane_frame",
    "sample_phantom_params",
]

TISSUES: tuple[str, ...] = (
    "background",
    "csf",
    "grey_matter",
    "white_matter",
    "deep_grey",
    "edema",
    "necrosis",
    "enhancing",
    "non_enhancing",
)
"""Tissue class names; the index is the code stored in ``PhantomArrays.tissue``."""

TISSUE_CODE = {name: code for code, name in enumerate(TISSUES)}

TISSUE_LABEL: npt.NDArray[np.uint8] = np.array([0, 0, 0, 0, 0, 2, 1, 3, 1], dtype=np.uint8)
"""Tissue code -> internal label (0 bg, 1 NCR/NET, 2 ED, 3 ET)."""

PLANE_RANGES: dict[str, tuple[float, float]] = {
    "offset": (-4.0, 4.0),
    "yaw": (-5.0, 5.0),
    "roll": (-5.0, 5.0),
}
"""Uniform ranges of the drawn mid-plane: offset in voxels, yaw/roll in degrees."""

# Reference intensities, columns in MODALITIES order (flair, t1, t1ce, t2), rows
# in TISSUES order.  Roughly the medians of real BraTS scans: T1 WM > GM > CSF,
# T2 CSF brightest, FLAIR CSF suppressed, ET bright only after contrast, ED
# bright on FLAIR/T2, necrosis dark on T1/T1ce.
INTENSITY = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [90.0, 150.0, 170.0, 1150.0],
        [430.0, 300.0, 320.0, 780.0],
        [340.0, 420.0, 410.0, 560.0],
        [390.0, 350.0, 360.0, 680.0],
        [640.0, 290.0, 320.0, 980.0],
        [330.0, 170.0, 190.0, 1100.0],
        [520.0, 360.0, 760.0, 820.0],
        [560.0, 250.0, 270.0, 900.0],
    ],
    dtype=np.float32,
)

# Brain semi-axes as fractions of the volume: 70, 88, 66 mm in 240 x 240 x 155.
_BRAIN_FRACTION = np.array([70.0 / 240.0, 88.0 / 240.0, 66.0 / 155.0])
LOBES = 3
PHANTOM_VARIANTS: tuple[str, ...] = ("simple", "hard")


@dataclass(frozen=True)
class PhantomParams:
    """Every random choice of one phantom case (JSON-able via :meth:`to_dict`).

    Attributes
    ----------
    shape : tuple of int
        Grid shape ``(X, Y, Z)`` in voxels (1 mm).
    plane : dict
        Mirror-plane truth ``{"offset": voxels, "yaw": deg, "roll": deg}``.
    semi_axes : tuple of float
        Brain semi-axes ``(a, b, c)`` in mm along the plane frame.
    brain_shift : tuple of float
        Brain centre ``(q1, q2)`` in mm in the plane frame (``q0`` is 0).
    egg, flat : float
        Anterior narrowing and inferior flattening of the brain outline.
    ventricle_scale : float
        Size factor of the ventricles.
    fold_phase, texture_phase : tuple of float
        Phases (radians) of the cortical folding and healthy texture.
    tumour : dict
        Tumour parameters (centre in canonical voxels and plane frame, side,
        radii in mm, rotation, necrotic fraction, oedema ratio, lobulation,
        non-enhancing split normal, texture).
    scale : tuple of float
        Case-level intensity scale per modality (scanner variation).
    jitter : list of list of float
        Per-tissue, per-modality contrast factor, shape (tissues, 4).
    bias : list of list of float
        Per-modality coefficients of the quadratic log-bias polynomial, (4, 9).
    noise : float
        Rician noise sigma as a fraction of the modality's white-matter level.
    noise_seed : int
        Seed of the voxel-noise generator.
    variant : str
        ``"simple"`` or ``"hard"`` (:mod:`aem_synth.phantom.hard`).
    hard : dict or None
        The hard variant's extra parameters (``None`` for simple).
    """

    shape: tuple[int, int, int]
    plane: dict[str, float]
    semi_axes: tuple[float, float, float]
    brain_shift: tuple[float, float]
    egg: float
    flat: float
    ventricle_scale: float
    fold_phase: tuple[float, float, float]
    texture_phase: tuple[float, float, float]
    tumour: dict[str, Any]
    scale: tuple[float, float, float, float]
    jitter: list[list[float]]
    bias: list[list[float]]
    noise: float
    noise_seed: int
    variant: str = "simple"
    hard: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able dictionary of all parameters."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class PhantomArrays:
    """Rendered arrays of one case, canonical RAS grid ``(X, Y, Z)``.

    Attributes
    ----------
    images : dict of str to ndarray, float32, (X, Y, Z)
        Integer-valued intensities per modality (``MODALITIES`` keys), exactly
        0 outside the brain and >= 1 inside.
    label : ndarray, uint8, (X, Y, Z)
        Internal labels 0/1/2/3.
    tissue : ndarray, uint8, (X, Y, Z)
        Tissue codes (index into ``TISSUES``).
    brain_mask : ndarray, bool, (X, Y, Z)
    """

    images: dict[str, FloatArray]
    label: LabelArray
    tissue: LabelArray
    brain_mask: BoolArray


def plane_frame(
    plane: dict[str, float], shape: tuple[int, int, int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Centre ``c`` (voxels, (3,)) and rotation ``M`` ((3, 3), columns n, u, v) of a plane."""
    yaw, roll = np.deg2rad(plane["yaw"]), np.deg2rad(plane["roll"])
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0, 0, 1]])
    ry = np.array(
        [[np.cos(roll), 0.0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0.0, np.cos(roll)]]
    )
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    centre[0] += plane["offset"]
    return centre, rz @ ry


def sample_phantom_params(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    plane: dict[str, float] | None = None,
    variant: str = "simple",
) -> PhantomParams:
    """Draw all parameters of one case from ``rng``.

    The plane is always drawn first, so passing ``plane`` overrides the truth
    without changing any other parameter of the case.  ``variant="hard"``
    draws the simple parameters first, then the hard ones from a child
    generator (:mod:`aem_synth.phantom.hard`), which replace or extend them.
    """
    if variant not in PHANTOM_VARIANTS:
        raise ValueError(f"phantom variant must be one of {PHANTOM_VARIANTS}, got {variant!r}")
    drawn = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in PLANE_RANGES.items()}
    truth = drawn if plane is None else {k: float(plane[k]) for k in PLANE_RANGES}
    size = float(rng.uniform(0.94, 1.02))
    semi = _BRAIN_FRACTION * np.asarray(shape, dtype=np.float64) * size
    outline = _Outline(
        semi_axes=(float(semi[0]), float(semi[1]), float(semi[2])),
        brain_shift=(
            float(rng.uniform(-0.03, 0.03) * semi[1]),
            float(rng.uniform(-0.03, 0.03) * semi[2]),
        ),
        egg=float(rng.uniform(0.05, 0.12)),
        flat=float(rng.uniform(0.05, 0.2)),
    )
    ventricle_scale = float(rng.uniform(0.8, 1.3))
    fold_phase = rng.uniform(0, 2 * np.pi, 3).tolist()
    texture_phase = rng.uniform(0, 2 * np.pi, 3).tolist()
    tumour = _sample_tumour(rng, shape, truth, outline)
    params = PhantomParams(
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        plane=truth,
        semi_axes=outline.semi_axes,
        brain_shift=outline.brain_shift,
        egg=outline.egg,
        flat=outline.flat,
        ventricle_scale=ventricle_scale,
        fold_phase=(fold_phase[0], fold_phase[1], fold_phase[2]),
        texture_phase=(texture_phase[0], texture_phase[1], texture_phase[2]),
        tumour=tumour,
        scale=tuple(rng.uniform(0.85, 1.2, 4).tolist()),
        jitter=rng.uniform(0.95, 1.05, (len(TISSUES), 4)).tolist(),
        bias=np.concatenate(
            [rng.uniform(-0.06, 0.06, (4, 3)), rng.uniform(-0.04, 0.04, (4, 6))], axis=1
        ).tolist(),
        noise=float(rng.uniform(0.015, 0.035)),
        noise_seed=int(rng.integers(0, 2**32)),
    )
    if variant == "simple":
        return params
    return _harden(params, np.random.default_rng(int(rng.integers(0, 2**63))), outline)


def _harden(params: PhantomParams, rng: np.random.Generator, outline: _Outline) -> PhantomParams:
    """The hard variant of a case: anatomy, intensities and tumours of :mod:`.hard`."""
    from aem_synth.phantom.hard import sample_hard

    hard = sample_hard(rng)
    semi = np.asarray(outline.semi_axes) * hard["size"] * np.asarray(hard["axis_scale"])
    # The brain must stay inside the grid: at most 46 % of each axis as semi-axis.
    semi = np.minimum(semi, 0.46 * np.asarray(params.shape, dtype=np.float64))
    outline = replace(outline, semi_axes=(float(semi[0]), float(semi[1]), float(semi[2])))
    tumour = _sample_tumour(
        rng, params.shape, params.plane, outline, core_range=(0.06, 0.4), lobe_max=0.25
    )
    tumour["satellites"] = (
        [
            _sample_tumour(
                rng, params.shape, params.plane, outline, core_range=(0.05, 0.16), lobe_max=0.2
            )
        ]
        if hard["multifocal"]
        else []
    )
    bias = (np.asarray(params.bias) * hard["bias_factor"]).tolist()
    return replace(
        params,
        semi_axes=outline.semi_axes,
        ventricle_scale=hard["ventricle_scale"],
        tumour=tumour,
        scale=tuple(hard["scale"]),
        bias=bias,
        noise=hard["noise"],
        variant="hard",
        hard=hard,
    )


@dataclass(frozen=True)
class _Outline:
    """Brain outline: semi-axes (mm), centre shift ``(q1, q2)`` (mm), egg and flat factors."""

    semi_axes: tuple[float, float, float]
    brain_shift: tuple[float, float]
    egg: float
    flat: float


def brain_rho2(
    q: Sequence[npt.NDArray[np.floating]] | npt.NDArray[np.floating],
    semi: tuple[float, ...],
    shift: tuple[float, ...],
    egg: float,
    flat: float,
) -> npt.NDArray[np.floating]:
    """Squared normalised brain radius at plane-frame points ``q`` (mm, leading axis 3).

    ``< 1`` inside the brain.  Symmetric in ``q[0]``: only ``q[0] ** 2`` enters.
    The outline is an ellipsoid narrowed anteriorly (``egg``) and flattened
    inferiorly (``flat``).
    """
    v = (q[1] - shift[0]) / semi[1]
    w = (q[2] - shift[1]) / semi[2]
    w = np.where(w < 0, w * (1.0 + flat), w)
    return (q[0] / (semi[0] * (1.0 - egg * v))) ** 2 + v**2 + w**2


def _random_rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _place_tumour(
    rng: np.random.Generator, outline: _Outline, reach: float, side: float
) -> npt.NDArray[np.float64]:
    """Plane-frame centre (mm) of a lesion of radius ``reach`` inside one hemisphere.

    Candidates keep ``|q0| >= reach`` (no midline crossing); the first whose
    six extreme points lie inside the brain wins, else the least violating.
    """
    semi = np.asarray(outline.semi_axes)
    shift = np.asarray(outline.brain_shift)
    cand = rng.uniform(-1.0, 1.0, (256, 3))
    q = np.empty_like(cand)
    q[:, 0] = side * (reach + np.abs(cand[:, 0]) * max(semi[0] - reach, 0.0))
    q[:, 1:] = cand[:, 1:] * semi[1:] + shift
    steps = np.concatenate([np.eye(3), -np.eye(3)]) * reach
    extremes = q[:, None, :] + steps[None, :, :]
    rho2 = brain_rho2(
        np.moveaxis(extremes, -1, 0),
        outline.semi_axes,
        outline.brain_shift,
        outline.egg,
        outline.flat,
    )
    worst = rho2.max(axis=1)
    ok = worst < 0.9
    best = int(np.argmax(ok)) if ok.any() else int(np.argmin(worst))
    return q[best]


def _sample_tumour(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    plane: dict[str, float],
    outline: _Outline,
    *,
    core_range: tuple[float, float] = (0.12, 0.22),
    lobe_max: float = 0.05,
) -> dict[str, Any]:
    """Tumour parameters: one lesion in one hemisphere, inside the brain.

    ``core_range``: core radius as a fraction of the brain's left-right
    semi-axis; ``lobe_max``: largest lobulation amplitude (the hard variant
    widens both).
    """
    core = max(3.5, float(rng.uniform(*core_range)) * outline.semi_axes[0])
    elong = rng.uniform(0.8, 1.2, 3)
    radii = core * elong / np.cbrt(np.prod(elong))
    rim = max(1.2, float(rng.uniform(0.2, 0.35)) * core)
    ed_ratio = float(rng.uniform(1.4, 1.9))
    lobe_amp = rng.uniform(0.0, lobe_max, (2, LOBES))
    reach = float(radii.max()) * ed_ratio * (1.0 + lobe_amp[1].sum()) + 1.0
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    q_centre = _place_tumour(rng, outline, reach, side)
    centre, rot = plane_frame(plane, shape)
    net_normal = rng.standard_normal(3)
    return {
        "side": "right" if side > 0 else "left",
        "centre_plane_mm": q_centre.tolist(),
        "centre_voxel": (centre + rot @ q_centre).tolist(),
        "radii_mm": radii.tolist(),
        "rotation": _random_rotation(rng).tolist(),
        "necrotic_fraction": 1.0 - rim / core,
        "edema_ratio": ed_ratio,
        "lobe_k": rng.normal(0.0, 2.5, (2, LOBES, 3)).tolist(),
        "lobe_amp": lobe_amp.tolist(),
        "lobe_phase": rng.uniform(0, 2 * np.pi, (2, LOBES)).tolist(),
        "net_normal": (net_normal / np.linalg.norm(net_normal)).tolist(),
        "texture_k": rng.normal(0.0, 0.5, 3).tolist(),
        "texture_phase": float(rng.uniform(0, 2 * np.pi)),
    }
