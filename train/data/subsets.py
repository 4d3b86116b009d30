"""The 15 non-empty modality subsets of (FLAIR, T1, T1ce, T2) and how samples draw one.

A subset is a mask of four bools in ``MODALITIES`` order (FLAIR, T1, T1ce,
T2); ``True`` means the modality is available to the model.

``ALL_SUBSETS`` follows the row order of the 15-subset results table of
RFNet (Ding et al., ICCV 2021), which the AEM paper and the later work on
incomplete-modality segmentation (mmFormer, ...) reuse, so tables produced
here line up row by row with the published ones::

     0  T2                   ( F, F, F, T)
     1  T1ce                 ( F, F, T, F)
     2  T1                   ( F, T, F, F)
     3  FLAIR                ( T, F, F, F)
     4  T1ce+T2              ( F, F, T, T)
     5  T1+T1ce              ( F, T, T, F)
     6  FLAIR+T1             ( T, T, F, F)
     7  T1+T2                ( F, T, F, T)
     8  FLAIR+T2             ( T, F, F, T)
     9  FLAIR+T1ce           ( T, F, T, F)
    10  FLAIR+T1+T1ce        ( T, T, T, F)
    11  FLAIR+T1+T2          ( T, T, F, T)
    12  FLAIR+T1ce+T2        ( T, F, T, T)
    13  T1+T1ce+T2           ( F, T, T, T)
    14  FLAIR+T1+T1ce+T2     ( T, T, T, T)

(singles, then pairs, triples and all four).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aem_synth.types import MODALITIES

__all__ = [
    "ALL_SUBSETS",
    "MODALITY_NAMES",
    "Mask",
    "allowed_subsets",
    "draw_subset",
    "subset_index",
    "subset_name",
]

Mask = tuple[bool, bool, bool, bool]

MODALITY_NAMES: tuple[str, str, str, str] = ("FLAIR", "T1", "T1ce", "T2")

_T, _F = True, False
ALL_SUBSETS: tuple[Mask, ...] = (
    (_F, _F, _F, _T),
    (_F, _F, _T, _F),
    (_F, _T, _F, _F),
    (_T, _F, _F, _F),
    (_F, _F, _T, _T),
    (_F, _T, _T, _F),
    (_T, _T, _F, _F),
    (_F, _T, _F, _T),
    (_T, _F, _F, _T),
    (_T, _F, _T, _F),
    (_T, _T, _T, _F),
    (_T, _T, _F, _T),
    (_T, _F, _T, _T),
    (_F, _T, _T, _T),
    (_T, _T, _T, _T),
)


def _as_mask(mask: Sequence[bool] | np.ndarray, what: str = "modality mask") -> Mask:
    values = [bool(v) for v in np.asarray(mask).reshape(-1)]
    if len(values) != len(MODALITIES):
        raise ValueError(
            f"{what} must have {len(MODALITIES)} entries ({', '.join(MODALITY_NAMES)}), "
            f"got {len(values)}: {list(values)}"
        )
    return (values[0], values[1], values[2], values[3])


def subset_name(mask: Sequence[bool] | np.ndarray) -> str:
    """Readable name of a subset, modalities joined by ``+`` in ``MODALITIES`` order.

    Parameters
    ----------
    mask : sequence of 4 bool
        Availability of (FLAIR, T1, T1ce, T2).

    Returns
    -------
    str
        E.g. ``"FLAIR+T1ce"`` for ``(True, False, True, False)``.

    Raises
    ------
    ValueError
        The mask does not have four entries or selects no modality.
    """
    m = _as_mask(mask)
    if not any(m):
        raise ValueError("modality mask selects no modality; every subset needs at least one")
    return "+".join(name for name, on in zip(MODALITY_NAMES, m, strict=True) if on)


def subset_index(mask: Sequence[bool] | np.ndarray) -> int:
    """Row of ``mask`` in ``ALL_SUBSETS`` (0..14); ``ValueError`` for the empty mask."""
    m = _as_mask(mask)
    if m not in ALL_SUBSETS:
        raise ValueError("modality mask selects no modality; every subset needs at least one")
    return ALL_SUBSETS.index(m)


def allowed_subsets(present: Sequence[bool] | np.ndarray | None = None) -> tuple[Mask, ...]:
    """The subsets of ``ALL_SUBSETS`` that use only modalities in ``present``.

    Parameters
    ----------
    present : sequence of 4 bool, optional
        Modalities a sample actually has; ``None`` means all four.

    Raises
    ------
    ValueError
        ``present`` has no modality at all.
    """
    if present is None:
        return ALL_SUBSETS
    have = _as_mask(present, "present")
    if not any(have):
        raise ValueError(f"present={list(have)} has no modality; no subset can be drawn")
    return tuple(s for s in ALL_SUBSETS if all(h or not s_ for s_, h in zip(s, have, strict=True)))


def draw_subset(
    rng: np.random.Generator, present: Sequence[bool] | np.ndarray | None = None
) -> Mask:
    """Draw one non-empty modality subset uniformly among those allowed by ``present``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (one integer draw).
    present : sequence of 4 bool, optional
        Modalities the sample has; the drawn subset never uses an absent one.
        ``None`` (all present) draws uniformly among all 15 subsets.

    Returns
    -------
    tuple of 4 bool
        A member of ``ALL_SUBSETS``.
    """
    choices = allowed_subsets(present)
    return choices[int(rng.integers(len(choices)))]
