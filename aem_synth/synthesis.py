"""One synthetic sample: sample its parameters, then apply them (STYLE 2).

:func:`sample_params` draws everything random for a :class:`Pair` from
``np.random.default_rng(pair.seed)``; :func:`apply` is a pure function of the
stored :class:`SynthesisParams` and the two input cases, so a sample can be
replayed from the parameters recorded on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .aem import MODES, Mode, mirror_tumour, transfer, tumour_part
from .errors import CaseError
from .mirror import MirrorPlane, Spacing
from .mixup import mixup
from .pairing import Pair
from .types import BoolArray, FloatArray, LabelArray

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
    """A normalised full-grid case as synthesis needs it.

    Attributes
    ----------
    case_id : str
    image : ndarray, float32, (4, X, Y, Z)
        Canonical RAS axes, ``MODALITIES`` order, z-scored over the brain,
        background exactly 0, full (atlas) grid.
    label : ndarray, uint8, (X, Y, Z)
        Internal labels 0/1/2/3.
    brain_mask : ndarray, bool, (X, Y, Z)
    spacing : tuple of float
        Voxel size in mm along ``(x, y, z)``.
    """

    case_id: str
    image: FloatArray
    label: LabelArray
    brain_mask: BoolArray
    spacing: Spacing = (1.0, 1.0, 1.0)


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
    if anatomy.image.shape != donor.image.shape:
        raise CaseError(
            anatomy.case_id,
            f"grid {anatomy.image.shape} does not match donor {donor.case_id} grid "
            f"{donor.image.shape}; cases must share the atlas grid",
        )
    if not np.allclose(anatomy.spacing, donor.spacing, atol=1e-3):
        raise CaseError(
            anatomy.case_id,
            f"spacing {anatomy.spacing} mm does not match donor {donor.case_id} spacing "
            f"{donor.spacing} mm",
        )


def apply(
    params: SynthesisParams, anatomy: SynthesisInput, donor: SynthesisInput
) -> tuple[FloatArray, LabelArray]:
    """Build the synthetic sample described by ``params`` (pure, deterministic).

    Parameters
    ----------
    params : SynthesisParams
    anatomy : SynthesisInput
        Case A (``params.anatomy``).
    donor : SynthesisInput
        Case B (``params.donor``).

    Returns
    -------
    image : ndarray, float32, (4, X, Y, Z)
        Full grid, background exactly 0.
    label : ndarray, uint8, (X, Y, Z)
    """
    _check_inputs(params, anatomy, donor)
    if params.method == "mixup":
        if params.mixup_lambda is None:  # guaranteed by SynthesisParams; narrows the type
            raise ValueError("apply: mixup without mixup_lambda")
        return mixup(
            anatomy.image,
            anatomy.label,
            donor.image,
            donor.label,
            params.mixup_lambda,
            brain_mask_a=anatomy.brain_mask,
            brain_mask_b=donor.brain_mask,
        )
    t_b = tumour_part(
        donor.image,
        donor.label,
        params.donor_plane,
        donor.spacing,
        mode=params.mode,
        brain_mask_b=donor.brain_mask,
        case_id=donor.case_id,
    )
    label_b = donor.label
    if params.mirror_to_other_side:
        t_b, label_b = mirror_tumour(t_b, label_b, params.donor_plane, donor.spacing)
    return transfer(
        anatomy.image,
        anatomy.label,
        anatomy.brain_mask,
        t_b,
        label_b,
        anatomy_id=anatomy.case_id,
        donor_id=donor.case_id,
    )
