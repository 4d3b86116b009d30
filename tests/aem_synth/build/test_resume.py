"""Resume: a build SIGKILLed mid-way and restarted equals an uninterrupted build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aem_synth.build import BuildOptions, build
from aem_synth.build.tasks import ShardSpec, done_path, finished_shard, run_shard
from aem_synth.store.cache import CaseSummary, write_case
from aem_synth.store.shards import ShardReader, list_samples
from aem_synth.store.verify import verify_store

ARGS = ["--multiplier", "2", "--workers", "1", "--shard-size", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 small phantom cases (48x48x32, BraTS 2020 layout)."""
    from aem_synth.phantom.generator import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_cases=5, layout="brats2020", seed=12, shape=(48, 48, 32))
    return root


def _arrays(root: Path) -> dict[str, tuple[bytes, bytes]]:
    out = {}
    for kind in ("real", "synthetic"):
        for ref in list_samples(root, kind):
            with ShardReader(ref.shard) as r:
                out[ref.sample_id] = (
                    r.file["samples"][ref.sample_id]["image"][()].tobytes(),
                    r.label(ref.sample_id).tobytes(),
                )
    return out


def _shard_files(root: Path) -> list[Path]:
    return [p for sub in ("real", "synthetic") for p in (root / sub).glob("*.h5")]


def _done_records(root: Path) -> list[Path]:
    return [p for sub in ("real", "synthetic") for p in (root / sub).glob("*.h5.done.json")]


def _kill_after_first_shard(cmd: list[str], out: Path, deadline_s: float = 240) -> None:
    """Run ``cmd`` in its own process group; SIGKILL the group once a shard is recorded done.

    The record, not the shard file, is what makes a shard reusable: a shard
    renamed into place but killed before its record is rebuilt.
    """
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        end = time.monotonic() + deadline_s
        while not _done_records(out):
            if proc.poll() is not None:
                pytest.fail(
                    f"build exited ({proc.returncode}) before any shard: "
                    f"{proc.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > end:
                pytest.fail("no shard appeared before the deadline")
            time.sleep(0.05)  # polling for the shard file, the event we wait on
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


@pytest.mark.timeout(600)
def test_killed_build_resumes_to_identical_store(phantoms: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    build(
        BuildOptions(
            root=phantoms,
            out=reference,
            multiplier=2,
            workers=1,
            shard_size=1,
            seed=3,
            progress=False,
        )
    )
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "aem_synth.cli",
        "build",
        "--in",
        str(phantoms),
        "--out",
        str(out),
        "--no-progress",
        *ARGS,
    ]
    _kill_after_first_shard(cmd, out)
    assert not (out / "manifest.json").exists()
    finished_before = {p.name for p in _done_records(out)}
    assert finished_before

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reused = int(result.stdout.split("shards: ")[1].split("(")[1].split()[0])
    assert reused >= 1

    assert verify_store(out).ok, verify_store(out).problems
    assert not list(out.rglob(".*.tmp-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(e["file"] for e in manifest["shards"])
    assert sorted(p.relative_to(out).as_posix() for p in _shard_files(out)) == files
    assert _arrays(out) == _arrays(reference)
    # Byte-identical shards: the resumed store has the id of the undisturbed one.
    assert manifest["store_id"] == json.loads((reference / "manifest.json").read_text())["store_id"]


def _store_with_cache(tmp_path: Path) -> tuple[Path, ShardSpec]:
    """A one-case intermediate and the spec of a real shard reading it (no cluster)."""
    rng = np.random.default_rng(0)
    shape = (10, 12, 8)
    image = np.zeros((4, *shape), np.float32)
    mask = np.zeros(shape, bool)
    mask[2:8, 3:9, 1:7] = True
    image[:, mask] = rng.standard_normal((4, int(mask.sum()))).astype(np.float32)
    label = np.where(mask, rng.integers(0, 4, shape), 0).astype(np.uint8)
    summary = CaseSummary(
        case_id="c0",
        layout="brats2020",
        source_key="k",
        full_shape=shape,
        box=((2, 8), (3, 9), (1, 7)),
        spacing=(1.0, 1.0, 1.0),
        present=(True,) * 4,
        has_tumour=True,
    )
    root = tmp_path / "store"
    write_case(root / ".work", summary, image, label, mask)
    spec = ShardSpec("real/train-00000.h5", "real", "train", ("c0",), "fp-1")
    run_shard(spec, str(root), str(root / ".work"))
    return root, spec


def test_completion_record_rules(tmp_path: Path) -> None:
    root, spec = _store_with_cache(tmp_path)
    info = finished_shard(root, spec)
    assert info is not None and info.samples == ("c0",)
    with ShardReader(root / spec.file) as r:
        assert r.shape("c0") == (6, 6, 6)
        assert r.meta("c0")["crop_box"] == [[2, 8], [3, 9], [1, 7]]

    changed = ShardSpec(spec.file, "real", "train", ("c0",), "fp-2")
    assert finished_shard(root, changed) is None

    path = root / spec.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert finished_shard(root, spec) is None

    run_shard(spec, str(root), str(root / ".work"))
    assert finished_shard(root, spec) is not None
    done_path(root, spec.file).unlink()
    assert finished_shard(root, spec) is None
