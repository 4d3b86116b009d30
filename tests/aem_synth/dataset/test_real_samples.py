"""The three real BraTS cases: discovery, loading, orientation round trip, inspect."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nibabel.nifti1
import numpy as np
import pytest

from aem_synth.dataset.discover import discover
from aem_synth.dataset.inspection import format_table, inspect_root
from aem_synth.dataset.layouts import resolve_layout
from aem_synth.dataset.load import load_case
from aem_synth.dataset.preprocess import preprocess_case, to_original
from aem_synth.types import CaseRecord, LoadedCase

EXPECTED_LAYOUTS = {
    "BraTS-GLI-00001-000": "brats2023",
    "Brats18_2013_2_1": "brats2020",
    "Brats18_TCIA05_396_1": "brats2020",
}


@pytest.fixture(scope="module")
def records(brats_samples: Path) -> list[CaseRecord]:
    return discover(brats_samples)


@pytest.fixture(scope="module")
def loaded(records: list[CaseRecord]) -> list[LoadedCase]:
    return [load_case(r, require_label=True) for r in records]


def test_discovery_finds_three_cases_with_their_layouts(records: list[CaseRecord]) -> None:
    assert {r.case_id: r.layout for r in records} == EXPECTED_LAYOUTS
    assert all(r.complete and r.labelled and r.problems == () for r in records)


def test_loaded_cases_are_ras_with_internal_labels(loaded: list[LoadedCase]) -> None:
    for case in loaded:
        assert case.image.shape == (4, 240, 240, 155) and case.image.dtype == np.float32
        assert "".join(nib.aff2axcodes(case.geometry.canonical_affine)) == "RAS"
        assert case.geometry.spacing == (1.0, 1.0, 1.0)
        assert case.label is not None
        values = set(np.unique(case.label).tolist())
        assert values <= {0, 1, 2, 3} and 3 in values, case.case_id
        # Tumour voxels lie inside the brain.
        brain = np.asarray((case.image > 0).any(axis=0))
        assert brain[case.label > 0].mean() > 0.99


def test_orientation_round_trip_reproduces_seg_on_disk(
    records: list[CaseRecord], loaded: list[LoadedCase]
) -> None:
    for record, case in zip(records, loaded, strict=True):
        assert case.label is not None and record.seg is not None
        on_disk = np.asanyarray(nib.nifti1.load(record.seg).dataobj)
        back = to_original(
            resolve_layout(record.layout).to_layout_labels(case.label), case.geometry
        )
        assert back.shape == on_disk.shape == case.geometry.original_shape
        np.testing.assert_array_equal(back, on_disk)
        np.testing.assert_array_equal(
            case.geometry.original_affine, nib.nifti1.load(record.seg).affine
        )


def test_preprocess_real_cases(loaded: list[LoadedCase]) -> None:
    for case in loaded:
        pre = preprocess_case(case)
        assert pre.image.shape[0] == 4 and pre.image.dtype == np.float32
        assert all(hi - lo >= 100 for lo, hi in pre.crop_box)  # a whole brain, not a sliver
        assert not pre.image[:, ~pre.brain_mask].any()
        for channel in pre.image:
            inside = channel[pre.brain_mask]
            assert abs(float(inside.mean())) < 1e-3 and abs(float(inside.std()) - 1) < 1e-3


def test_inspect_lists_the_three_cases(brats_samples: Path) -> None:
    rows = inspect_root(brats_samples, load=False)
    assert {r.case_id: r.layout for r in rows} == EXPECTED_LAYOUTS
    for row in rows:
        assert row.shape == (240, 240, 155) and row.orientation == "LPS"
        assert row.spacing == (1.0, 1.0, 1.0) and row.problems == ()
    et_value = {"brats2020": 4, "brats2023": 3}
    assert all(row.label_counts.get(et_value[row.layout], 0) > 0 for row in rows)
    assert format_table(rows).splitlines()[-1] == "3 cases: 3 complete, 3 labelled, 0 with problems"
