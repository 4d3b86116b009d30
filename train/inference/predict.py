"""Segment real patients with whatever modalities they have (DESIGN §8, ``train predict``).

Pipeline for one case folder (any supported layout)::

    discover_case -> load_case (canonical RAS, checks files against each other)
    -> preprocess_case (z-score over the brain of the present modalities,
       crop to the brain box) -> sliding window with the mask of the present
       modalities -> argmax -> voxels outside the brain = background -> uncrop
    -> write_label_like (original grid, orientation, header and affine of the
       first present modality file; the layout's label values: 0/1/2/4 for
       BraTS 2018-2021, 0/1/2/3 for 2023, 0/1/2/4 for 2015)

Missing modality files are the normal case here: the modality mask is what is
present on disk.  A BraTS 2015 (``.mha``) case is written as ``.nii.gz`` with
the RAS affine equivalent to the ``.mha`` direction/spacing/origin, or as
``.mha`` when the output name ends in ``.mha`` (``write_label_like`` chooses
by suffix).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from aem_synth.errors import AemSynthError, CaseError
from aem_synth.types import MODALITIES, CaseRecord, LabelArray
from train.data.subsets import MODALITY_NAMES, Mask, subset_name
from train.inference.evaluate import NUM_CLASSES
from train.inference.metrics import postprocess_et
from train.inference.sliding_window import WindowOptions, predict_subsets

__all__ = [
    "OUTPUT_SUFFIX",
    "CaseFailure",
    "FolderPrediction",
    "PredictionResult",
    "describe_mask",
    "output_name",
    "predict",
    "predict_case",
    "predict_folder",
    "predict_record",
]

OUTPUT_SUFFIX = "_seg.nii.gz"


@dataclass(frozen=True)
class PredictionResult:
    """One written segmentation.

    Attributes
    ----------
    case_id, layout : str
    out_path : Path
    mask : tuple of 4 bool
        Modalities used (FLAIR, T1, T1ce, T2).
    shape : tuple of int
        Spatial shape of the written file (= the input files' shape).
    label_counts : dict
        Written label value (layout convention) -> voxel count.
    background : dict
        Per used modality, the constant detected outside the head (``None``:
        border not constant, brain taken as > 0).
    """

    case_id: str
    layout: str
    out_path: Path
    mask: Mask
    shape: tuple[int, ...]
    label_counts: dict[int, int]
    background: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseFailure:
    """A case of a folder run that could not be predicted, and why."""

    case: str
    reason: str


@dataclass
class FolderPrediction:
    """Outcome of :func:`predict_folder`."""

    results: list[PredictionResult] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)


def describe_mask(mask: Mask) -> str:
    """``"FLAIR ● T1 ○ T1ce ● T2 ○ -> FLAIR+T1ce"``."""
    marks = " ".join(f"{n} {'●' if m else '○'}" for n, m in zip(MODALITY_NAMES, mask, strict=True))
    return f"{marks} -> {subset_name(mask)}"


def _segment(
    model: Any, image: np.ndarray, mask: Mask, window: WindowOptions, device: str
) -> LabelArray:
    probs = predict_subsets(
        model,
        image,
        [mask],
        window=window.window,
        overlap=window.overlap,
        gaussian=window.gaussian,
        batch_size=window.batch_size,
        device=device,
        amp=window.amp,
        subset_batch=window.subset_batch,
    )[mask]
    if probs.shape[0] != NUM_CLASSES:
        raise ValueError(
            f"prediction needs {NUM_CLASSES} classes (bg, NCR/NET, ED, ET); the model returned "
            f"{probs.shape[0]}"
        )
    return np.argmax(probs, axis=0).astype(np.uint8)


def predict_record(
    model: Any,
    record: CaseRecord,
    out_path: Path,
    *,
    window: WindowOptions | None = None,
    device: str = "auto",
    et_postprocess: int | None = None,
) -> PredictionResult:
    """Predict one discovered case and write its segmentation to ``out_path``.

    Raises
    ------
    CaseError
        No modality present, unreadable file, shape / affine mismatch between
        the present modalities (raised by the loader, naming case and files).
    """
    from aem_synth.dataset.background import by_modality
    from aem_synth.dataset.layouts import record_layout
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import preprocess_case, uncrop, write_label_like

    window = window or WindowOptions()
    if not record.modalities:
        raise CaseError(record.case_id, f"no modality file in {record.directory}")
    # Prediction never uses the segmentation: a damaged or odd seg file must not block it.
    loaded = load_case(dataclasses.replace(record, seg=None))
    pre = preprocess_case(loaded)
    mask: Mask = tuple(bool(p) for p in pre.present)  # type: ignore[assignment]
    crop_label = _segment(model, pre.image, mask, window, device)
    crop_label[~pre.brain_mask] = 0
    if et_postprocess:
        crop_label = postprocess_et(crop_label, et_postprocess)
    full = uncrop(crop_label, pre.crop_box, loaded.image.shape[1:])
    reference = Path(record.modalities[next(m for m in MODALITIES if m in record.modalities)])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    layout = record_layout(record.layout, record.label_map)
    written = write_label_like(full, loaded.geometry, layout, reference, out_path)
    values = _written_values(Path(written), record.case_id)
    background = by_modality(loaded.background, mask)
    return PredictionResult(
        record.case_id,
        record.layout,
        out_path,
        mask,
        loaded.geometry.original_shape,
        values,
        background,
    )


def _written_values(path: Path, case_id: str) -> dict[int, int]:
    from aem_synth.dataset.load import read_raw

    data, _ = read_raw(path, case_id=case_id)
    values, counts = np.unique(np.asarray(data), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def output_name(record: CaseRecord) -> str:
    """File name of a case's prediction in a folder run: the layout's convention
    (``<case>_seg.nii.gz`` for BraTS layouts, ``<case>.nii.gz`` for MSD and nnU-Net)."""
    from aem_synth.dataset.layouts import resolve_layout

    return f"{record.case_id}{resolve_layout(record.layout).output_suffix}"


def predict_case(
    model: Any,
    case_dir: Path,
    out_path: Path,
    *,
    layout: str | None = None,
    window: WindowOptions | None = None,
    device: str = "auto",
    et_postprocess: int | None = None,
) -> PredictionResult:
    """Predict one patient folder (any supported layout, any non-empty set of modalities)."""
    from aem_synth.dataset.discover import discover_case

    record = discover_case(case_dir, layout)
    return predict_record(
        model, record, out_path, window=window, device=device, et_postprocess=et_postprocess
    )


def predict_folder(
    model: Any,
    root: Path,
    out_dir: Path,
    *,
    layout: str | None = None,
    window: WindowOptions | None = None,
    device: str = "auto",
    et_postprocess: int | None = None,
    progress: bool = True,
) -> FolderPrediction:
    """Predict every case below ``root``; write ``<out_dir>/<case_id>_seg.nii.gz`` each
    (``<case_id>.nii.gz`` for MSD and nnU-Net datasets, see :func:`output_name`).

    A case that fails (``CaseError`` or any other file problem) is recorded in
    ``failures`` and skipped; the run goes on.

    Raises
    ------
    DatasetError
        ``root`` is missing, empty or holds no recognisable case.
    """
    from aem_synth.dataset.discover import discover

    records = discover(root, layout)
    outcome = FolderPrediction()
    bar = tqdm(records, desc="predict", unit="case", disable=not progress)
    for record in bar:
        bar.set_postfix_str(record.case_id)
        target = Path(out_dir) / output_name(record)
        try:
            outcome.results.append(
                predict_record(
                    model,
                    record,
                    target,
                    window=window,
                    device=device,
                    et_postprocess=et_postprocess,
                )
            )
        except (AemSynthError, OSError, ValueError) as exc:
            outcome.failures.append(CaseFailure(record.case_id, str(exc)))
    return outcome


def predict(
    checkpoint: Path,
    out: Path,
    *,
    case: Path | None = None,
    root: Path | None = None,
    layout: str | None = None,
    window: Sequence[int] | int | None = None,
    overlap: float = 0.5,
    gaussian: bool = False,
    batch_size: int = 2,
    amp: bool = False,
    et_postprocess: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> PredictionResult | FolderPrediction:
    """Load ``checkpoint`` and predict one case folder (``case``, ``out`` = file) or every
    case below ``root`` (``out`` = folder).  Exactly one of ``case`` / ``root`` is given.
    ``window=None`` takes the training crop recorded in the checkpoint."""
    from aem_synth.paths import prepare_output_dir, prepare_output_file
    from train.inference.loading import load_for_inference

    if (case is None) == (root is None):
        raise ValueError("give exactly one of a case folder (--case) or a dataset root (--in)")
    if case is not None:  # checked before the model loads and inference starts
        prepare_output_file(out, what="prediction output (--out)")
    else:
        prepare_output_dir(out, "prediction output folder (--out)")
    loaded = load_for_inference(
        checkpoint,
        device,
        window=window,
        overlap=overlap,
        gaussian=gaussian,
        batch_size=batch_size,
        amp=amp,
    )
    model = loaded.model
    kw: dict[str, Any] = {
        "window": loaded.window,
        "device": str(loaded.device),
        "et_postprocess": et_postprocess,
    }
    if case is not None:
        return predict_case(model, Path(case), Path(out), layout=layout, **kw)
    return predict_folder(model, Path(root), Path(out), layout=layout, progress=progress, **kw)  # type: ignore[arg-type]
