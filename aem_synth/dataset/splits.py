"""Train / validation / test splits: read from files, or generated from a seed.

A split folder holds ``train.txt``, ``val.txt`` and ``test.txt`` with one case
id per line (blank lines and ``#`` comments ignored); see
``data/splits/README.md``.  A case is never in two splits.  Generated splits
follow the paper's proportions (``PAPER_SPLITS``), are a pure function of the
sorted case ids and the seed, and list each split's ids sorted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from aem_synth.errors import DatasetError

__all__ = [
    "PAPER_SPLITS",
    "SPLIT_NAMES",
    "check_disjoint",
    "make_split",
    "read_splits",
    "resolve_splits",
    "split_sizes",
    "write_splits",
]

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")

PAPER_SPLITS: dict[str, tuple[int, int, int]] = {
    "brats2020": (219, 50, 100),
    "brats2018": (199, 29, 57),
    "brats2015": (242, 12, 20),
}

# Releases without a published split use the BraTS2020 proportions.
_PROPORTION_ALIASES = {"brats2019": "brats2020", "brats2021": "brats2020", "brats2023": "brats2020"}


def split_sizes(n: int, proportions: Sequence[float]) -> tuple[int, int, int]:
    """Split ``n`` cases in ``proportions`` (largest remainder), every split non-empty if n >= 3.

    Raises
    ------
    ValueError
        Not three proportions, a negative one, or a zero total.
    """
    props = np.asarray(proportions, dtype=np.float64)
    if props.shape != (3,) or (props < 0).any() or props.sum() <= 0:
        raise ValueError(
            f"proportions must be three non-negative numbers, got {tuple(proportions)}"
        )
    exact = n * props / props.sum()
    sizes = np.floor(exact).astype(int)
    # Ties in the remainder go to the earlier split (stable sort), so train first.
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n - int(sizes.sum())]] += 1
    if n >= 3:
        for i in range(3):
            if sizes[i] == 0:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[i] = 1
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


def make_split(
    case_ids: Iterable[str],
    *,
    seed: int,
    proportions: Sequence[float] = PAPER_SPLITS["brats2020"],
) -> dict[str, list[str]]:
    """Seeded random split of ``case_ids`` into train / val / test.

    Parameters
    ----------
    case_ids : iterable of str
        Unique ids; their input order does not matter.
    seed : int
        Seed of the permutation; same ids and seed give the same split.
    proportions : sequence of 3 numbers
        Relative sizes (train, val, test), e.g. ``PAPER_SPLITS["brats2018"]``.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.

    Raises
    ------
    DatasetError
        Duplicate ids.
    """
    ids = sorted(case_ids)
    _check_unique(ids, "case_ids")
    sizes = split_sizes(len(ids), proportions)
    perm = np.random.default_rng(seed).permutation(len(ids))
    bounds = np.cumsum((0, *sizes))
    return {
        name: sorted(ids[i] for i in perm[bounds[k] : bounds[k + 1]])
        for k, name in enumerate(SPLIT_NAMES)
    }


def read_splits(
    folder: Path | str, *, known_ids: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Read ``train.txt``, ``val.txt`` and ``test.txt`` from ``folder``.

    Parameters
    ----------
    folder : Path or str
    known_ids : iterable of str, optional
        When given, every listed id must be one of them.

    Raises
    ------
    DatasetError
        Missing folder or file, an id listed twice or in two splits, or an
        unknown id; the message names the ids and files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"split folder does not exist: {folder}")
    splits: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        path = folder / f"{name}.txt"
        if not path.is_file():
            raise DatasetError(f"split file missing: {path} (need {', '.join(SPLIT_NAMES)}.txt)")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        splits[name] = [line for line in lines if line]
        _check_unique(splits[name], str(path))
    check_disjoint(splits, where=str(folder))
    if known_ids is not None:
        known = set(known_ids)
        unknown = sorted(i for ids in splits.values() for i in ids if i not in known)
        if unknown:
            raise DatasetError(f"{folder}: split files list unknown case ids {unknown}")
    return splits


def write_splits(folder: Path | str, splits: Mapping[str, Sequence[str]]) -> Path:
    """Write ``train.txt``, ``val.txt``, ``test.txt`` (one id per line) into ``folder``.

    Raises
    ------
    DatasetError
        Missing split key or an id in two splits.
    """
    missing = [n for n in SPLIT_NAMES if n not in splits]
    if missing:
        raise DatasetError(f"splits lack {missing}; need {list(SPLIT_NAMES)}")
    check_disjoint(splits, where="splits to write")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        text = "".join(f"{case_id}\n" for case_id in splits[name])
        (folder / f"{name}.txt").write_text(text)
    return folder


def resolve_splits(
    case_ids: Iterable[str],
    *,
    splits_dir: Path | str | None = None,
    seed: int = 0,
    dataset: str = "brats2020",
) -> dict[str, list[str]]:
    """Splits from ``splits_dir`` when given, else a seeded split in ``dataset``'s proportions.

    ``dataset`` is a key of ``PAPER_SPLITS``; ``brats2019``, ``brats2021`` and
    ``brats2023`` use the BraTS2020 proportions.

    Raises
    ------
    DatasetError
        Unknown ``dataset``, or any error of :func:`read_splits`.
    """
    ids = list(case_ids)
    if splits_dir is not None:
        return read_splits(splits_dir, known_ids=ids)
    key = _PROPORTION_ALIASES.get(dataset.lower(), dataset.lower())
    if key not in PAPER_SPLITS:
        valid = sorted([*PAPER_SPLITS, *_PROPORTION_ALIASES])
        raise DatasetError(f"no split proportions for dataset {dataset!r}; valid: {valid}")
    return make_split(ids, seed=seed, proportions=PAPER_SPLITS[key])


def check_disjoint(splits: Mapping[str, Sequence[str]], *, where: str) -> None:
    """Raise ``DatasetError`` naming every id found in more than one split."""
    seen: dict[str, list[str]] = {}
    for name, ids in splits.items():
        for case_id in ids:
            seen.setdefault(case_id, []).append(name)
    shared = {cid: names for cid, names in seen.items() if len(names) > 1}
    if shared:
        detail = ", ".join(f"{cid} in {'+'.join(names)}" for cid, names in sorted(shared.items()))
        raise DatasetError(f"{where}: case ids in two splits: {detail}")


def _check_unique(ids: Sequence[str], where: str) -> None:
    dups = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dups:
        raise DatasetError(f"{where}: duplicate case ids {dups}")
