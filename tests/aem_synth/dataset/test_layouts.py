"""Layouts: names, aliases, file-name parsing and label maps."""

from __future__ import annotations

import numpy as np
import pytest

from aem_synth.dataset.layouts import LAYOUTS, SEG, resolve_layout
from aem_synth.errors import CaseError, DatasetError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("brats2015", "brats2015"),
        ("brats2018", "brats2020"),
        ("brats2019", "brats2020"),
        ("brats2020", "brats2020"),
        ("BraTS2021", "brats2020"),
        ("brats2023", "brats2023"),
    ],
)
def test_resolve_layout_accepts_names_and_aliases(name: str, expected: str) -> None:
    assert resolve_layout(name).name == expected


def test_unknown_layout_lists_valid_names() -> None:
    with pytest.raises(DatasetError, match=r"unknown layout 'brats1999'.*brats2015.*brats2023"):
        resolve_layout("brats1999")


def test_label_maps_match_the_brats_conventions() -> None:
    assert LAYOUTS["brats2015"].label_to_internal == {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
    assert LAYOUTS["brats2020"].label_to_internal == {0: 0, 1: 1, 2: 2, 4: 3}
    assert LAYOUTS["brats2023"].label_to_internal == {0: 0, 1: 1, 2: 2, 3: 3, 4: 0}  # 4: RC
    assert LAYOUTS["brats-ped"].label_to_internal == {0: 0, 1: 3, 2: 1, 3: 1, 4: 2}
    for name in ("brats2015", "brats2020"):
        assert LAYOUTS[name].internal_to_layout == {0: 0, 1: 1, 2: 2, 3: 4}
    assert LAYOUTS["brats2023"].internal_to_layout == {0: 0, 1: 1, 2: 2, 3: 3}


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_map_labels_any_storage_dtype(dtype: type) -> None:
    raw: np.ndarray = np.array([[0, 1], [2, 4]], dtype=dtype)
    out = LAYOUTS["brats2020"].map_labels(raw, "c1", "c1_seg.nii.gz")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1], [2, 3]])


def test_brats2015_merges_non_enhancing_into_ncr() -> None:
    out = LAYOUTS["brats2015"].map_labels(np.arange(5, dtype=np.int16), "p", "OT.mha")
    np.testing.assert_array_equal(out, [0, 1, 2, 1, 3])


@pytest.mark.parametrize(
    ("layout", "values", "unknown"),
    [
        ("brats2020", [0, 1, 3, 7], r"\[3, 7\]"),
        ("brats2023", [0, 5, 300], r"\[5, 300\]"),
        ("brats2015", [-1, 0, 5], r"\[-1, 5\]"),
    ],
)
def test_unknown_label_values_are_listed(layout: str, values: list[int], unknown: str) -> None:
    raw = np.array(values, dtype=np.int16)
    with pytest.raises(CaseError, match=rf"case9: seg.nii.gz: unknown label values {unknown}"):
        LAYOUTS[layout].map_labels(raw, "case9", "seg.nii.gz")


def test_non_integral_label_values_rejected() -> None:
    with pytest.raises(CaseError, match=r"label values must be integers, found \[0.5\]"):
        LAYOUTS["brats2023"].map_labels(np.array([0.0, 0.5, 2.0]), "c", "seg.nii.gz")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_to_layout_labels_inverts_map_labels(name: str) -> None:
    layout = LAYOUTS[name]
    internal = np.array([0, 1, 2, 3], dtype=np.uint8)
    on_disk = layout.to_layout_labels(internal)
    assert on_disk.dtype == np.uint8
    np.testing.assert_array_equal(layout.map_labels(on_disk, "c", "f"), internal)


def test_to_layout_labels_rejects_non_internal_values() -> None:
    with pytest.raises(ValueError, match=r"must be in 0..3, got \[4\]"):
        LAYOUTS["brats2020"].to_layout_labels(np.array([0, 4]))


@pytest.mark.parametrize(
    ("layout", "name", "expected"),
    [
        ("brats2020", "Brats18_2013_2_1_t1ce.nii.gz", ("Brats18_2013_2_1", "t1ce")),
        ("brats2020", "BraTS2021_00001_t1.nii", ("BraTS2021_00001", "t1")),
        ("brats2020", "BraTS20_Training_001_seg.nii.gz", ("BraTS20_Training_001", SEG)),
        ("brats2023", "BraTS-GLI-00001-000-t2f.nii.gz", ("BraTS-GLI-00001-000", "flair")),
        ("brats2023", "BraTS-GLI-00001-000-t1n.nii.gz", ("BraTS-GLI-00001-000", "t1")),
        ("brats2023", "BraTS-GLI-00001-000-t1c.nii.gz", ("BraTS-GLI-00001-000", "t1ce")),
        ("brats2023", "BraTS-GLI-00001-000-t2w.nii.gz", ("BraTS-GLI-00001-000", "t2")),
        ("brats2015", "VSD.Brain.XX.O.MR_Flair.54512", ("", "flair")),
        ("brats2015", "VSD.Brain.XX.O.MR_T1c.54515", ("", "t1ce")),
        ("brats2015", "VSD.Brain_3more.XX.O.OT.54517", ("", SEG)),
        ("brats2020", "BraTS-GLI-00001-000-t2f.nii.gz", None),
        ("brats2023", "Brats18_2013_2_1_flair.nii.gz", None),
        ("brats2020", "notes_t1.txt", None),
    ],
)
def test_parse_file_names(layout: str, name: str, expected: tuple[str, str] | None) -> None:
    assert LAYOUTS[layout].parse(name) == expected
