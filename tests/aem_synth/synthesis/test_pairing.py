"""Pairing plan: counts, distinct donors, no self-pairing, no leakage, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from aem_synth.synthesis.pairing import Pair, pair_seed, plan_pairs

TRAIN = [f"case{i:02d}" for i in range(10)]
DONORS = [c for c in TRAIN if c not in ("case03", "case07")]  # two cases without tumour


@pytest.mark.parametrize("multiplier", [1, 4, 7])
def test_counts_distinct_donors_no_self(multiplier: int) -> None:
    pairs = plan_pairs(TRAIN, DONORS, multiplier, seed=11)
    assert len(pairs) == multiplier * len(TRAIN)
    assert Counter(p.anatomy for p in pairs) == dict.fromkeys(TRAIN, multiplier)
    for anatomy in TRAIN:
        mine = [p for p in pairs if p.anatomy == anatomy]
        assert len({p.donor for p in mine}) == multiplier
        assert [p.index for p in mine] == list(range(multiplier))
    assert all(p.donor != p.anatomy and p.donor in DONORS for p in pairs)
    assert pairs == sorted(pairs, key=lambda p: (p.anatomy, p.index))
    assert len({p.seed for p in pairs}) == len(pairs)
    assert all(0 <= p.seed < 2**63 for p in pairs)


def test_deterministic_and_order_independent() -> None:
    a = plan_pairs(TRAIN, DONORS, 3, seed=5)
    assert a == plan_pairs(TRAIN, DONORS, 3, seed=5)
    assert a == plan_pairs(TRAIN[::-1], DONORS[::-1], 3, seed=5)
    assert a != plan_pairs(TRAIN, DONORS, 3, seed=6)
    # A pair's seed depends only on (seed, anatomy, index), not on the other cases.
    fewer = plan_pairs(TRAIN[:6], [d for d in DONORS if d in TRAIN[:6]], 2, seed=5)
    assert {(p.anatomy, p.index, p.seed) for p in fewer} <= {
        (p.anatomy, p.index, p.seed) for p in plan_pairs(TRAIN, DONORS, 2, seed=5)
    }
    assert a[0].seed == pair_seed(5, a[0].anatomy, 0)


def test_leakage_guard() -> None:
    with pytest.raises(ValueError, match=r"not training cases: \['val01'\]"):
        plan_pairs(TRAIN, [*DONORS, "val01"], 2, seed=0)


def test_multiplier_bounds_name_the_numbers() -> None:
    with pytest.raises(ValueError, match="multiplier must be >= 1, got 0"):
        plan_pairs(TRAIN, DONORS, 0, seed=0)
    with pytest.raises(ValueError, match=r"multiplier 8 needs 8 distinct donors.*only 7 are"):
        plan_pairs(TRAIN, DONORS, 8, seed=0)


def test_duplicates_rejected() -> None:
    with pytest.raises(ValueError, match=r"train_ids has duplicate case ids \['case01'\]"):
        plan_pairs([*TRAIN, "case01"], DONORS, 1, seed=0)


def test_pair_dict_round_trip() -> None:
    pair = plan_pairs(TRAIN, DONORS, 1, seed=3)[0]
    assert Pair.from_dict(pair.to_dict()) == pair
