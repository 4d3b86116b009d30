"""Splits: seeded generation in the paper's proportions, files, and disjointness."""

from __future__ import annotations

from pathlib import Path

import pytest

from aem_synth.dataset.splits import (
    PAPER_SPLITS,
    make_split,
    read_splits,
    resolve_splits,
    split_sizes,
    write_splits,
)
from aem_synth.errors import DatasetError

IDS = [f"case{i:03d}" for i in range(40)]


def assert_partition(splits: dict[str, list[str]], ids: list[str]) -> None:
    members = [c for name in ("train", "val", "test") for c in splits[name]]
    assert sorted(members) == sorted(ids)  # every case exactly once: never in two splits


@pytest.mark.parametrize("dataset", sorted(PAPER_SPLITS))
def test_paper_sizes_are_reproduced_exactly(dataset: str) -> None:
    sizes = PAPER_SPLITS[dataset]
    assert split_sizes(sum(sizes), sizes) == sizes


@pytest.mark.parametrize("n", [3, 4, 5, 7, 12, 100])
@pytest.mark.parametrize("dataset", sorted(PAPER_SPLITS))
def test_sizes_cover_all_and_are_non_empty(n: int, dataset: str) -> None:
    sizes = split_sizes(n, PAPER_SPLITS[dataset])
    assert sum(sizes) == n and min(sizes) >= 1
    assert sizes[0] >= max(sizes[1:])  # train stays the largest


def test_split_sizes_rejects_bad_proportions() -> None:
    with pytest.raises(ValueError, match=r"three non-negative numbers, got \(1, -1, 1\)"):
        split_sizes(10, (1, -1, 1))


def test_make_split_is_a_seeded_partition() -> None:
    a = make_split(IDS, seed=7)
    assert_partition(a, IDS)
    assert tuple(len(a[k]) for k in ("train", "val", "test")) == split_sizes(40, (219, 50, 100))
    assert make_split(list(reversed(IDS)), seed=7) == a  # input order does not matter
    assert make_split(IDS, seed=8) != a
    assert all(a[k] == sorted(a[k]) for k in a)


def test_make_split_rejects_duplicate_ids() -> None:
    with pytest.raises(DatasetError, match=r"duplicate case ids \['case001'\]"):
        make_split([*IDS, "case001"], seed=0)


def test_write_read_round_trip(tmp_path: Path) -> None:
    splits = make_split(IDS, seed=1, proportions=PAPER_SPLITS["brats2015"])
    write_splits(tmp_path / "s", splits)
    assert (tmp_path / "s" / "train.txt").read_text().splitlines() == splits["train"]
    assert read_splits(tmp_path / "s", known_ids=IDS) == splits


def test_read_splits_ignores_blank_lines_and_comments(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("# training cases\ncase000\n\ncase001  # HGG\n")
    (tmp_path / "val.txt").write_text("case002\n")
    (tmp_path / "test.txt").write_text("")
    assert read_splits(tmp_path) == {
        "train": ["case000", "case001"],
        "val": ["case002"],
        "test": [],
    }


def test_case_in_two_splits_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("case000\ncase001\n")
    (tmp_path / "val.txt").write_text("case001\n")
    (tmp_path / "test.txt").write_text("case000\ncase002\n")
    with pytest.raises(
        DatasetError, match=r"two splits: case000 in train\+test, case001 in train\+val"
    ):
        read_splits(tmp_path)
    with pytest.raises(DatasetError, match=r"two splits: x in train\+val"):
        write_splits(tmp_path / "out", {"train": ["x"], "val": ["x"], "test": []})


def test_unknown_ids_and_missing_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split folder does not exist"):
        read_splits(tmp_path / "none")
    (tmp_path / "train.txt").write_text("case000\nghost1\n")
    (tmp_path / "val.txt").write_text("ghost0\n")
    with pytest.raises(DatasetError, match=r"split file missing: .*test.txt"):
        read_splits(tmp_path)
    (tmp_path / "test.txt").write_text("case001\ncase001\n")
    with pytest.raises(DatasetError, match=r"test.txt: duplicate case ids \['case001'\]"):
        read_splits(tmp_path)
    (tmp_path / "test.txt").write_text("case001\n")
    with pytest.raises(DatasetError, match=r"unknown case ids \['ghost0', 'ghost1'\]"):
        read_splits(tmp_path, known_ids=IDS)


def test_resolve_splits_reads_or_generates(tmp_path: Path) -> None:
    generated = resolve_splits(IDS, seed=3, dataset="brats2018")
    assert generated == make_split(IDS, seed=3, proportions=PAPER_SPLITS["brats2018"])
    assert resolve_splits(IDS, seed=3, dataset="brats2021") == make_split(IDS, seed=3)
    write_splits(tmp_path, generated)
    assert resolve_splits(IDS, splits_dir=tmp_path, seed=99) == generated
    with pytest.raises(DatasetError, match=r"no split proportions for dataset 'brats1999'"):
        resolve_splits(IDS, dataset="brats1999")
