"""Rewrite a BraTS 2020-layout dataset in the other layouts (for round-trip tests).

Images keep their on-disk voxels and affine; labels are rewritten with the target
layout's values for the same internal labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from aem_synth.dataset.discover import discover
from aem_synth.dataset.layouts import resolve_layout
from aem_synth.types import MODALITIES, CaseRecord

MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
# internal label -> MSD value (edema 1, non-enhancing 2, enhancing 3)
MSD_VALUES = {0: 0, 1: 2, 2: 1, 3: 3}
NNUNET_CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
NNUNET_ORDER = ("t1", "t1ce", "t2", "flair")
NNUNET_LABELS: dict[str, Any] = {
    "background": 0,
    "edema": 1,
    "non_enhancing_and_necrosis": 2,
    "enhancing_tumor": 3,
}
NNUNET_REGIONS: dict[str, Any] = {
    "background": 0,
    "whole_tumor": [1, 2, 3],
    "tumor_core": [2, 3],
    "enhancing_tumor": [3],
}
NNUNET_VALUES = {0: 0, 1: 2, 2: 1, 3: 3}
PED_VALUES = {0: 0, 1: 2, 2: 4, 3: 1}  # internal -> PED: NCR/NET -> NET 2, ED -> 4, ET -> 1


def _raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img: Any = nib.load(path)
    return np.asarray(img.dataobj), np.asarray(img.affine)


def _internal(record: CaseRecord) -> tuple[np.ndarray, np.ndarray]:
    assert record.seg is not None
    raw, affine = _raw(Path(record.seg))
    return resolve_layout(record.layout).map_labels(raw, record.case_id, record.seg), affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def _relabel(internal: np.ndarray, values: dict[int, int]) -> np.ndarray:
    lut = np.zeros(4, np.uint8)
    for k, v in values.items():
        lut[k] = v
    return lut[internal]


def write_msd(src: Path, dst: Path, *, test_cases: int = 1, dataset: dict | None = None) -> Path:
    """Task01-style: 4-D images in imagesTr (labelled) and imagesTs (the last cases)."""
    records = discover(src)
    for i, rec in enumerate(records):
        stack = [_raw(Path(rec.modalities[MODALITIES[int(k)]]))[0] for k in sorted(MSD_MODALITY)]
        affine = _raw(Path(rec.modalities["flair"]))[1]
        test = i >= len(records) - test_cases
        _save(
            np.stack(stack, axis=-1),
            affine,
            dst / ("imagesTs" if test else "imagesTr") / f"{rec.case_id}.nii.gz",
        )
        if not test:
            internal, aff = _internal(rec)
            _save(_relabel(internal, MSD_VALUES), aff, dst / "labelsTr" / f"{rec.case_id}.nii.gz")
    doc = dataset or {
        "name": "BRATS",
        "modality": MSD_MODALITY,
        "labels": MSD_LABELS,
        "tensorImageSize": "4D",
    }
    (dst / "dataset.json").write_text(json.dumps(doc))
    return dst


def write_nnunet(src: Path, dst: Path, *, regions: bool = False, test_cases: int = 1) -> Path:
    """nnU-Net v2 raw: one file per channel, channel order T1, T1ce, T2, Flair."""
    records = discover(src)
    for i, rec in enumerate(records):
        test = i >= len(records) - test_cases
        images = dst / ("imagesTs" if test else "imagesTr")
        for index, modality in enumerate(NNUNET_ORDER):
            data, affine = _raw(Path(rec.modalities[modality]))
            _save(data, affine, images / f"{rec.case_id}_{index:04d}.nii.gz")
        if not test:
            internal, aff = _internal(rec)
            _save(
                _relabel(internal, NNUNET_VALUES), aff, dst / "labelsTr" / f"{rec.case_id}.nii.gz"
            )
    doc = {
        "channel_names": NNUNET_CHANNELS,
        "labels": NNUNET_REGIONS if regions else NNUNET_LABELS,
        "numTraining": len(records) - test_cases,
        "file_ending": ".nii.gz",
    }
    if regions:
        doc["regions_class_order"] = [1, 2, 3]
    (dst / "dataset.json").write_text(json.dumps(doc))
    return dst


def write_brats2023_family(
    src: Path, dst: Path, prefix: str, values: dict[int, int]
) -> dict[str, str]:
    """``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` with ids ``BraTS-<prefix>-0000i-000``.

    Returns the new id of each original case id.
    """
    tokens = resolve_layout("brats2023").modality_tokens
    ids = {}
    for i, rec in enumerate(discover(src)):
        new = f"BraTS-{prefix}-{i:05d}-000"
        ids[rec.case_id] = new
        for modality in MODALITIES:
            data, affine = _raw(Path(rec.modalities[modality]))
            _save(data, affine, dst / new / f"{new}-{tokens[modality]}.nii.gz")
        internal, aff = _internal(rec)
        _save(_relabel(internal, values), aff, dst / new / f"{new}-seg.nii.gz")
    return ids
