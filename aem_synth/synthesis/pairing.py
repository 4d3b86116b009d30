"""Pairing plan for ``--multiplier N``: which donor tumour goes onto which anatomy.

Every training case is the anatomy exactly ``N`` times, each time with a
different donor (never itself), donors drawn without replacement per anatomy.
All randomness derives from ``np.random.SeedSequence(seed)`` keyed by the
anatomy id (and the pair index), so the plan does not depend on the order of
the input lists and each pair's seed does not depend on the other cases.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Pair", "pair_seed", "plan_pairs"]

# Spawn-key tags keeping the donor draw and the per-pair seeds on separate streams.
_DONOR_DRAW = 0
_PAIR_SEED = 1


@dataclass(frozen=True, order=True)
class Pair:
    """One planned synthetic sample.

    Attributes
    ----------
    anatomy : str
        Case id of the anatomy A.
    donor : str
        Case id of the tumour donor B (``!= anatomy``).
    index : int
        0-based position of this pair among A's ``multiplier`` pairs.
    seed : int
        Seed (0 <= seed < 2**63) for everything random in this sample.
    """

    anatomy: str
    donor: str
    index: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "anatomy": self.anatomy,
            "donor": self.donor,
            "index": self.index,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pair:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["anatomy"]), str(data["donor"]), int(data["index"]), int(data["seed"]))


def _id_key(case_id: str) -> int:
    """Stable 64-bit key of a case id (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:8], "little")


def _sequence(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=key)


def pair_seed(seed: int, anatomy: str, index: int) -> int:
    """Seed of pair ``index`` of ``anatomy`` under the global ``seed`` (0 <= value < 2**63)."""
    state = _sequence(seed, _id_key(anatomy), _PAIR_SEED, index).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _duplicates(ids: Sequence[str]) -> list[str]:
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def _validate(train_ids: Sequence[str], donor_ids: Sequence[str], multiplier: int) -> None:
    for name, ids in (("train_ids", train_ids), ("donor_ids", donor_ids)):
        dup = _duplicates(ids)
        if dup:
            raise ValueError(f"plan_pairs: {name} has duplicate case ids {dup[:5]}")
    leaked = sorted(set(donor_ids) - set(train_ids))
    if leaked:
        raise ValueError(
            f"plan_pairs: donors must come from the training split; {len(leaked)} donor id(s) "
            f"are not training cases: {leaked[:5]}"
        )
    if multiplier < 1:
        raise ValueError(f"plan_pairs: multiplier must be >= 1, got {multiplier}")
    # An anatomy that is itself a donor has one donor fewer to choose from.
    worst = len(donor_ids) - (1 if set(donor_ids) & set(train_ids) else 0)
    if multiplier > worst:
        raise ValueError(
            f"plan_pairs: multiplier {multiplier} needs {multiplier} distinct donors per anatomy, "
            f"but only {worst} are available ({len(donor_ids)} donors with tumour, "
            "minus the anatomy itself)"
        )


def plan_pairs(
    train_ids: Sequence[str], donor_ids: Sequence[str], multiplier: int, seed: int
) -> list[Pair]:
    """Plan ``multiplier * len(train_ids)`` (anatomy, donor) pairs.

    Parameters
    ----------
    train_ids : sequence of str
        Training-split case ids (the anatomies).  Validation/test ids must
        never be passed.
    donor_ids : sequence of str
        Training cases with a non-empty tumour mask; must be a subset of
        ``train_ids`` (leakage guard).
    multiplier : int
        ``N`` of ``AEM x N``; 1 <= N <= number of donors available per anatomy.
    seed : int
        Global seed.

    Returns
    -------
    list of Pair
        Sorted by ``(anatomy, index)``; independent of the order of the inputs.

    Raises
    ------
    ValueError
        Duplicate ids, donors outside the training ids, or an impossible multiplier.
    """
    _validate(train_ids, donor_ids, multiplier)
    donors = sorted(donor_ids)
    pairs: list[Pair] = []
    for anatomy in sorted(train_ids):
        pool = [d for d in donors if d != anatomy]
        rng = np.random.default_rng(_sequence(seed, _id_key(anatomy), _DONOR_DRAW))
        picks = rng.choice(len(pool), size=multiplier, replace=False)
        pairs += [
            Pair(anatomy, pool[int(p)], i, pair_seed(seed, anatomy, i)) for i, p in enumerate(picks)
        ]
    return pairs
