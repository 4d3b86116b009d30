"""Per-case intermediate files: full-grid or box-shaped input, lossless round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aem_synth.store.cache import CaseSummary, read_case, read_summary, write_case

GRID = (20, 18, 12)
BOX = ((3, 15), (2, 17), (1, 10))


def _case(rng: np.random.Generator) -> tuple[CaseSummary, np.ndarray, np.ndarray, np.ndarray]:
    sl = tuple(slice(a, b) for a, b in BOX)
    mask = np.zeros(GRID, bool)
    mask[sl] = rng.random(tuple(b - a for a, b in BOX)) < 0.7
    image = np.zeros((4, *GRID), np.float32)
    image[:, mask] = rng.standard_normal((4, int(mask.sum()))).astype(np.float32)
    label = np.where(mask & (rng.random(GRID) < 0.2), 2, 0).astype(np.uint8)
    summary = CaseSummary(
        case_id="c1",
        layout="brats2020",
        source_key="k",
        full_shape=GRID,
        box=BOX,
        spacing=(1.0, 1.0, 1.0),
        present=(True, True, True, True),
        has_tumour=bool(label.any()),
    )
    return summary, image, label, mask


@pytest.mark.parametrize("cropped", [False, True])
def test_round_trip_from_full_grid_or_box(tmp_path: Path, cropped: bool) -> None:
    summary, image, label, mask = _case(np.random.default_rng(0))
    sl = tuple(slice(a, b) for a, b in BOX)
    given = (image[(slice(None), *sl)], label[sl], mask[sl]) if cropped else (image, label, mask)
    write_case(tmp_path, summary, *given)
    full = read_case(tmp_path, "c1")
    box = read_case(tmp_path, "c1", full_grid=False)
    np.testing.assert_array_equal(full.image, image)
    np.testing.assert_array_equal(full.label, label)
    np.testing.assert_array_equal(full.mask, mask)
    assert box.image.shape == (4, 12, 15, 9) and box.image.dtype == np.float32
    np.testing.assert_array_equal(box.label, label[sl])
    assert read_summary(tmp_path, "c1") == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.h5", "c1.json"]


def test_array_of_another_shape_is_refused_and_nothing_written(tmp_path: Path) -> None:
    summary, image, label, mask = _case(np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"c1: array of shape \(19, 18, 12\) matches neither"):
        write_case(tmp_path, summary, image, label[:-1], mask)
    assert read_summary(tmp_path, "c1") is None
    assert list(tmp_path.iterdir()) == []
