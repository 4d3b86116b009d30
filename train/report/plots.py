"""Training history of a stage: ``metrics.csv`` (one row per optimiser step) and its loss-curve PNG.

``metrics.csv`` columns: ``step`` (1-based optimiser step), ``epoch``
(0-based epoch the step belongs to), ``lr``, ``loss`` (total), one column per
loss part (e.g. ``seg``, ``kd``, ``kd_feat``), ``samples_per_s`` (training
throughput of all ranks together, data loading included), then the
full-volume validation columns (filled on the last step of a validated epoch,
empty elsewhere): Dice of WT/TC/ET with all four modalities
(``val_wt_all``...), their means over the 15 modality subsets (``val_wt``...),
``val_score`` (mean of those three, the ``best.pt`` criterion) and
``val_seconds``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIXED_HEAD",
    "VAL_COLUMNS",
    "MetricsLog",
    "plot_loss_curve",
    "plot_validation_history",
    "read_metrics",
    "validation_history",
]

FIXED_HEAD = ("step", "epoch", "lr", "loss")
VAL_COLUMNS = (
    "val_wt_all",
    "val_tc_all",
    "val_et_all",
    "val_wt",
    "val_tc",
    "val_et",
    "val_score",
    "val_seconds",
)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` as dicts of strings (empty list when the file is absent)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class MetricsLog:
    """Append-only ``metrics.csv`` whose loss-part columns are fixed by the first row.

    Parameters
    ----------
    path : Path
        The CSV file; created on the first :meth:`append`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        rows = read_metrics(self.path)
        self.columns: list[str] | None = list(rows[0].keys()) if rows else None

    def reset(self) -> None:
        """Delete the file; the next :meth:`append` starts a new one."""
        self.path.unlink(missing_ok=True)
        self.columns = None

    def truncate_after(self, step: int) -> int:
        """Drop rows with ``step`` greater than ``step`` (written after the checkpoint being resumed).

        Returns the number of rows kept.  The file is rewritten atomically.
        """
        rows = read_metrics(self.path)
        if not rows:
            return 0
        keep = [r for r in rows if int(r["step"]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(keep)
        os.replace(tmp, self.path)
        return len(keep)

    def append(self, row: Mapping[str, float | int | str]) -> None:
        """Write one row (flushed); unknown keys after the first row are ignored."""
        if self.columns is None:
            parts = sorted(k for k in row if k not in (*FIXED_HEAD, "samples_per_s", *VAL_COLUMNS))
            self.columns = [*FIXED_HEAD, *parts, "samples_per_s", *VAL_COLUMNS]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.columns).writeheader()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _series(rows: Sequence[Mapping[str, str]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key, "")
        if v not in ("", None) and math.isfinite(float(v)):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_loss_curve(metrics_csv: Path, png: Path, title: str = "") -> Path | None:
    """Draw training loss (raw and moving average), loss parts and validation curves to ``png``.

    Uses the non-interactive Agg backend; the PNG is replaced atomically.
    Returns ``None`` when there is nothing to plot yet.
    """
    rows = read_metrics(metrics_csv)
    if not rows:
        return None
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    xs, ys = _series(rows, "loss")
    ax_loss.plot(xs, ys, color="0.75", lw=0.8, label="loss (per step)")
    ax_loss.plot(
        xs, _smooth(ys, max(1, len(ys) // 20)), color="k", lw=1.5, label="loss (moving avg)"
    )
    skip = {*FIXED_HEAD, "samples_per_s", *VAL_COLUMNS}
    for key in [k for k in rows[0] if k not in skip]:
        px, py = _series(rows, key)
        ax_loss.plot(px, _smooth(py, max(1, len(py) // 20)), lw=1.0, label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title=title or "training loss")
    ax_loss.legend(fontsize=7)
    colours = {"wt": "tab:green", "tc": "tab:orange", "et": "tab:red"}
    for region, colour in colours.items():
        mx, my = _series(rows, f"val_{region}")
        ax_val.plot(
            mx, my, marker="o", ms=3, color=colour, label=f"{region.upper()} (15-subset mean)"
        )
        ax, ay = _series(rows, f"val_{region}_all")
        ax_val.plot(
            ax, ay, ls="--", marker=".", color=colour, label=f"{region.upper()} (all modalities)"
        )
    ax_val.set(xlabel="step", ylabel="Dice", ylim=(0.0, 1.0), title="validation (full volumes)")
    ax_val.legend(loc="lower right", fontsize=7)
    return _save(fig, png)


def _read_stages(stages: Mapping[str, Path]) -> list[tuple[str, int, list[dict[str, str]]]]:
    """``(stage, steps before it, rows)`` per stage, each ``metrics.csv`` read once."""
    out, offset = [], 0
    for stage, path in stages.items():
        rows = read_metrics(Path(path))
        out.append((stage, offset, rows))
        offset += int(rows[-1]["step"]) if rows else 0
    return out


def _history(read: list[tuple[str, int, list[dict[str, str]]]]) -> list[dict[str, float | str]]:
    out: list[dict[str, float | str]] = []
    for stage, offset, rows in read:
        for r in rows:
            if r.get("val_score"):
                row: dict[str, float | str] = {"stage": stage, "step": offset + int(r["step"])}
                row |= {k: float(r[k]) for k in VAL_COLUMNS if r.get(k)}
                out.append(row)
    return out


def validation_history(stages: Mapping[str, Path]) -> list[dict[str, float | str]]:
    """Validated rows of several stages' ``metrics.csv`` on one step axis.

    ``stages`` maps stage name -> ``metrics.csv`` in run order; a stage's steps
    are offset by the steps of the stages before it.  Each returned row has
    ``stage``, ``step`` (cumulative) and the :data:`VAL_COLUMNS` as floats.
    """
    return _history(_read_stages(stages))


def plot_validation_history(stages: Mapping[str, Path], png: Path, title: str = "") -> Path | None:
    """Full-volume validation Dice against cumulative steps across stages, to ``png``.

    Solid: mean over the 15 modality subsets; dashed: all four modalities;
    dotted vertical lines: stage ends.  ``None`` when no stage was validated.
    """
    read = _read_stages(stages)
    history = _history(read)
    if not history:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    steps = [float(h["step"]) for h in history]
    for region, colour in (("wt", "tab:green"), ("tc", "tab:orange"), ("et", "tab:red")):
        mean = [float(h.get(f"val_{region}", math.nan)) for h in history]
        every = [float(h.get(f"val_{region}_all", math.nan)) for h in history]
        ax.plot(steps, mean, marker="o", color=colour, label=f"{region.upper()} 15-subset mean")
        ax.plot(steps, every, ls="--", marker=".", color=colour, label=f"{region.upper()} all")
    for stage, offset, rows in read:
        end = offset + (int(rows[-1]["step"]) if rows else 0)
        ax.axvline(end, color="0.6", ls=":", lw=1)
        ax.text(end, 0.02, f" end of {stage}", rotation=90, fontsize=7, va="bottom")
    ax.set(xlabel="step (all stages)", ylabel="Dice", ylim=(0.0, 1.0))
    ax.set_title(title or "full-volume validation Dice")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, png)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, png: Path) -> Path:
    """Write ``fig`` to ``png`` atomically (temporary name, then rename) and close it."""
    tmp = png.with_name(f".{png.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    _pyplot().close(fig)
    os.replace(tmp, png)
    return png
