"""``inspect``: one row per case, problems instead of crashes, table and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from aem_synth.cli import main
from aem_synth.dataset.inspection import InspectRow, format_table, inspect_root

SHAPE = (6, 5, 4)
LPS = np.diag([-1.0, -1.0, 2.0, 1.0])


def write_case(
    root: Path, case_id: str, tokens=("flair", "t1", "t1ce", "t2", "seg"), nan=False
) -> None:
    case = root / case_id
    case.mkdir(parents=True)
    rng = np.random.default_rng(len(case_id))
    for tok in tokens:
        if tok == "seg":
            data = np.zeros(SHAPE, dtype=np.uint8)
            data[1:3, 1:3, 1:3] = 2
            data[2, 2, 2] = 4
        else:
            data = rng.uniform(1, 50, size=SHAPE).astype(np.float32)
            if nan:
                data[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(data, LPS), case / f"{case_id}_{tok}.nii.gz")


@pytest.fixture
def mixed_root(tmp_path: Path) -> Path:
    write_case(tmp_path / "HGG", "Brats18_good")
    write_case(tmp_path / "HGG", "Brats18_nan", nan=True)
    write_case(tmp_path / "LGG", "Brats18_part", tokens=("flair", "t2", "seg"))
    write_case(tmp_path / "LGG", "Brats18_nolabel", tokens=("flair", "t1", "t1ce", "t2"))
    return tmp_path


def test_rows_report_geometry_labels_and_problems(mixed_root: Path) -> None:
    rows = {r.case_id: r for r in inspect_root(mixed_root)}
    assert sorted(rows) == ["Brats18_good", "Brats18_nan", "Brats18_nolabel", "Brats18_part"]
    good = rows["Brats18_good"]
    assert good.layout == "brats2020" and good.group == "HGG" and good.complete and good.labelled
    assert good.shape == SHAPE and good.spacing == (1.0, 1.0, 2.0) and good.orientation == "LPS"
    assert good.label_counts == {0: 112, 2: 7, 4: 1}
    assert good.problems == ()
    assert any("NaN/Inf" in p for p in rows["Brats18_nan"].problems)
    assert rows["Brats18_part"].modalities == ("flair", "t2")
    assert rows["Brats18_part"].problems[0].startswith("incomplete: missing t1")
    assert not rows["Brats18_nolabel"].labelled and rows["Brats18_nolabel"].label_counts == {}


def test_unreadable_case_is_a_row_not_a_crash(tmp_path: Path) -> None:
    write_case(tmp_path, "Brats18_good")
    write_case(tmp_path, "Brats18_bad")
    (tmp_path / "Brats18_bad" / "Brats18_bad_flair.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "Brats18_bad" / "Brats18_bad_seg.nii.gz").write_bytes(b"broken")
    rows = {r.case_id: r for r in inspect_root(tmp_path)}
    bad = rows["Brats18_bad"]
    assert bad.shape is None and bad.orientation is None
    assert any("cannot read header" in p for p in bad.problems)
    assert any("cannot read" in p and "seg" in p for p in bad.problems)
    assert rows["Brats18_good"].problems == ()


def test_mha_case_orientation(tmp_path: Path) -> None:
    case = tmp_path / "pat1"
    for i, tok in enumerate(["MR_Flair", "MR_T1", "MR_T1c", "MR_T2", "OT"]):
        name = f"VSD.Brain{'_3more' if tok == 'OT' else ''}.XX.O.{tok}.{i}"
        (case / name).mkdir(parents=True)
        data = np.full(SHAPE[::-1], 0 if tok == "OT" else 5, dtype=np.int16)
        img = sitk.GetImageFromArray(data)
        img.SetSpacing((1.0, 1.0, 1.5))
        sitk.WriteImage(img, str(case / name / f"{name}.mha"))
    (row,) = inspect_root(tmp_path)
    assert row.layout == "brats2015" and row.orientation == "LPS"
    assert row.shape == SHAPE and row.spacing == (1.0, 1.0, 1.5)
    assert row.label_counts == {0: int(np.prod(SHAPE))} and row.problems == ()


def test_format_table_and_to_dict(mixed_root: Path) -> None:
    rows = inspect_root(mixed_root)
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["case", "layout", "group"]
    assert len(lines) == 1 + len(rows) + 1
    assert lines[-1] == "4 cases: 3 complete, 3 labelled, 3 with problems"
    payload = json.loads(json.dumps([r.to_dict() for r in rows]))
    good = next(d for d in payload if d["case_id"] == "Brats18_good")
    assert good["label_counts"] == {"0": 112, "2": 7, "4": 1}
    assert good["shape"] == [6, 5, 4] and good["complete"] is True


def test_format_table_empty_list() -> None:
    assert format_table([]).splitlines()[-1] == "0 cases: 0 complete, 0 labelled, 0 with problems"
    assert InspectRow("c", "brats2020", "d", None, (), False).to_dict()["shape"] is None


def test_cli_inspect_table_json_and_errors(mixed_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", "--in", str(mixed_root)])
    assert result.exit_code == 0, result.output
    assert "Brats18_good" in result.output and "4 cases:" in result.output
    result = runner.invoke(
        main, ["inspect", "--in", str(mixed_root), "--json", "--layout", "brats2018"]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 4
    result = runner.invoke(main, ["inspect", "--in", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "dataset root does not exist" in result.output
