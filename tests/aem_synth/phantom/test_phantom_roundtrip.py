"""Phantom datasets in all three layouts go through discover -> load -> preprocess intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aem_synth.dataset.discover import discover
from aem_synth.dataset.layouts import resolve_layout
from aem_synth.dataset.load import load_case, read_raw
from aem_synth.dataset.preprocess import preprocess_case, to_original, uncrop
from aem_synth.types import MODALITIES

EXPECTED = {
    "phantom_2020": ("brats2020", 6),
    "phantom_2023": ("brats2023", 3),
    "phantom_2015": ("brats2015", 3),
}


@pytest.fixture(params=sorted(EXPECTED))
def phantom_root(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(request.param)


def _truth(record_dir: Path, case_id: str) -> dict:
    return json.loads((record_dir / f"{case_id}_truth.json").read_text())


def test_discover_load_preprocess_every_case(phantom_root: tuple[str, Path]) -> None:
    from aem_synth.phantom.generator import make_phantom_case

    fixture, root = phantom_root
    layout, n_cases = EXPECTED[fixture]
    records = discover(root)
    assert len(records) == n_cases
    assert all(r.layout == layout and r.complete and r.labelled and not r.problems for r in records)
    for record in records:
        truth = _truth(record.directory, record.case_id)
        phantom = make_phantom_case(truth["seed"], tuple(truth["shape"]))
        case = load_case(record, require_label=True)
        assert case.image.shape == (4, *phantom.shape)
        assert case.geometry.spacing == (1.0, 1.0, 1.0)
        for idx, modality in enumerate(MODALITIES):
            np.testing.assert_array_equal(
                case.image[idx], phantom.images[modality].astype(np.int16)
            )
        np.testing.assert_array_equal(case.label, phantom.label)
        pre = preprocess_case(case)
        assert pre.label is not None and set(np.unique(pre.label).tolist()) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(
            uncrop(pre.brain_mask, pre.crop_box, phantom.shape), phantom.brain_mask
        )
        np.testing.assert_array_equal(uncrop(pre.label, pre.crop_box, phantom.shape), phantom.label)
        assert not pre.image[:, ~pre.brain_mask].any()
        seg_on_disk, _ = read_raw(record.seg)  # type: ignore[arg-type]
        assert case.label is not None
        back = to_original(resolve_layout(layout).to_layout_labels(case.label), case.geometry)
        if layout == "brats2015":  # 3 (non-enhancing) merges into 1 and is written back as 1
            seg_on_disk = np.where(seg_on_disk == 3, 1, seg_on_disk)
        np.testing.assert_array_equal(back, seg_on_disk)
