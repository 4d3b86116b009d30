"""Synthesis stage: symmetry calibration, asymmetric error maps and synthetic samples.

Takes preprocessed cases in the shared atlas grid (float32 ``(4, X, Y, Z)``
z-scores, uint8 labels).  Gives each case's calibrated mid-sagittal plane
(``calibrate``), its mirror image (``reflect``), the donor's tumour part
``T_B`` (``tumour_part``), its transfer onto another anatomy with ranked label
fusion (``transfer``), the mixup baseline, the seeded donor pairing, and one
synthetic sample from a pair (``apply``).
"""

from __future__ import annotations

from aem_synth.synthesis.aem import (
    MODES,
    Mode,
    TumourPart,
    asymmetric_error_map,
    tumour_part,
    tumour_part_box,
)
from aem_synth.synthesis.calibrate import Calibration, calibrate, mask_dice, plane_errors
from aem_synth.synthesis.fusion import FUSION_TABLE, fuse_labels, fuse_labels_loop
from aem_synth.synthesis.mirror import (
    MirrorPlane,
    Spacing,
    padded_box,
    reflect,
    reflect_box,
    reflect_points,
    reflected_box,
    reflection_affine,
)
from aem_synth.synthesis.mixup import LABEL_RULES, LabelRule, mixup
from aem_synth.synthesis.pairing import Pair, pair_seed, plan_pairs
from aem_synth.synthesis.sample import (
    METHODS,
    Method,
    SynthesisInput,
    SynthesisParams,
    apply,
    sample_params,
)
from aem_synth.synthesis.transfer import mirror_tumour, mirror_tumour_box, transfer, transfer_box

__all__ = [
    "Calibration",
    "FUSION_TABLE",
    "LABEL_RULES",
    "LabelRule",
    "METHODS",
    "MODES",
    "Method",
    "MirrorPlane",
    "Mode",
    "Pair",
    "Spacing",
    "SynthesisInput",
    "SynthesisParams",
    "TumourPart",
    "apply",
    "asymmetric_error_map",
    "calibrate",
    "fuse_labels",
    "fuse_labels_loop",
    "mask_dice",
    "mirror_tumour",
    "mirror_tumour_box",
    "mixup",
    "padded_box",
    "pair_seed",
    "plan_pairs",
    "plane_errors",
    "reflect",
    "reflect_box",
    "reflect_points",
    "reflected_box",
    "reflection_affine",
    "sample_params",
    "transfer",
    "transfer_box",
    "tumour_part",
    "tumour_part_box",
]
