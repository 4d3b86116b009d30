from __future__ import annotations

import numpy as np
import pytest

from train.data.subsets import (
    ALL_SUBSETS,
    allowed_subsets,
    draw_subset,
    subset_index,
    subset_name,
)


def test_all_subsets_are_the_15_distinct_non_empty_masks_ordered_by_size() -> None:
    assert len(ALL_SUBSETS) == 15
    assert len(set(ALL_SUBSETS)) == 15
    assert all(len(s) == 4 and any(s) for s in ALL_SUBSETS)
    sizes = [sum(s) for s in ALL_SUBSETS]
    assert sizes == sorted(sizes)
    assert sizes.count(1) == 4 and sizes.count(2) == 6 and sizes.count(3) == 4
    assert ALL_SUBSETS[-1] == (True, True, True, True)


def test_subset_names_follow_modality_order() -> None:
    assert subset_name((True, False, True, False)) == "FLAIR+T1ce"
    assert subset_name(np.array([0, 0, 0, 1])) == "T2"
    assert subset_name(ALL_SUBSETS[-1]) == "FLAIR+T1+T1ce+T2"
    names = [subset_name(s) for s in ALL_SUBSETS]
    assert len(set(names)) == 15
    assert [subset_index(s) for s in ALL_SUBSETS] == list(range(15))


def test_invalid_masks_are_rejected() -> None:
    with pytest.raises(ValueError, match="no modality"):
        subset_name((False, False, False, False))
    with pytest.raises(ValueError, match="must have 4 entries"):
        subset_name((True, False))
    with pytest.raises(ValueError, match="no modality"):
        subset_index((False,) * 4)
    with pytest.raises(ValueError, match="no subset can be drawn"):
        draw_subset(np.random.default_rng(0), (False,) * 4)


def test_draws_cover_all_15_subsets_roughly_uniformly() -> None:
    rng = np.random.default_rng(0)
    counts: dict[tuple[bool, ...], int] = {}
    n = 3000
    for _ in range(n):
        s = draw_subset(rng)
        counts[s] = counts.get(s, 0) + 1
    assert set(counts) == set(ALL_SUBSETS)
    expected = n / 15
    assert all(abs(c - expected) < 0.35 * expected for c in counts.values())


def test_draws_respect_present_modalities() -> None:
    present = (True, False, True, True)
    allowed = allowed_subsets(present)
    assert len(allowed) == 7
    rng = np.random.default_rng(1)
    seen = {draw_subset(rng, present) for _ in range(500)}
    assert seen == set(allowed)
    assert all(not s[1] for s in seen)
    assert {draw_subset(rng, (False, False, True, False)) for _ in range(20)} == {
        (False, False, True, False)
    }


def test_draws_are_deterministic_for_a_seed() -> None:
    a = [draw_subset(np.random.default_rng(7)) for _ in range(3)]
    b = [draw_subset(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
