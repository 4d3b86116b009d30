"""A stage killed with SIGKILL resumes from last.pt to the same steps and the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.helpers import make_store, read_rows, tiny_config_file
from train.config_files import load_config
from train.fit.checkpoint import load_checkpoint
from train.fit.stages import run_stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OVERRIDES = [
    "stage.pretrain.epochs=3",
    "stage.pretrain.iters_per_epoch=4",
    "stage.pretrain.checkpoint_every=1",
    "stage.pretrain.validate_every=0",
]


def _command(config: Path) -> list[str]:
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return [
        sys.executable,
        "-m",
        "train.cli",
        "run",
        "--stage",
        "pretrain",
        "--config",
        str(config),
        "--no-progress",
        *sets,
    ]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def test_sigkilled_stage_resumes_to_the_same_steps_and_weights(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    config = tiny_config_file(tmp_path, store)
    cfg = load_config(config, OVERRIDES)
    out = cfg.stage_dir("pretrain")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }

    proc = subprocess.Popen(
        _command(config),
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_for(out / "last.pt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.pt").exists()
    killed_at = load_checkpoint(out / "last.pt")["step"]
    assert 1 <= killed_at < cfg.stage.pretrain.total_steps

    again = subprocess.run(_command(config), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resumed from {out / 'last.pt'} at step" in again.stderr
    steps = [int(r["step"]) for r in read_rows(out / "metrics.csv")]
    assert steps == list(range(1, cfg.stage.pretrain.total_steps + 1))  # no gap, no duplicate
    resumed = load_checkpoint(out / "final.pt")
    assert resumed["step"] == cfg.stage.pretrain.total_steps

    # The same stage without interruption, in-process, ends with the same weights.
    straight = load_config(config, [*OVERRIDES, f"runs_dir={tmp_path / 'straight'}"])
    model = run_stage(straight, "pretrain", progress=False).model
    assert model is not None
    for name, value in model.state_dict().items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-4, atol=1e-6, msg=name)
