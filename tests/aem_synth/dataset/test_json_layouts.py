"""MSD Task01, nnU-Net v2 raw and the BraTS 2023/2024 families: round trips voxel for voxel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aem_synth.cli import main
from aem_synth.dataset.discover import discover, discover_case
from aem_synth.dataset.export_nnunet import export_nnunet
from aem_synth.dataset.inspection import inspect_root
from aem_synth.dataset.load import load_case
from aem_synth.dataset.splits import write_splits
from aem_synth.errors import DatasetError
from aem_synth.types import MODALITIES
from tests.aem_synth.dataset.layout_writers import (
    MSD_LABELS,
    MSD_MODALITY,
    PED_VALUES,
    write_brats2023_family,
    write_msd,
    write_nnunet,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aem_synth.phantom.generator import write_phantom_dataset

    root = tmp_path_factory.mktemp("orig")
    write_phantom_dataset(root, n_cases=4, layout="brats2020", seed=21, shape=(40, 36, 32))
    return root


def _same_case(a, b, *, labels: bool = True) -> None:
    la, lb = load_case(a), load_case(b)
    assert la.present == lb.present
    np.testing.assert_array_equal(la.image, lb.image)
    np.testing.assert_allclose(la.geometry.original_affine, lb.geometry.original_affine)
    assert la.geometry.original_shape == lb.geometry.original_shape
    if labels:
        assert la.label is not None and lb.label is not None
        np.testing.assert_array_equal(la.label, lb.label)


def test_msd_round_trip(original: Path, tmp_path: Path) -> None:
    msd = write_msd(original, tmp_path / "Task01_BrainTumour")
    records = {r.case_id: r for r in discover(tmp_path)}
    assert {r.layout for r in records.values()} == {"msd"}
    for ref in discover(original):
        rec = records[ref.case_id]
        assert rec.channels == {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
        _same_case(ref, rec, labels=rec.seg is not None)
    test_case = [r for r in records.values() if r.seg is None]
    assert len(test_case) == 1 and "unlabelled" in " ".join(test_case[0].problems)
    image = msd / "imagesTs" / f"{test_case[0].case_id}.nii.gz"
    assert discover_case(image).case_id == test_case[0].case_id


def test_msd_channel_order_and_labels_come_from_dataset_json(
    original: Path, tmp_path: Path
) -> None:
    """A dataset.json with other channel order and label values, data written to match."""
    import nibabel as nib
    import nibabel.nifti1

    msd = write_msd(original, tmp_path / "msd")
    order = {"0": "T2w", "1": "t1gd", "2": "FLAIR", "3": "T1w"}
    labels = {"0": "background", "1": "enhancing tumour", "2": "edema", "3": "non-enhancing tumor"}
    for f in (msd / "imagesTr").iterdir():
        img = nib.nifti1.load(f)
        data = np.asarray(img.dataobj)
        nib.save(nib.Nifti1Image(data[..., [3, 2, 0, 1]], img.affine), f)  # T2, T1ce, FLAIR, T1
    for f in (msd / "labelsTr").iterdir():
        img = nib.nifti1.load(f)
        old = np.asarray(img.dataobj)  # 1 edema, 2 non-enhancing, 3 enhancing
        new = np.select([old == 1, old == 2, old == 3], [2, 3, 1], 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(new, img.affine), f)
    (msd / "dataset.json").write_text(json.dumps({"modality": order, "labels": labels}))
    records = {r.case_id: r for r in discover(msd) if r.seg is not None}
    for ref in discover(original):
        if ref.case_id in records:
            _same_case(ref, records[ref.case_id])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"modality": {**MSD_MODALITY, "2": "DWI"}, "labels": MSD_LABELS},
            r"modality\['2'\].*'DWI'",
        ),
        (
            {"modality": MSD_MODALITY, "labels": {**MSD_LABELS, "4": "cavity"}},
            r"label 'cavity' \(labels\['4'\]\)",
        ),
        ({"labels": MSD_LABELS}, r"neither an MSD dataset.json .*keys found: \['labels'\]"),
        ({"modality": {**MSD_MODALITY, "3": "flair"}, "labels": MSD_LABELS}, "names flair twice"),
    ],
)
def test_unexpected_dataset_json_is_a_clear_error(
    original: Path, tmp_path: Path, doc: dict, message: str
) -> None:
    msd = write_msd(original, tmp_path / "msd", dataset=doc)
    with pytest.raises(DatasetError, match=message) as err:
        discover(tmp_path)
    assert str(msd / "dataset.json") in str(err.value)


@pytest.mark.parametrize("regions", [False, True])
def test_nnunet_round_trip_with_labels_or_regions(
    original: Path, tmp_path: Path, regions: bool
) -> None:
    raw = write_nnunet(original, tmp_path / "Dataset042_BraTS", regions=regions)
    records = {r.case_id: r for r in discover(raw)}
    assert {r.layout for r in records.values()} == {"nnunet"}
    for ref in discover(original):
        _same_case(ref, records[ref.case_id], labels=records[ref.case_id].seg is not None)


def test_nnunet_missing_channel_is_an_incomplete_case(original: Path, tmp_path: Path) -> None:
    raw = write_nnunet(original, tmp_path / "Dataset042_BraTS")
    first = sorted((raw / "imagesTr").iterdir())[0]
    case_id = first.name.rsplit("_", 1)[0]
    (raw / "imagesTr" / f"{case_id}_0001.nii.gz").unlink()  # T1ce
    (rec,) = [r for r in discover(raw) if r.case_id == case_id]
    assert set(rec.modalities) == {"flair", "t1", "t2"}
    assert any("missing t1ce" in p for p in rec.problems)
    loaded = load_case(rec)
    assert loaded.present == (True, True, False, True) and not loaded.image[2].any()


def test_brats_ped_and_2024_labels(original: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import nibabel.nifti1

    ids = write_brats2023_family(original, tmp_path / "ped", "PED", PED_VALUES)
    gli = write_brats2023_family(original, tmp_path / "gli", "GLI", {0: 0, 1: 1, 2: 2, 3: 3})
    refs = {r.case_id: r for r in discover(original)}
    ped = {r.case_id: r for r in discover(tmp_path / "ped")}
    assert {r.layout for r in ped.values()} == {"brats-ped"}
    for old, new in ids.items():
        _same_case(refs[old], ped[new])
    # BraTS 2024 GLI: label 4 (resection cavity) reads as background.
    old, new = next(iter(gli.items()))
    seg = tmp_path / "gli" / new / f"{new}-seg.nii.gz"
    img = nib.nifti1.load(seg)
    data = np.asarray(img.dataobj).copy()
    cavity = np.zeros(data.shape, bool)
    cavity[:3] = True
    cavity &= data == 0
    data[cavity] = 4
    nib.save(nib.Nifti1Image(data, img.affine), seg)
    rec = discover_case(tmp_path / "gli" / new)
    assert rec.layout == "brats2023"
    _same_case(refs[old], rec)


def test_inspect_reads_every_new_layout(original: Path, tmp_path: Path) -> None:
    write_msd(original, tmp_path / "msd")
    write_nnunet(original, tmp_path / "Dataset001_X")
    write_brats2023_family(original, tmp_path / "ped", "PED", PED_VALUES)
    rows = [r for d in ("msd", "Dataset001_X", "ped") for r in inspect_root(tmp_path / d)]
    by_layout: dict[str, int] = {}
    for row in rows:
        by_layout[row.layout] = by_layout.get(row.layout, 0) + 1
        assert row.shape == (40, 36, 32) and row.orientation == "LPS"
        assert not [p for p in row.problems if not p.startswith("unlabelled")], row.problems
    assert by_layout == {"msd": 4, "nnunet": 4, "brats-ped": 4}
    res = CliRunner().invoke(main, ["inspect", "--in", str(tmp_path / "msd")])
    assert res.exit_code == 0 and "msd" in res.output


def test_export_nnunet_reads_back_into_the_same_cases_and_split(
    original: Path, tmp_path: Path
) -> None:
    ids = sorted(r.case_id for r in discover(original))
    splits = {"train": ids[:2], "val": ids[2:3], "test": ids[3:]}
    write_splits(tmp_path / "splits", splits)
    out = tmp_path / "Dataset501_Phantom"
    args = [
        "export-nnunet",
        "--in",
        str(original),
        "--splits",
        str(tmp_path / "splits"),
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    folds = json.loads((out / "splits_final.json").read_text())
    assert folds == [{"train": splits["train"], "val": splits["val"]}]
    back = {r.case_id: r for r in discover(out)}
    assert sorted(back) == ids
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        f"{ids[3]}_000{i}.nii.gz" for i in range(4)
    ]
    refs = {r.case_id: r for r in discover(original)}
    for cid in ids:
        _same_case(refs[cid], back[cid])
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "not empty" in again.output


def test_export_nnunet_leaves_out_incomplete_cases_and_checks_the_name(
    original: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(original, tmp_path / "data"))
    ids = sorted(r.case_id for r in discover(root))
    (root / ids[0] / f"{ids[0]}_t2.nii.gz").unlink()
    write_splits(tmp_path / "splits", {"train": ids[:3], "val": [], "test": ids[3:]})
    with pytest.raises(DatasetError, match="DatasetXXX_Name"):
        export_nnunet(root, tmp_path / "splits", tmp_path / "BraTS")
    summary = export_nnunet(root, tmp_path / "splits", tmp_path / "Dataset002_Inc")
    assert summary.skipped == [(ids[0], "incomplete (missing t2): nnU-Net needs every channel")]
    assert summary.train == ids[1:3] and summary.test == ids[3:]
    doc = json.loads((tmp_path / "Dataset002_Inc" / "dataset.json").read_text())
    assert doc["numTraining"] == 2 and doc["channel_names"]["0"] == "FLAIR"
    assert [m for m in MODALITIES] == ["flair", "t1", "t1ce", "t2"]
