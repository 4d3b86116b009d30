"""The threshold floor: fitted on training cases, far lower on hard phantoms than on simple ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from aem_synth.phantom.generator import write_phantom_dataset
from pipelines.floor import floor_for_root


@pytest.mark.parametrize("variant", ["simple", "hard"])
def test_floor(tmp_path: Path, variant: str) -> None:
    folders = write_phantom_dataset(
        tmp_path, n_cases=8, seed=3, shape=(64, 64, 48), variant=variant
    )
    ids = [f.name for f in folders]
    result = floor_for_root(tmp_path, ids[:4], ids[4:])
    assert set(result.test) == {"WT", "TC", "ET"}
    assert all(0.0 <= v <= 1.0 for v in result.test.values())
    if variant == "simple":
        assert result.test["WT"] > 0.9 and result.test["ET"] > 0.9
    else:
        assert result.test["WT"] < 0.7 and result.test["ET"] < 0.7
