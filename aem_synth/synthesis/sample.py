"""One synthetic sample: sample its parameters, then apply them (STYLE 2).

:func:`sample_params` draws everything random for a :class:`Pair` from
``np.random.default_rng(pair.seed)``; :func:`apply` is a pure function of the
stored :class:`SynthesisParams` and the two input cases, so a sample can be
replayed from the parameters recorded on it.

Cases may be given in the full grid or as crops of it (:class:`SynthesisInput`
``origin`` and ``grid``), and :func:`apply` can return any box of the grid:
the result on a box is bit-identical to the same box of the full-grid result.
The build passes brain-box crops and asks for the anatomy's brain box, so a
sample costs one copy of A's crop plus work on the tumour's bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aem_synth.errors import CaseError
from aem_synth.synthesis.aem import MODES, Mode, tumour_part_box
from aem_synth.synthesis.mirror import MirrorPlane, Spacing
from aem_synth.synthesis.mixup import mixup
from aem_synth.synthesis.pairing import Pair
from aem_synth.synthesis.transfer import mirror_tumour_box, transfer_box
from aem_synth.types import BoolArray, Box, FloatArray, LabelArray

__all__ = ["METHODS", "Method", "SynthesisInput", "SynthesisParams", "apply", "sample_params"]

Method = Literal["aem", "mixup"]
METHODS: tuple[str, ...] = ("aem", "mixup")

_PARAM_KEYS = {
    "anatomy",
    "donor",
    "donor_plane",
    "mode",
    "method",
    "seed",
    "mirror_to_other_side",
    "mixup_lambda",
}


@dataclass(frozen=True)
class SynthesisInput:
    """A normalised case as synthesis needs it: the full grid or a crop of it.

    Attributes
    ----------
    case_id : str
    image : ndarray, float32, (4, x, y, z)
        Canonical RAS axes, ``MODALITIES`` order, z-scored over the brain,
        background exactly 0; the full (atlas) grid or a crop of it.
    label : ndarray, uint8, (x, y, z)
        Internal labels 0/1/2/3.
    brain_mask : ndarray, bool, (x, y, z)
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.
    origin : tuple of int
        Grid position of the arrays' voxel ``(0, 0, 0)``; outside the crop the
        case is background (image 0, label 0, mask False).
    grid : tuple of int, optional
        Full grid shape ``(X, Y, Z)``; default: the arrays' shape.
    """

    case_id: str
    image: FloatArray
    label: LabelArray
    brain_mask: BoolArray
    spacing: Spacing = (1.0, 1.0, 1.0)
    origin: tuple[int, int, int] = (0, 0, 0)
    grid: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        crop = tuple(self.image.shape[1:])
        if self.image.ndim != 4 or self.label.shape != crop or self.brain_mask.shape != crop:
            raise CaseError(
                self.case_id,
                f"image {self.image.shape}, label {self.label.shape} and brain mask "
                f"{self.brain_mask.shape} must be (4, x, y, z), (x, y, z), (x, y, z)",
            )
        full = self.full_shape
        if len(self.origin) != 3 or any(
            o < 0 or o + d > g for o, d, g in zip(self.origin, crop, full, strict=True)
        ):
            raise CaseError(
                self.case_id, f"crop {crop} at origin {self.origin} does not fit in grid {full}"
            )

    @property
    def full_shape(self) -> tuple[int, int, int]:
        """The grid shape ``(X, Y, Z)``."""
        if self.grid is not None:
            return tuple(int(g) for g in self.grid)  # type: ignore[return-value]
        return tuple(int(d) for d in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def box(self) -> Box:
        """The crop's box in the grid (half-open voxel ranges)."""
        shape = self.image.shape[1:]
        return tuple((o, o + d) for o, d in zip(self.origin, shape, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class SynthesisParams:
    """Everything that determines one synthetic sample besides the two input cases.

    Attributes
    ----------
    anatomy, donor : str
        Case ids of A (anatomy) and B (tumour donor, or second mixup case).
    donor_plane : MirrorPlane
        B's calibrated mirror plane.
    mode : {"signed", "abs"}
        AEM mode.
    method : {"aem", "mixup"}
    seed : int
        The pair's seed the random parameters were drawn from.
    mirror_to_other_side : bool
        Diversity option: the tumour is reflected across B's plane first.
    mixup_lambda : float or None
        Weight of A for ``method="mixup"``, else None.
    """

    anatomy: str
    donor: str
    donor_plane: MirrorPlane
    mode: Mode = "signed"
    method: Method = "aem"
    seed: int = 0
    mirror_to_other_side: bool = False
    mixup_lambda: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"SynthesisParams: mode must be one of {MODES}, got {self.mode!r}")
        if self.method not in METHODS:
            raise ValueError(
                f"SynthesisParams: method must be one of {METHODS}, got {self.method!r}"
            )
        if (self.method == "mixup") != (self.mixup_lambda is not None):
            raise ValueError(
                f"SynthesisParams: mixup_lambda must be set exactly for method 'mixup', "
                f"got method {self.method!r} with mixup_lambda {self.mixup_lambda}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the plane as a nested dict)."""
        return {
            "anatomy": self.anatomy,
            "donor": self.donor,
            "donor_plane": self.donor_plane.to_dict(),
            "mode": self.mode,
            "method": self.method,
            "seed": int(self.seed),
            "mirror_to_other_side": bool(self.mirror_to_other_side),
            "mixup_lambda": None if self.mixup_lambda is None else float(self.mixup_lambda),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthesisParams:
        """Inverse of :meth:`to_dict`; rejects unknown or missing keys, naming them."""
        unknown, missing = set(data) - _PARAM_KEYS, _PARAM_KEYS - set(data)
        if unknown or missing:
            raise ValueError(
                f"SynthesisParams.from_dict: unknown keys {sorted(unknown)}, "
                f"missing keys {sorted(missing)}"
            )
        lam = data["mixup_lambda"]
        return cls(
            anatomy=str(data["anatomy"]),
            donor=str(data["donor"]),
            donor_plane=MirrorPlane.from_dict(data["donor_plane"]),
            mode=data["mode"],
            method=data["method"],
            seed=int(data["seed"]),
            mirror_to_other_side=bool(data["mirror_to_other_side"]),
            mixup_lambda=None if lam is None else float(lam),
        )


def sample_params(
    pair: Pair,
    donor_plane: MirrorPlane,
    *,
    mode: Mode = "signed",
    method: Method = "aem",
    diversity: bool = False,
    mixup_alpha: float = 0.4,
) -> SynthesisParams:
    """Draw the random parameters of one sample from ``np.random.default_rng(pair.seed)``.

    Parameters
    ----------
    pair : Pair
    donor_plane : MirrorPlane
        The donor's calibrated plane (recorded on the sample).
    mode : {"signed", "abs"}
    method : {"aem", "mixup"}
    diversity : bool
        When True, the tumour is moved to the other hemisphere with probability 1/2.
    mixup_alpha : float
        ``lam ~ Beta(alpha, alpha)`` for ``method="mixup"`` (mixup's usual 0.1-0.4 range).

    Returns
    -------
    SynthesisParams
    """
    if mixup_alpha <= 0:
        raise ValueError(f"sample_params: mixup_alpha must be > 0, got {mixup_alpha}")
    rng = np.random.default_rng(pair.seed)
    # Both draws are always made, so switching one option never shifts the other.
    flip = bool(rng.random() < 0.5)
    lam = float(rng.beta(mixup_alpha, mixup_alpha))
    return SynthesisParams(
        anatomy=pair.anatomy,
        donor=pair.donor,
        donor_plane=donor_plane,
        mode=mode,
        method=method,
        seed=pair.seed,
        mirror_to_other_side=diversity and flip,
        mixup_lambda=lam if method == "mixup" else None,
    )


def _check_inputs(params: SynthesisParams, anatomy: SynthesisInput, donor: SynthesisInput) -> None:
    for role, expected, case in (
        ("anatomy", params.anatomy, anatomy),
        ("donor", params.donor, donor),
    ):
        if case.case_id != expected:
            raise CaseError(
                case.case_id, f"apply: given as {role} but the parameters name {role} {expected!r}"
            )
    if anatomy.full_shape != donor.full_shape:
        raise CaseError(
            anatomy.case_id,
            f"grid {anatomy.full_shape} does not match donor {donor.case_id} grid "
            f"{donor.full_shape}; cases must share the atlas grid",
        )
    if not np.allclose(anatomy.spacing, donor.spacing, atol=1e-3):
        raise CaseError(
            anatomy.case_id,
            f"spacing {anatomy.spacing} mm does not match donor {donor.case_id} spacing "
            f"{donor.spacing} mm",
        )


def _on_box(case: SynthesisInput, box: Box) -> tuple[FloatArray, LabelArray, BoolArray]:
    """The case's image, label and mask on ``box`` (background outside its crop)."""
    dims = tuple(b - a for a, b in box)
    image = np.zeros((case.image.shape[0], *dims), dtype=case.image.dtype)
    label = np.zeros(dims, dtype=case.label.dtype)
    mask = np.zeros(dims, dtype=bool)
    inner = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(box, case.box, strict=True))
    if all(lo < hi for lo, hi in inner):
        dst = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inner, box, strict=True))
        src = tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(inner, case.origin, strict=True))
        image[(slice(None), *dst)] = case.image[(slice(None), *src)]
        label[dst] = case.label[src]
        mask[dst] = case.brain_mask[src]
    return image, label, mask


def _check_box(box: Box, grid: tuple[int, int, int], case_id: str) -> None:
    if len(box) != 3 or any(not 0 <= a < b <= g for (a, b), g in zip(box, grid, strict=True)):
        raise CaseError(case_id, f"apply: box {box} is not a non-empty box of the grid {grid}")


def apply(
    params: SynthesisParams,
    anatomy: SynthesisInput,
    donor: SynthesisInput,
    *,
    box: Box | None = None,
) -> tuple[FloatArray, LabelArray]:
    """Build the synthetic sample described by ``params`` (pure, deterministic).

    Parameters
    ----------
    params : SynthesisParams
    anatomy : SynthesisInput
        Case A (``params.anatomy``), full grid or crop.
    donor : SynthesisInput
        Case B (``params.donor``), full grid or crop.
    box : Box, optional
        Return only this box of the grid (half-open voxel ranges); default:
        the whole grid.  Equal, bit for bit, to that box of the full result.

    Returns
    -------
    image : ndarray, float32, (4, bx, by, bz)
        Background exactly 0.
    label : ndarray, uint8, (bx, by, bz)
    """
    _check_inputs(params, anatomy, donor)
    grid = anatomy.full_shape
    whole: Box = ((0, grid[0]), (0, grid[1]), (0, grid[2]))
    box = whole if box is None else box
    _check_box(box, grid, anatomy.case_id)
    if params.method == "mixup":
        if params.mixup_lambda is None:  # guaranteed by SynthesisParams; narrows the type
            raise ValueError("apply: mixup without mixup_lambda")
        # Mixup is voxel-wise: blending both cases on the box is the box of the blend.
        image_a, label_a, mask_a = _on_box(anatomy, box)
        image_b, label_b, mask_b = _on_box(donor, box)
        return mixup(
            image_a,
            label_a,
            image_b,
            label_b,
            params.mixup_lambda,
            brain_mask_a=mask_a,
            brain_mask_b=mask_b,
        )
    part = tumour_part_box(
        donor.image,
        donor.label,
        params.donor_plane,
        donor.spacing,
        mode=params.mode,
        brain_mask_b=donor.brain_mask,
        case_id=donor.case_id,
        origin=donor.origin,
        grid=grid,
    )
    if part is not None and params.mirror_to_other_side:
        part = mirror_tumour_box(part, params.donor_plane, grid, donor.spacing)
    return transfer_box(
        anatomy.image,
        anatomy.label,
        anatomy.brain_mask,
        part,
        box,
        origin_a=anatomy.origin,
        anatomy_id=anatomy.case_id,
        donor_id=donor.case_id,
    )
