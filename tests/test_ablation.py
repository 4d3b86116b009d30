"""The ablation runner's smoke profile end to end: every arm, three seeds, resumable outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from aem_synth.dataset.preprocess import bounding_box
from aem_synth.phantom.generator import make_phantom_case
from pipelines.ablation import BASE_ARMS, PROFILES, main, paired_difference


def test_smoke_profile_writes_results_summary_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    res = CliRunner().invoke(main, ["--profile", "smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == list(BASE_ARMS)
    for arm, a in results["arms"].items():
        assert [s["seed"] for s in a["per_seed"]] == [0, 1, 2]
        assert len(a["per_seed"][0]["table"]["rows"]) == 15
        assert ("vs_baseline" in a) == (arm != "baseline")
    summary = (out / "summary.md").read_text()
    assert "| threshold floor |" in summary and "| aem_kd |" in summary
    assert (out / "ablation.png").stat().st_size > 0
    # A second run resumes everything: no stage or evaluation is redone.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    again = CliRunner().invoke(main, ["--profile", "smoke", "--out", str(out)])
    assert again.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before


def test_paired_difference_interval_contains_the_mean() -> None:
    def doc(shift: float) -> dict:
        records = [
            {
                "case_id": f"c{i}",
                "subset": "T2",
                "mask": [0, 0, 0, 1],
                **{f"dice_{r}": 0.5 + shift + 0.01 * i for r in ("WT", "TC", "ET")},
            }
            for i in range(10)
        ]
        return {"records": records}

    out = paired_difference([doc(0.1)], [doc(0.0)], np.random.default_rng(0))
    for r in ("WT", "TC", "ET"):
        assert abs(out[r]["mean"] - 0.1) < 1e-9
        assert out[r]["ci_low"] <= out[r]["mean"] <= out[r]["ci_high"] and out[r]["cases"] == 10


def test_every_profile_crop_fits_its_phantoms_brain_boxes() -> None:
    # Training refuses a crop larger than every stored (brain-box) volume along an axis.
    for name, profile in PROFILES.items():
        for seed in range(3):
            mask = make_phantom_case(seed, profile.shape).brain_mask
            extents = [hi - lo for lo, hi in bounding_box(mask)]
            assert min(extents) >= profile.crop, (name, seed, extents)
