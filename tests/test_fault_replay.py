"""The fault replay script end to end (slow: about two minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_replay.py"


@pytest.mark.slow
def test_every_fault_ends_as_expected() -> None:
    res = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=1200
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "7/7 as expected" in res.stdout
