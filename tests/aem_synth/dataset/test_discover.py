"""Discovery of cases in every layout, at any nesting depth."""

from __future__ import annotations

from pathlib import Path

import pytest

from aem_synth.dataset.discover import discover, discover_case
from aem_synth.errors import CaseError, DatasetError
from aem_synth.types import MODALITIES

TOKENS_2020 = ("flair", "t1", "t1ce", "t2", "seg")
TOKENS_2023 = ("t2f", "t1n", "t1c", "t2w", "seg")
TOKENS_2015 = ("MR_Flair", "MR_T1", "MR_T1c", "MR_T2")


def touch_2020(folder: Path, case_id: str, tokens: tuple[str, ...] = TOKENS_2020) -> Path:
    case = folder / case_id
    case.mkdir(parents=True)
    for tok in tokens:
        (case / f"{case_id}_{tok}.nii.gz").touch()
    return case


def touch_2023(folder: Path, case_id: str, tokens: tuple[str, ...] = TOKENS_2023) -> Path:
    case = folder / case_id
    case.mkdir(parents=True)
    for tok in tokens:
        (case / f"{case_id}-{tok}.nii.gz").touch()
    return case


def touch_2015(folder: Path, case_id: str, *, seg: bool = True, start: int = 100) -> Path:
    case = folder / case_id
    names = [f"VSD.Brain.XX.O.{tok}.{start + i}" for i, tok in enumerate(TOKENS_2015)]
    if seg:
        names.append(f"VSD.Brain_3more.XX.O.OT.{start + 9}")
    for name in names:
        (case / name).mkdir(parents=True)
        (case / name / f"{name}.mha").touch()
    return case


def test_brats2020_nested_with_groups(tmp_path: Path) -> None:
    top = tmp_path / "MICCAI_BraTS2020_TrainingData"
    touch_2020(top / "HGG", "Brats18_b")
    touch_2020(top / "LGG", "Brats18_a")
    records = discover(tmp_path)
    assert [r.case_id for r in records] == ["Brats18_a", "Brats18_b"]
    assert [r.group for r in records] == ["LGG", "HGG"]
    rec = records[0]
    assert rec.layout == "brats2020" and rec.complete and rec.labelled and rec.problems == ()
    assert list(rec.modalities) == list(MODALITIES)
    assert rec.modalities["t1ce"].name == "Brats18_a_t1ce.nii.gz"
    assert rec.seg is not None and rec.seg.name == "Brats18_a_seg.nii.gz"
    assert rec.directory == top / "LGG" / "Brats18_a"


def test_brats2023_modality_names(tmp_path: Path) -> None:
    touch_2023(tmp_path, "BraTS-GLI-00002-000")
    (rec,) = discover(tmp_path)
    assert rec.layout == "brats2023"
    assert rec.modalities["flair"].name.endswith("-t2f.nii.gz")
    assert rec.modalities["t1"].name.endswith("-t1n.nii.gz")
    assert rec.modalities["t1ce"].name.endswith("-t1c.nii.gz")
    assert rec.modalities["t2"].name.endswith("-t2w.nii.gz")


def test_brats2015_vsd_folders(tmp_path: Path) -> None:
    touch_2015(tmp_path / "BRATS2015_Training" / "HGG", "brats_2013_pat0001_1")
    touch_2015(tmp_path / "BRATS2015_Training" / "LGG", "brats_tcia_pat101_1", start=500)
    records = discover(tmp_path)
    assert [(r.case_id, r.layout, r.group) for r in records] == [
        ("brats_2013_pat0001_1", "brats2015", "HGG"),
        ("brats_tcia_pat101_1", "brats2015", "LGG"),
    ]
    rec = records[0]
    assert rec.complete and rec.labelled and rec.problems == ()
    assert rec.modalities["t1ce"].parent.name == "VSD.Brain.XX.O.MR_T1c.102"
    assert rec.seg is not None and rec.seg.name == "VSD.Brain_3more.XX.O.OT.109.mha"


def test_mixed_layouts_in_one_root_are_each_detected(tmp_path: Path) -> None:
    touch_2020(tmp_path, "Brats18_x")
    touch_2023(tmp_path, "BraTS-GLI-00001-000")
    assert {r.case_id: r.layout for r in discover(tmp_path)} == {
        "Brats18_x": "brats2020",
        "BraTS-GLI-00001-000": "brats2023",
    }


def test_forced_layout_only_looks_for_that_layout(tmp_path: Path) -> None:
    touch_2020(tmp_path, "Brats18_x")
    touch_2023(tmp_path, "BraTS-GLI-00001-000")
    assert [r.case_id for r in discover(tmp_path, layout="brats2019")] == ["Brats18_x"]
    with pytest.raises(DatasetError, match=r"no BraTS case found under .*layouts tried: brats2015"):
        discover(tmp_path, layout="brats2015")


def test_incomplete_case_is_reported_not_dropped(tmp_path: Path) -> None:
    touch_2020(tmp_path, "Brats18_full")
    touch_2020(tmp_path, "Brats18_part", tokens=("flair", "t1", "t2", "seg"))
    records = {r.case_id: r for r in discover(tmp_path)}
    part = records["Brats18_part"]
    assert not part.complete and part.labelled
    assert part.problems == ("incomplete: missing t1ce (Brats18_part_t1ce.nii.gz)",)
    assert records["Brats18_full"].problems == ()


def test_unlabelled_case_is_reported(tmp_path: Path) -> None:
    touch_2023(tmp_path, "BraTS-GLI-00009-000", tokens=("t2f", "t1n", "t1c", "t2w"))
    (rec,) = discover(tmp_path)
    assert rec.seg is None and not rec.labelled and rec.complete
    assert rec.problems == ("unlabelled: no segmentation (BraTS-GLI-00009-000-seg.nii.gz)",)


def test_unrelated_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    case = touch_2020(tmp_path, "Brats18_x")
    (case / "._Brats18_x_t1.nii.gz").touch()
    (case / "notes.txt").touch()
    (tmp_path / "survival_info.csv").touch()
    (rec,) = discover(tmp_path)
    assert rec.problems == ()


def test_two_files_for_one_modality_is_a_problem(tmp_path: Path) -> None:
    case = touch_2020(tmp_path, "Brats18_x")
    (case / "Brats18_x_t2.nii").touch()
    (rec,) = discover(tmp_path)
    assert len(rec.problems) == 1 and rec.problems[0].startswith("several t2 files")


def test_discover_case_single_folder(tmp_path: Path) -> None:
    case = touch_2023(tmp_path, "BraTS-GLI-00003-000", tokens=("t1c", "t2f"))
    rec = discover_case(case)
    assert rec.layout == "brats2023" and set(rec.modalities) == {"flair", "t1ce"}
    assert not rec.labelled
    missing = [p for p in rec.problems if p.startswith("incomplete")]
    assert len(missing) == 2


def test_discover_case_brats2015(tmp_path: Path) -> None:
    case = touch_2015(tmp_path, "pat7", seg=False)
    rec = discover_case(case, layout="brats2015")
    assert rec.case_id == "pat7" and rec.complete and rec.seg is None


def test_discover_case_errors(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match=r"nope: case folder does not exist"):
        discover_case(tmp_path / "nope")
    empty = tmp_path / "empty_case"
    empty.mkdir()
    with pytest.raises(CaseError, match=r"empty_case: no modality file found in"):
        discover_case(empty)
    seg_only = touch_2020(tmp_path, "Brats18_s", tokens=("seg",))
    with pytest.raises(CaseError, match=r"Brats18_s: no modality file found"):
        discover_case(seg_only)
    two = touch_2020(tmp_path, "mixed_folder", tokens=())
    (two / "Brats18_m_t1.nii.gz").touch()
    (two / "Brats18_n_t1.nii.gz").touch()
    with pytest.raises(CaseError, match=r"several cases: \['Brats18_m', 'Brats18_n'\]"):
        discover_case(two)


def test_symlinked_case_folders_are_found_and_link_cycles_end(tmp_path: Path) -> None:
    from aem_synth.phantom import write_phantom_dataset

    elsewhere = tmp_path / "elsewhere"
    write_phantom_dataset(elsewhere, n_cases=2, layout="brats2020", seed=3, shape=(48, 48, 32))
    root = tmp_path / "root"
    root.mkdir()
    cases = sorted(p for p in elsewhere.iterdir() if p.is_dir())
    (root / cases[0].name).symlink_to(cases[0], target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    records = discover(root)
    assert [r.case_id for r in records] == [cases[0].name]
    assert records[0].directory == root / cases[0].name


@pytest.mark.parametrize("find", ["root", "case"])
def test_stray_files_are_reported_not_made_cases(tmp_path: Path, find: str) -> None:
    case = touch_2020(tmp_path, "Brats18_x")
    (case / "copy_of_Brats18_x_flair.nii.gz").touch()
    (case / "flair_old.nii.gz").touch()
    (case / "Brats18_y_t2.nii.gz").touch()
    (rec,) = discover(tmp_path) if find == "root" else [discover_case(case)]
    assert rec.case_id == "Brats18_x" and rec.complete
    assert rec.modalities["flair"] == case / "Brats18_x_flair.nii.gz"
    joined = " | ".join(rec.problems)
    assert "unrecognised image file(s) ignored: flair_old.nii.gz" in joined
    assert "not named for the folder's case 'Brats18_x'" in joined
    assert "copy_of_Brats18_x_flair.nii.gz" in joined and "Brats18_y_t2.nii.gz" in joined


def test_flat_folder_of_cases_keeps_every_case(tmp_path: Path) -> None:
    """Only a folder named after one of its cases marks the others as strays."""
    for cid in ("Brats18_a", "Brats18_b"):
        for tok in TOKENS_2020:
            (tmp_path / f"{cid}_{tok}.nii.gz").touch()
    assert [r.case_id for r in discover(tmp_path)] == ["Brats18_a", "Brats18_b"]


def test_broken_link_modality_is_kept_and_reported(tmp_path: Path) -> None:
    case = touch_2020(tmp_path, "Brats18_x")
    link = case / "Brats18_x_t1.nii.gz"
    link.unlink()
    link.symlink_to(tmp_path / "gone.nii.gz")
    for rec in (discover(tmp_path)[0], discover_case(case)):
        assert rec.modalities["t1"] == link
        assert any(p.startswith(f"broken symbolic link: {link}") for p in rec.problems)
