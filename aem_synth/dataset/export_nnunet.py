"""``aem-synth export-nnunet``: the same cases and the same split in nnU-Net v2's raw format.

So that users can train nnU-Net, the field's default baseline, on exactly our
split and compare.  Output (``DatasetXXX_Name/``)::

    dataset.json          channel_names {0: FLAIR, 1: T1, 2: T1ce, 3: T2}; labels
                          background 0, necrosis / non-enhancing 1, edema 2,
                          enhancing tumour 3 (the internal convention); numTraining;
                          file_ending .nii.gz
    imagesTr/<case>_000{0..3}.nii.gz, labelsTr/<case>.nii.gz    train + val cases
    imagesTs/<case>_000{0..3}.nii.gz, labelsTs/<case>.nii.gz    test cases
    splits_final.json     [{"train": [...], "val": [...]}]: one fold, our split

Images keep their files' grid, orientation and values: 3-D ``.nii.gz`` files are
copied byte for byte, anything else (a channel of a 4-D MSD file, ``.mha``,
``.nii``) is written with the file's on-disk voxels and affine.  Labels are
written with the internal values on the segmentation file's grid.  nnU-Net needs
every channel: an incomplete case is left out and reported, as is an unlabelled
training case.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from aem_synth.dataset.discover import discover
from aem_synth.dataset.layouts import record_layout
from aem_synth.dataset.load import read_raw
from aem_synth.dataset.splits import read_splits
from aem_synth.errors import AemSynthError, CaseError, DatasetError
from aem_synth.paths import prepare_output_dir
from aem_synth.types import MODALITIES, CaseRecord

__all__ = ["NNUNET_CHANNELS", "NNUNET_LABELS", "ExportSummary", "export_nnunet"]

NNUNET_CHANNELS = {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
NNUNET_LABELS = {"background": 0, "necrosis_non_enhancing": 1, "edema": 2, "enhancing_tumor": 3}
_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+$")


@dataclass
class ExportSummary:
    """What :func:`export_nnunet` wrote and left out."""

    out: Path
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"wrote {self.out}: {len(self.train)} train + {len(self.val)} val cases in imagesTr "
            f"(splits_final.json fold 0), {len(self.test)} test cases in imagesTs",
            f"left out: {len(self.skipped)}",
        ]
        lines += [f"  {cid}: {why}" for cid, why in self.skipped]
        return "\n".join(lines)


def export_nnunet(
    root: Path | str,
    splits_dir: Path | str,
    out: Path | str,
    *,
    layout: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write the cases of ``root`` listed in ``splits_dir`` as nnU-Net raw dataset ``out``.

    Raises
    ------
    DatasetError
        ``out`` is not named ``DatasetXXX_Name`` or already holds a dataset, the
        root or the splits cannot be read, or no case could be exported.
    """
    out = Path(out)
    if not _NAME.match(out.name):
        raise DatasetError(
            f"{out}: nnU-Net dataset folders are named DatasetXXX_Name (three digits), "
            f"e.g. Dataset137_BraTS2021"
        )
    prepare_output_dir(out, "nnU-Net dataset folder (--out)")
    if (out / "dataset.json").exists() or any(out.iterdir()):
        raise DatasetError(f"{out} is not empty; export into a new folder")
    records = {r.case_id: r for r in discover(root, layout)}
    splits = read_splits(splits_dir, known_ids=records)
    summary = ExportSummary(out)
    for split, target in (("train", "Tr"), ("val", "Tr"), ("test", "Ts")):
        for case_id in splits[split]:
            record = records[case_id]
            try:
                _export_case(record, out, target, labelled_required=split != "test")
            except (AemSynthError, OSError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, CaseError) else str(exc)
                summary.skipped.append((case_id, reason))
                continue
            getattr(summary, split).append(case_id)
            if progress is not None:
                progress(case_id)
    if not (summary.train or summary.val or summary.test):
        raise DatasetError(f"no case of {root} could be exported: {summary.skipped}")
    dataset = {
        "channel_names": NNUNET_CHANNELS,
        "labels": NNUNET_LABELS,
        "numTraining": len(summary.train) + len(summary.val),
        "file_ending": ".nii.gz",
        "name": out.name.split("_", 1)[1],
        "description": f"exported by aem-synth from {Path(root).resolve()} with splits {splits_dir}",
    }
    _write_json(out / "dataset.json", dataset)
    _write_json(out / "splits_final.json", [{"train": summary.train, "val": summary.val}])
    return summary


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _export_case(record: CaseRecord, out: Path, target: str, *, labelled_required: bool) -> None:
    missing = [m for m in MODALITIES if m not in record.modalities]
    if missing:
        raise CaseError(
            record.case_id,
            f"incomplete (missing {', '.join(missing)}): nnU-Net needs every channel",
        )
    if labelled_required and record.seg is None:
        raise CaseError(record.case_id, "unlabelled: a training case needs its segmentation")
    images, labels = out / f"images{target}", out / f"labels{target}"
    images.mkdir(exist_ok=True)
    for index, modality in enumerate(MODALITIES):
        dst = images / f"{record.case_id}_{index:04d}.nii.gz"
        src = Path(record.modalities[modality])
        if record.channels is None and src.name.lower().endswith(".nii.gz"):
            shutil.copyfile(src, dst)
        else:
            data, affine = read_raw(src, case_id=record.case_id, four_d=record.channels is not None)
            if record.channels is not None:
                data = data[..., record.channels[modality]]
            nib.save(nib.Nifti1Image(np.asarray(data), affine), dst)
    if record.seg is not None:
        labels.mkdir(exist_ok=True)
        raw, affine = read_raw(record.seg, case_id=record.case_id)
        internal = record_layout(record.layout, record.label_map).map_labels(
            raw, record.case_id, record.seg
        )
        img = nib.Nifti1Image(np.asarray(internal, dtype=np.uint8), affine)
        img.set_data_dtype(np.uint8)
        nib.save(img, labels / f"{record.case_id}.nii.gz")
