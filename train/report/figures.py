"""Qualitative figure: one case's predictions for a few modality subsets beside the ground truth.

Like Fig. 7 of the paper: one axial slice through the tumour; the first panel
is the FLAIR image (or the first present modality) alone, then the ground
truth, then one panel per subset, each an overlay of the labels on the image.
Colours: NCR/NET red, ED green, ET yellow.  Slices are drawn with the
canonical x axis (left -> right, RAS) horizontal and y (posterior ->
anterior) vertical, anterior at the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from aem_synth.types import LABEL_NAMES, FloatArray, LabelArray
from train.data.subsets import MODALITY_NAMES, Mask, subset_name

__all__ = ["LABEL_COLOURS", "plot_case_grid", "plot_subset_predictions", "tumour_slice"]

LABEL_COLOURS: dict[int, tuple[float, float, float, float]] = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.9, 0.1, 0.1, 0.6),
    2: (0.1, 0.8, 0.2, 0.45),
    3: (1.0, 0.9, 0.0, 0.7),
}
_CMAP = ListedColormap([LABEL_COLOURS[i] for i in range(4)])


def tumour_slice(label: LabelArray) -> int:
    """Axial index (axis 2) through the tumour: most WT voxels, tumour core counted twice.

    The middle slice when there is no tumour.
    """
    wt = (label > 0).sum(axis=(0, 1))
    tc = np.isin(label, (1, 3)).sum(axis=(0, 1))
    score = wt + 2 * tc
    return int(np.argmax(score)) if score.any() else label.shape[2] // 2


def _background(image: FloatArray, z: int) -> tuple[np.ndarray, str]:
    channel = next((c for c in range(image.shape[0]) if np.any(image[c] != 0)), 0)
    sl = image[channel, :, :, z]
    lo, hi = np.percentile(sl, [1, 99]) if sl.any() else (0.0, 1.0)
    return np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1), MODALITY_NAMES[channel]


def _panel(ax: plt.Axes, bg: np.ndarray, lab: np.ndarray | None, title: str) -> None:
    ax.imshow(bg.T, cmap="gray", origin="lower", interpolation="nearest")
    if lab is not None:
        ax.imshow(lab.T, cmap=_CMAP, vmin=0, vmax=3, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def plot_subset_predictions(
    image: FloatArray,
    label: LabelArray,
    predictions: Mapping[Mask, LabelArray],
    out_path: Path,
    *,
    case_id: str = "",
    scores: Mapping[Mask, Mapping[str, float]] | None = None,
    subsets: Sequence[Mask] | None = None,
) -> Path:
    """Write a PNG: image, ground truth and one overlay per subset, on one axial slice.

    Parameters
    ----------
    image : ndarray, float32, (4, X, Y, Z)
        Normalised image, modality order FLAIR, T1, T1ce, T2 (FLAIR is shown).
    label : ndarray, uint8, (X, Y, Z)
        Ground truth, internal labels 0/1/2/3.
    predictions : mapping
        subset mask -> predicted labels uint8 (X, Y, Z).
    out_path : Path
        PNG file to write.
    case_id : str
        Shown in the figure title.
    scores : mapping, optional
        subset -> metrics (``dice_WT`` ...), shown under each panel title.
    subsets : sequence of masks, optional
        Which predictions to show, in order; all of ``predictions`` by default.
    """
    chosen = list(subsets) if subsets is not None else list(predictions)
    missing = [subset_name(s) for s in chosen if s not in predictions]
    if missing:
        raise ValueError(f"figure of {case_id}: no prediction for subsets {missing}")
    z = tumour_slice(label)
    bg, bg_name = _background(image, z)
    n = 2 + len(chosen)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.8), squeeze=False)
    _panel(axes[0, 0], bg, None, bg_name)
    _panel(axes[0, 1], bg, label[:, :, z], "Ground truth")
    for ax, s in zip(axes[0, 2:], chosen, strict=True):
        title = subset_name(s)
        if scores is not None and s in scores:
            sc = scores[s]
            title += "\n" + "/".join(f"{100 * sc[f'dice_{r}']:.0f}" for r in ("WT", "TC", "ET"))
        _panel(ax, bg, predictions[s][:, :, z], title)
    handles = [Patch(color=LABEL_COLOURS[i][:3], label=LABEL_NAMES[i]) for i in (1, 2, 3)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{case_id}  axial slice z={z}  (Dice % WT/TC/ET)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_case_grid(
    cases: Sequence[tuple[str, FloatArray, LabelArray]],
    out_path: Path,
    title: str = "",
    dpi: int = 80,
) -> Path:
    """One row per case: FLAIR, T1, T1ce, T2 and the labels on FLAIR, one axial tumour slice.

    Parameters
    ----------
    cases : sequence of (name, image float32 (4, X, Y, Z), label uint8 (X, Y, Z))
        Normalised images (modality order FLAIR, T1, T1ce, T2), internal labels.
    """
    fig, axes = plt.subplots(len(cases), 5, figsize=(11, 2.3 * len(cases)), squeeze=False)
    for row, (name, image, label) in zip(axes, cases, strict=True):
        z = tumour_slice(label)
        for c in range(4):
            sl = image[c, :, :, z]
            lo, hi = np.percentile(sl, [1, 99]) if sl.any() else (0.0, 1.0)
            bg = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1)
            _panel(
                row[c], bg, None, f"{name}  {MODALITY_NAMES[c]}" if c == 0 else MODALITY_NAMES[c]
            )
        _panel(
            row[4],
            np.clip((image[0, :, :, z] - image[0].min()) / (np.ptp(image[0]) or 1), 0, 1),
            label[:, :, z],
            "labels on FLAIR",
        )
    handles = [Patch(color=LABEL_COLOURS[i][:3], label=LABEL_NAMES[i]) for i in (1, 2, 3)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path
