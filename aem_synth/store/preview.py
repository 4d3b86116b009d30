"""Montage of one synthetic sample, like Fig. 4 of the paper (``aem-synth preview``).

Rows are the modalities (FLAIR, T1, T1ce, T2); columns are the anatomy
``A``, the donor ``B``, the tumour part ``T_B``, the stored sample
``A + T_B`` and the fused label over it, on the axial slice (constant z)
through the largest cross-section of the transferred tumour, cropped to A's
brain box.

Source of A, B and T_B (a choice): they are recomputed from the stored
synthesis parameters and the **real training shards** of the store, not from
the build's per-case intermediates (those are removed when a build
finishes).  Real shards hold float16 z-scores cropped to the brain box; they
are placed back into the full grid (zeros outside the box; brain mask = any
non-zero channel) and ``synthesis.apply`` is replayed.  ``T_B`` is shown as
the part the replay adds to A (``X_AB - X_A``, i.e. restricted to A's
brain), so it equals the stored sample minus A up to float16 rounding.  The
``A + T_B`` column shows the stored sample itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aem_synth.errors import ShardError
from aem_synth.store.shards import ShardReader, list_samples, read_manifest
from aem_synth.types import MODALITIES, FloatArray, LabelArray

__all__ = ["PreviewData", "load_preview", "render_preview"]

LABEL_COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 3: (1.0, 0.85, 0.0)}
"""RGB per internal label: NCR/NET red, ED green, ET yellow."""


@dataclass
class PreviewData:
    """Arrays of one preview, cropped to A's brain box, axes (4, x, y, z) / (x, y, z).

    Attributes
    ----------
    sample_id, anatomy, donor, method : str
    a, b, tumour, fused : ndarray, float32, (4, x, y, z)
        Z-scores: anatomy, donor, tumour part, stored synthetic sample.
    label : ndarray, uint8, (x, y, z)
        Stored fused label.
    z : int
        Axial slice index (in the crop) through the transferred tumour.
    """

    sample_id: str
    anatomy: str
    donor: str
    method: str
    a: FloatArray
    b: FloatArray
    tumour: FloatArray
    fused: FloatArray
    label: LabelArray
    z: int


def _find(root: Path, sample_id: str, kind: str) -> ShardReader:
    for ref in list_samples(root, kind):
        if ref.sample_id == sample_id:
            return ShardReader(ref.shard)
    raise ShardError(f"{root}: no {kind} sample {sample_id!r} in the manifest")


def _real_input(root: Path, case_id: str) -> Any:
    from aem_synth.synthesis.sample import SynthesisInput

    with _find(root, case_id, "real") as reader:
        meta = reader.meta(case_id)
        crop_img, crop_lab = reader.image(case_id), reader.label(case_id)
    shape = tuple(meta["full_shape"])
    sl = tuple(slice(a, b) for a, b in meta["crop_box"])
    image = np.zeros((4, *shape), np.float32)
    label = np.zeros(shape, np.uint8)
    image[(slice(None), *sl)] = crop_img
    label[sl] = crop_lab
    return SynthesisInput(
        case_id=case_id,
        image=image,
        label=label,
        brain_mask=(image != 0).any(axis=0),
        spacing=tuple(meta["spacing"]),
    )


def load_preview(root: Path | str, sample_id: str) -> PreviewData:
    """Read a synthetic sample and recompute its A, B and tumour part (see module doc)."""
    from aem_synth.synthesis.sample import SynthesisParams, apply

    root = Path(root)
    read_manifest(root)
    with _find(root, sample_id, "synthetic") as reader:
        meta = reader.meta(sample_id)
        fused, label = reader.image(sample_id), reader.label(sample_id)
    a_in = _real_input(root, meta["anatomy"])
    b_in = _real_input(root, meta["donor"])
    params = SynthesisParams.from_dict(meta["params"])
    replay, _ = apply(params, a_in, b_in)
    sl = (slice(None), *(slice(a, b) for a, b in meta["crop_box"]))
    a, b = a_in.image[sl], b_in.image[sl]
    tumour = np.where(a_in.brain_mask[sl[1:]], replay[sl] - a, 0.0).astype(np.float32)
    return PreviewData(
        sample_id=sample_id,
        anatomy=meta["anatomy"],
        donor=meta["donor"],
        method=str(meta["params"].get("method", "aem")),
        a=a,
        b=b,
        tumour=tumour,
        fused=fused,
        label=label,
        z=_tumour_slice(tumour, label),
    )


def _tumour_slice(tumour: FloatArray, label: LabelArray) -> int:
    """Axial index with the most transferred-tumour voxels (else most label voxels)."""
    area = (np.abs(tumour) > 1e-3).any(axis=0).sum(axis=(0, 1))
    if not area.any():
        area = (label > 0).sum(axis=(0, 1))
    return int(np.argmax(area))


def _overlay(gray: np.ndarray, label: np.ndarray, lo: float, hi: float) -> np.ndarray:
    base = np.clip((gray - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    for value, colour in LABEL_COLOURS.items():
        sel = label == value
        rgb[sel] = 0.45 * rgb[sel] + 0.55 * np.asarray(colour)
    return rgb


def render_preview(root: Path | str, sample_id: str, out_png: Path | str) -> Path:
    """Write the montage PNG of a synthetic sample (matplotlib Agg) and return its path.

    Slices are drawn with axis 0 (left -> right) horizontal and axis 1
    (posterior -> anterior) vertical, anterior up, patient left on the image
    left (neurological convention).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = load_preview(root, sample_id)
    z = d.z
    part = "tumour part T_B" if d.method == "aem" else "mixed-in part"
    titles = [f"A: {d.anatomy}", f"B: {d.donor}", part, "A + T_B (stored)", "fused label"]
    fig, axes = plt.subplots(4, 5, figsize=(15, 12.5), squeeze=False)
    for r, name in enumerate(MODALITIES):
        lo, hi = np.percentile(d.fused[r, :, :, z], [1, 99.5])
        t_lim = float(np.abs(d.tumour[r, :, :, z]).max()) or 1.0
        panels = [
            (d.a[r, :, :, z], {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (d.b[r, :, :, z], {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (d.tumour[r, :, :, z], {"cmap": "coolwarm", "vmin": -t_lim, "vmax": t_lim}),
            (d.fused[r, :, :, z], {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (_overlay(d.fused[r, :, :, z], d.label[:, :, z], lo, hi), {}),
        ]
        for c, (img, kw) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.swapaxes(img, 0, 1), origin="lower", interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=11)
        axes[r, 0].set_ylabel(name.upper(), fontsize=13)
    fig.suptitle(
        f"{d.sample_id} ({d.method}): axial slice z={z} of A's brain box; "
        "labels: NCR/NET red, ED green, ET yellow",
        fontsize=12,
    )
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
