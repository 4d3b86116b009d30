"""The 15-subset table: rows, ●/○ markers, average row, CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from train.data.subsets import ALL_SUBSETS, subset_name
from train.report.tables import (
    ABSENT_MARK,
    PRESENT_MARK,
    subset_table,
    to_markdown,
    write_per_case_csv,
    write_table_csv,
)

REGIONS = ("WT", "TC", "ET")


def make_records(n_cases: int = 3) -> list[dict]:
    rng = np.random.default_rng(7)
    records = []
    for c in range(n_cases):
        for s in ALL_SUBSETS:
            rec: dict[str, object] = {
                "case_id": f"case{c}",
                "subset": subset_name(s),
                "mask": list(s),
            }
            rec.update({f"dice_{r}": float(rng.uniform()) for r in REGIONS})
            rec.update({f"hd95_{r}": float(rng.uniform(0, 50)) for r in REGIONS})
            records.append(rec)
    return records


def test_table_rows_are_case_means_in_subset_order() -> None:
    records = make_records()
    t = subset_table(records, "dice")
    assert t.subsets == ALL_SUBSETS and t.values.shape == (15, 3) and t.n_cases == 3
    for i, s in enumerate(ALL_SUBSETS):
        mine = [r for r in records if tuple(r["mask"]) == s]
        for j, reg in enumerate(REGIONS):
            assert t.values[i, j] == pytest.approx(np.mean([r[f"dice_{reg}"] for r in mine]))
    np.testing.assert_allclose(t.average, t.values.mean(axis=0))


def test_markdown_has_15_rows_markers_and_average() -> None:
    t = subset_table(make_records(), "dice")
    lines = to_markdown(t, "Dice").strip().splitlines()
    assert lines[0] == "**Dice**"
    body = [ln for ln in lines if ln.startswith("| ") and (PRESENT_MARK in ln or ABSENT_MARK in ln)]
    assert len(body) == 15
    for line, s in zip(body, ALL_SUBSETS, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [PRESENT_MARK if m else ABSENT_MARK for m in s]
        assert len(cells) == 7
    avg = [c.strip().strip("*") for c in lines[-1].strip("|").split("|")]
    assert avg[0] == "Average"
    assert [float(v) for v in avg[4:]] == pytest.approx(100 * t.average, abs=0.006)
    header = lines[2]
    assert "FLAIR | T1 | T1ce | T2" in header and "Dice (%) ET" in header


def test_hd95_table_in_mm_unscaled() -> None:
    t = subset_table(make_records(), "hd95")
    last = to_markdown(t).strip().splitlines()[-1]
    vals = [float(c.strip().strip("*")) for c in last.strip("|").split("|")[4:]]
    assert vals == pytest.approx(t.average, abs=0.006)


def test_csv_files(tmp_path: Path) -> None:
    records = make_records(2)
    t = subset_table(records, "dice")
    rows = list(csv.reader(open(write_table_csv(t, tmp_path / "dice.csv"))))
    assert rows[0] == [
        "subset",
        "FLAIR",
        "T1",
        "T1ce",
        "T2",
        "dice_WT_%",
        "dice_TC_%",
        "dice_ET_%",
        "n_cases",
    ]
    assert rows[1][-1] == "2"
    assert len(rows) == 1 + 15 + 1 and rows[-1][0] == "Average"
    assert rows[1][:5] == ["T2", "0", "0", "0", "1"]
    assert float(rows[-1][5]) == pytest.approx(100 * t.average[0], abs=1e-4)
    per_case = list(csv.DictReader(open(write_per_case_csv(records, tmp_path / "pc.csv"))))
    assert len(per_case) == 30
    assert float(per_case[0]["hd95_ET"]) == pytest.approx(records[0]["hd95_ET"], abs=1e-6)


def test_errors() -> None:
    records = make_records(2)
    with pytest.raises(ValueError, match="metric must be one of"):
        subset_table(records, "jaccard")
    with pytest.raises(ValueError, match="no dice records"):
        subset_table([], "dice")


def test_rows_of_different_case_counts_show_n_and_average_the_rows_with_cases() -> None:
    """A case lacking T1 is evaluated on the 7 subsets without T1 only."""
    records = make_records(2)
    lacking_t1 = [r for r in records if r["case_id"] == records[0]["case_id"] and not r["mask"][1]]
    others = [r for r in records if r["case_id"] != records[0]["case_id"]]
    t = subset_table(lacking_t1 + others, "dice")
    assert not t.uniform and t.n_cases == 2
    assert sorted(set(t.counts)) == [1, 2] and t.counts.count(2) == 7
    md = to_markdown(t)
    assert "| FLAIR | T1 | T1ce | T2 | n |" in md
    only_t1 = subset_table(
        [r for r in lacking_t1 if r["mask"] == [False, False, False, True]], "dice"
    )
    assert np.isnan(only_t1.values).sum() == 14 * 3 and np.isfinite(only_t1.average).all()
    assert "| - | - | - |" in to_markdown(only_t1)
