"""Validation history across stages (the demo's Dice-against-steps figure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.report.plots import MetricsLog, plot_validation_history, validation_history


def _log(path: Path, steps: int, validated: dict[int, float]) -> Path:
    log = MetricsLog(path)
    for s in range(1, steps + 1):
        row: dict[str, float | int] = {"step": s, "epoch": 0, "lr": 0.1, "loss": 1.0}
        if s in validated:
            v = validated[s]
            row |= {"val_wt": v, "val_tc": v, "val_et": v, "val_wt_all": v, "val_score": v}
        log.append(row)
    return path


def test_history_offsets_each_stage_by_the_steps_before_it(tmp_path: Path) -> None:
    stages = {
        "pretrain": _log(tmp_path / "a.csv", 4, {4: 0.2}),
        "train": _log(tmp_path / "b.csv", 6, {3: 0.5, 6: 0.7}),
        "posttrain": tmp_path / "missing.csv",
    }
    history = validation_history(stages)
    assert [(h["stage"], h["step"]) for h in history] == [
        ("pretrain", 4),
        ("train", 7),
        ("train", 10),
    ]
    assert [h["val_score"] for h in history] == pytest.approx([0.2, 0.5, 0.7])
    assert "val_et_all" not in history[0]  # columns left empty are not invented
    png = plot_validation_history(stages, tmp_path / "v.png")
    assert png is not None and png.stat().st_size > 0


def test_no_validation_no_figure(tmp_path: Path) -> None:
    stages = {"train": _log(tmp_path / "b.csv", 3, {})}
    assert validation_history(stages) == []
    assert plot_validation_history(stages, tmp_path / "v.png") is None
    assert not (tmp_path / "v.png").exists()
