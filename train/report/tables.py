"""The 15-subset results table of the paper, as Markdown and CSV, and the per-case CSV.

A *record* is one (case, subset) evaluation: a dict with ``case_id``,
``subset`` (name, e.g. ``"FLAIR+T1ce"``), ``mask`` (4 bools, FLAIR, T1, T1ce,
T2) and the metric keys of :func:`train.inference.metrics.case_metrics`
(``dice_WT`` ... ``hd95_ET``; Dice as a fraction, HD95 in mm).

Table rows follow ``train.data.subsets.ALL_SUBSETS`` (the RFNet table order), one
column per modality with ● (present) / ○ (absent), then WT, TC, ET; each cell
is the mean over cases.  The ``Average`` row is the mean of the 15 rows.  A case
that lacks a modality on disk is evaluated only on the subsets it has, so rows
can average different numbers of cases: the Markdown table then gains an ``n``
column (the CSV always has ``n_cases``), and a row with no case stays empty and
out of the average.
Dice is shown in percent, HD95 in mm, both with two decimals.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aem_synth.types import REGIONS
from train.data.subsets import ALL_SUBSETS, MODALITY_NAMES, Mask, subset_name

__all__ = [
    "ABSENT_MARK",
    "METRICS",
    "PRESENT_MARK",
    "SubsetTable",
    "subset_table",
    "to_markdown",
    "write_per_case_csv",
    "write_table_csv",
]

REGION_NAMES: tuple[str, ...] = tuple(REGIONS)

PRESENT_MARK = "●"
ABSENT_MARK = "○"
METRICS: dict[str, tuple[str, float]] = {"dice": ("Dice (%)", 100.0), "hd95": ("HD95 (mm)", 1.0)}


@dataclass(frozen=True)
class SubsetTable:
    """Mean metric per modality subset and region.

    Attributes
    ----------
    metric : str
        ``"dice"`` (values are fractions; shown x100) or ``"hd95"`` (mm).
    subsets : tuple of masks
        Row order.
    values : ndarray, float64, (n_subsets, 3)
        Mean over cases; columns WT, TC, ET.
    n_cases : int
        Cases averaged in the fullest row.
    counts : tuple of int
        Cases averaged in each row (rows with 0 hold NaN).
    """

    metric: str
    subsets: tuple[Mask, ...]
    values: np.ndarray
    n_cases: int
    counts: tuple[int, ...] = ()

    @property
    def uniform(self) -> bool:
        """Every row averages the same cases' count."""
        return len(set(self.counts)) <= 1

    @property
    def average(self) -> np.ndarray:
        """Mean of the rows that have cases, float64 (3,) for WT, TC, ET."""
        rows = self.values[[c > 0 for c in self.counts]] if self.counts else self.values
        return rows.mean(axis=0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with subset names as keys (raw units: fraction or mm)."""
        rows = {
            subset_name(s): dict(zip(REGION_NAMES, map(float, v), strict=True))
            for s, v in zip(self.subsets, self.values, strict=True)
        }
        return {
            "metric": self.metric,
            "n_cases": self.n_cases,
            "counts": {subset_name(s): c for s, c in zip(self.subsets, self.counts, strict=True)},
            "rows": rows,
            "average": dict(zip(REGION_NAMES, map(float, self.average), strict=True)),
        }


def subset_table(
    records: Iterable[Mapping[str, Any]],
    metric: str,
    subsets: Sequence[Mask] = ALL_SUBSETS,
) -> SubsetTable:
    """Aggregate per-case records into the subset table of one metric.

    Raises
    ------
    ValueError
        Unknown metric or no records.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    by_subset: dict[Mask, list[list[float]]] = {tuple(s): [] for s in subsets}  # type: ignore[misc]
    for r in records:
        key = tuple(bool(m) for m in r["mask"])
        if key in by_subset:
            by_subset[key].append([float(r[f"{metric}_{reg}"]) for reg in REGION_NAMES])
    counts = tuple(len(v) for v in by_subset.values())
    if not any(counts):
        raise ValueError(f"no {metric} records for any of the {len(subsets)} subsets")
    values = np.array(
        [np.mean(v, axis=0) if v else [np.nan] * len(REGION_NAMES) for v in by_subset.values()],
        dtype=np.float64,
    )
    return SubsetTable(metric, tuple(by_subset), values, max(counts), counts)


def _marks(mask: Mask) -> list[str]:
    return [PRESENT_MARK if m else ABSENT_MARK for m in mask]


def to_markdown(table: SubsetTable, title: str | None = None) -> str:
    """The table as GitHub Markdown (● present, ○ absent; Dice in %, HD95 in mm)."""
    label, scale = METRICS[table.metric]
    n_col = [] if table.uniform else ["n"]
    head = [*MODALITY_NAMES, *n_col, *(f"{label} {r}" for r in REGION_NAMES)]
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + ":-:|" * len(MODALITY_NAMES) + "--:|" * (len(n_col) + len(REGION_NAMES)))
    counts = table.counts or (table.n_cases,) * len(table.subsets)
    for s, v, n in zip(table.subsets, table.values, counts, strict=True):
        n_cell = [str(n)] if n_col else []
        cells = [*_marks(s), *n_cell, *(f"{x * scale:.2f}" if n else "-" for x in v)]
        lines.append("| " + " | ".join(cells) + " |")
    avg = [
        "**Average**",
        "",
        "",
        "",
        *([""] if n_col else []),
        *(f"**{x * scale:.2f}**" for x in table.average),
    ]
    lines.append("| " + " | ".join(avg) + " |")
    return "\n".join(lines) + "\n"


def write_table_csv(table: SubsetTable, path: Path) -> Path:
    """CSV of the table: flags as 1/0, subset name, values in the table's units."""
    label, scale = METRICS[table.metric]
    unit = label.split(" ", 1)[1].strip("()")
    head = [
        "subset",
        *MODALITY_NAMES,
        *(f"{table.metric}_{r}_{unit}" for r in REGION_NAMES),
        "n_cases",
    ]
    counts = table.counts or (table.n_cases,) * len(table.subsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for s, v, n in zip(table.subsets, table.values, counts, strict=True):
            w.writerow([subset_name(s), *map(int, s), *(f"{x * scale:.4f}" for x in v), n])
        avg = [f"{x * scale:.4f}" for x in table.average]
        w.writerow(["Average", "", "", "", "", *avg, ""])
    return path


def write_per_case_csv(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One row per (case, subset): ids, flags, Dice (fraction) and HD95 (mm) per region."""
    metrics = [f"{m}_{r}" for m in METRICS for r in REGION_NAMES]
    head = ["case_id", "subset", *MODALITY_NAMES, *metrics]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for r in records:
            flags = [int(bool(m)) for m in r["mask"]]
            w.writerow([r["case_id"], r["subset"], *flags, *(f"{r[k]:.6f}" for k in metrics)])
    return path
