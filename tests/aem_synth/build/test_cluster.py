"""Determinism across schedulers: 1 worker, 2 workers and an external `dask` cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aem_synth.build import BuildOptions, build
from aem_synth.store.shards import ShardReader, list_samples


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 small phantom cases (48x48x32, BraTS 2020 layout)."""
    from aem_synth.phantom.generator import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_cases=5, layout="brats2020", seed=13, shape=(48, 48, 32))
    return root


def _stable_meta(text: str) -> dict:
    """Sample meta without the calibration wall time (the one field that may differ)."""
    meta = json.loads(text)
    meta.get("calibration", {}).pop("seconds", None)
    return meta


def _arrays(root: Path) -> dict[str, tuple[bytes, bytes, dict]]:
    out = {}
    for kind in ("real", "synthetic"):
        for ref in list_samples(root, kind):
            with ShardReader(ref.shard) as r:
                g = r.file["samples"][ref.sample_id]
                out[ref.sample_id] = (
                    g["image"][()].tobytes(),
                    g["label"][()].tobytes(),
                    _stable_meta(g.attrs["meta"]),
                )
    return out


def _options(root: Path, out: Path, **kw) -> BuildOptions:
    return BuildOptions(
        root=root, out=out, multiplier=2, shard_size=3, seed=7, progress=False, **kw
    )


def _dask_cli() -> list[str]:
    exe = shutil.which("dask", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "distributed.cli.dask_scheduler"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"dask scheduler did not write {path} (exit {proc.poll()})")
        time.sleep(0.05)  # polling for the scheduler file, the event we wait on


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("cluster")
    sched_file = folder / "scheduler.json"
    dask = _dask_cli()
    procs: list[subprocess.Popen] = []

    def start(args: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(
            [*dask, *args], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(p)
        return p

    try:
        sched = start(
            [
                "scheduler",
                "--scheduler-file",
                str(sched_file),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
            ]
        )
        _wait_for(sched_file, sched)
        for _ in range(2):
            start(
                [
                    "worker",
                    "--scheduler-file",
                    str(sched_file),
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                ]
            )
        with Client(scheduler_file=str(sched_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def one_worker(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "shards"
    build(_options(phantoms, out, workers=1))
    return out


@pytest.mark.timeout(600)
def test_two_workers_equal_one_worker(phantoms: Path, one_worker: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    summary = build(_options(phantoms, out, workers=2))
    assert summary.synthetic_samples > 0
    assert _arrays(out) == _arrays(one_worker)
    assert not (out / ".work").exists()


@pytest.mark.timeout(600)
def test_external_cluster_equals_local(
    phantoms: Path,
    one_worker: Path,
    external_cluster: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "external"
    build(_options(phantoms, out, scheduler=external_cluster))
    assert _arrays(out) == _arrays(one_worker)

    # The environment variable selects the same cluster when no option is given.
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", external_cluster)
    env_out = tmp_path / "env"
    build(_options(phantoms, env_out))
    assert _arrays(env_out) == _arrays(one_worker)
