"""The ``hard`` phantom variant: what real BraTS has and the simple phantom lacks.

The simple phantom is separable by fixed intensity thresholds (a global rule
scores WT Dice 0.985 on it), so a model learns it at once and synthetic
pre-training has nothing to add.  The hard variant draws, on top of the simple
parameters and from a separate random stream (so ``simple`` keeps its bytes):

* **anatomy** — head size and shape per axis, ventricle size, cortical
  thickness and folding frequency, stronger healthy texture; **mass effect**:
  healthy tissue (ventricles, midline) pushed away from large tumours, so the
  mirror image is not a perfect healthy twin;
* **intensities** — one of three "sites" with its own contrast profile, plus
  per-case contrast, scale, stronger bias field and noise level, so that no
  global threshold separates the classes;
* **vessels** — thin enhancing sheets in healthy tissue on T1ce (as vessels and
  dura enhance in real scans), so that "bright on T1ce" is not enhancing tumour;
* **tumours** — sizes from small to large, enhancement from weak to strong, strongly lobulated, a second focus
  in some cases, no enhancement in some (no ET), ET visible only on T1ce in
  some, oedema whose contrast overlaps grey matter (FLAIR) or CSF (T2), and
  NCR/NET that is subtle on some modalities.

Everything here is a pure function of the generator it is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SITES", "hard_intensity_table", "sample_hard", "vessel_mask"]

SITES = 3
# Fixed per-site contrast profiles (tissue x modality factors): the "scanners".
_SITE_PROFILES = np.random.default_rng(20261130).uniform(0.8, 1.25, (SITES, 9, 4))
# Tissue rows (aem_synth.phantom.anatomy.TISSUES) and modality columns (flair, t1, t1ce, t2).
_CSF, _GM, _WM, _ED, _NCR, _ET, _NET = 1, 2, 3, 5, 6, 7, 8
_FLAIR, _T1, _T1CE, _T2 = 0, 1, 2, 3


def sample_hard(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the hard variant's case parameters (JSON-able) from ``rng``.

    The tumour geometry of the hard variant is drawn by the anatomy module (its
    ranges are passed there); this holds the rest.
    """
    return {
        "axis_scale": rng.uniform(0.88, 1.12, 3).tolist(),
        "size": float(rng.uniform(0.82, 1.1)),
        "ventricle_scale": float(rng.uniform(0.6, 1.8)),
        "cortex_depth": float(rng.uniform(0.6, 1.7)),
        "fold_frequency": float(rng.uniform(0.7, 1.4)),
        "texture_amplitude": float(rng.uniform(0.04, 0.12)),
        "mass_effect": float(rng.uniform(0.3, 0.8)),
        "site": int(rng.integers(SITES)),
        "contrast": rng.uniform(0.88, 1.12, (9, 4)).tolist(),
        "scale": rng.uniform(0.6, 1.6, 4).tolist(),
        "bias_factor": float(rng.uniform(1.5, 3.5)),
        "noise": float(rng.uniform(0.02, 0.055)),
        "no_enhancement": bool(rng.uniform() < 0.2),
        "et_t1ce_only": bool(rng.uniform() < 0.5),
        "edema_flair_vs_gm": float(rng.uniform(0.95, 1.35)),
        "edema_t2_toward_csf": float(rng.uniform(0.0, 0.9)),
        "core_subtle": float(rng.uniform(0.0, 0.9)),
        "multifocal": bool(rng.uniform() < 0.3),
        "enhancement": float(rng.uniform(1.15, 2.3)),
        "vessel_strength": float(rng.uniform(1.4, 2.4)),
        "vessel_phase": rng.uniform(0, 2 * np.pi, 3).tolist(),
    }


def hard_intensity_table(
    base: npt.NDArray[np.float32], hard: dict[str, Any]
) -> npt.NDArray[np.float32]:
    """Per-case tissue x modality intensity table of a hard case.

    Parameters
    ----------
    base : ndarray, float32, (9, 4)
        The simple phantom's reference intensities (``anatomy.INTENSITY``).
    hard : dict
        From :func:`sample_hard`.
    """
    t = base.astype(np.float64).copy()
    # Oedema close to grey matter on FLAIR and between grey matter and CSF on T2.
    t[_ED, _FLAIR] = t[_GM, _FLAIR] * hard["edema_flair_vs_gm"]
    a = hard["edema_t2_toward_csf"]
    t[_ED, _T2] = (1 - a) * t[_GM, _T2] + a * t[_CSF, _T2]
    t[_ET, _T1CE] = t[_GM, _T1CE] * hard["enhancement"]  # weak to strong enhancement
    if hard["et_t1ce_only"]:  # enhancement visible on T1ce only
        t[_ET, _FLAIR], t[_ET, _T2], t[_ET, _T1] = t[_ED, _FLAIR], t[_ED, _T2], t[_NET, _T1]
    w = hard["core_subtle"]  # necrotic / non-enhancing core drawn toward its surroundings
    for row in (_NCR, _NET):
        for col in (_FLAIR, _T1, _T2):
            t[row, col] = (1 - w) * t[row, col] + w * t[_ED, col]
    t *= _SITE_PROFILES[hard["site"]] * np.asarray(hard["contrast"])
    t[0] = 0.0
    return t.astype(np.float32)


def vessel_mask(
    u: npt.NDArray[np.floating],
    v: npt.NDArray[np.floating],
    w: npt.NDArray[np.floating],
    hard: dict[str, Any],
) -> npt.NDArray[np.bool_]:
    """Thin enhancing sheets (a gyroid-like level set) in normalised brain coordinates.

    ``u`` is the mirror-symmetric coordinate, so the vessels are symmetric too.
    """
    p0, p1, p2 = hard["vessel_phase"]
    level = (
        np.sin(9.0 * u + p0) * np.cos(11.0 * v + p1)
        + np.sin(11.0 * v + p1) * np.cos(13.0 * w + p2)
        + np.sin(13.0 * w + p2) * np.cos(9.0 * u + p0)
    )
    return np.abs(level) < 0.06
