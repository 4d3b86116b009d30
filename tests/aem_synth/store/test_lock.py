"""The build lock: held for a build's lifetime, released by the kernel when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aem_synth.store.lock import StoreBusyError, build_in_progress, build_lock
from aem_synth.store.shards import read_manifest

HOLDER = """
import sys
from aem_synth.store.lock import build_lock
with build_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # held until the test closes stdin or kills us
"""


def test_second_lock_fails_naming_the_holder(tmp_path: Path) -> None:
    with build_lock(tmp_path):
        holder = build_in_progress(tmp_path)
        assert holder is not None and f"pid {os.getpid()}" in holder
        with pytest.raises(StoreBusyError, match=rf"is being built by pid {os.getpid()} on "):
            with build_lock(tmp_path):
                pass
        with pytest.raises(StoreBusyError, match="wait for the build to end"):
            read_manifest(tmp_path)
    assert build_in_progress(tmp_path) is None
    with build_lock(tmp_path):  # free again
        pass


def test_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        holder = build_in_progress(tmp_path)
        assert holder is not None and f"pid {proc.pid}" in holder
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / ".build.lock").exists()  # left behind, but no longer held
    assert build_in_progress(tmp_path) is None
    with build_lock(tmp_path):
        pass


def test_read_only_store_without_lock_file_reads(tmp_path: Path) -> None:
    assert build_in_progress(tmp_path / "nowhere") is None
    assert build_in_progress(tmp_path) is None
