"""Fault replay: kill -9 at each phase of each tool, and concurrent builds, against undisturbed runs.

Generates small phantoms, makes one undisturbed run of everything (build,
pretrain, train, posttrain, predict), then replays each fault on a fresh copy
and finishes the interrupted work by re-running the same command:

* ``aem-synth build`` killed (the whole process group, Dask workers too) in the
  case phase (after the first per-case intermediate appears) and in the shard
  phase (after the first shard is recorded done);
* a second ``aem-synth build`` into a store that is being built;
* ``train run --stage S`` killed after its first ``last.pt``, for each stage;
* ``train predict`` killed while it writes its output (after the labels are
  written under the temporary name, before the rename).

Prints one row per fault: what happened, whether ``aem-synth verify`` passes,
and whether the arrays (samples, final weights, written labels) equal those of
the undisturbed run.  Exit status 1 when any row is not as expected.

Run: ``python benchmarks/fault_replay.py [--keep DIR]`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILD_ARGS = ["--multiplier", "2", "--workers", "1", "--shard-size", "2", "--seed", "4"]
TRAIN_CONFIG = """
name = "faults"
shards = "{shards}"
runs_dir = "{runs}"
seed = 1
device = "cpu"
workers = 0

[model]
base_channels = 4

[data]
crop = [24, 24, 24]
val_cases = 1

[stage.pretrain]
epochs = 4
iters_per_epoch = 3
batch_size = 1
checkpoint_every = 1
validate_every = 0

[stage.train]
epochs = 4
iters_per_epoch = 3
batch_size = 1
checkpoint_every = 1
validate_every = 2

[stage.posttrain]
epochs = 4
iters_per_epoch = 3
batch_size = 1
checkpoint_every = 1
validate_every = 0
"""


@dataclass
class Row:
    fault: str
    result: str
    verified: str
    identical: str
    ok: bool


def _tool(name: str) -> list[str]:
    module = {"aem-synth": "aem_synth.cli", "train": "train.cli"}[name]
    return [sys.executable, "-m", module]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _kill_when(cmd: list[str], ready: Callable[[], bool], deadline_s: float = 600) -> str:
    """Start ``cmd`` in its own process group; SIGKILL the group once ``ready()``.

    Returns ``"killed"``, or ``"finished first (rc N)"`` when the command ended
    before the condition held.
    """
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    end = time.monotonic() + deadline_s
    try:
        while not ready():
            if proc.poll() is not None:
                return f"finished first (rc {proc.returncode})"
            if time.monotonic() > end:
                return "deadline passed"
            time.sleep(0.01)  # polling for the file that marks the moment to kill
        os.killpg(proc.pid, signal.SIGKILL)
        return "killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _store_arrays(root: Path) -> dict[str, tuple[bytes, bytes]]:
    from aem_synth.store.shards import ShardReader, list_samples

    out = {}
    for kind in ("real", "synthetic"):
        for ref in list_samples(root, kind):
            with ShardReader(ref.shard) as r:
                out[ref.sample_id] = (
                    r.image(ref.sample_id, dtype=None).tobytes(),
                    r.label(ref.sample_id).tobytes(),
                )
    return out


def _verified(root: Path) -> str:
    from aem_synth.store.verify import verify_store

    report = verify_store(root)
    return "yes" if report.ok else f"NO: {report.problems[0]}"


def _weights(path: Path) -> dict[str, np.ndarray]:
    from train.fit.checkpoint import load_checkpoint

    return {k: v.numpy() for k, v in load_checkpoint(path)["model"].items()}


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


class Replay:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[Row] = []
        self.phantoms = work / "phantoms"
        self.reference = work / "reference"

    def build_cmd(self, out: Path) -> list[str]:
        return [
            *_tool("aem-synth"),
            "build",
            "--in",
            str(self.phantoms),
            "--out",
            str(out),
            "--no-progress",
            *BUILD_ARGS,
        ]

    def setup(self) -> None:
        from aem_synth.phantom.generator import write_phantom_dataset

        write_phantom_dataset(
            self.phantoms, n_cases=12, layout="brats2020", seed=8, shape=(64, 64, 48)
        )
        res = _run(self.build_cmd(self.reference / "shards"))
        if res.returncode:
            raise SystemExit(f"reference build failed: {res.stderr[-2000:]}")
        self.ref_arrays = _store_arrays(self.reference / "shards")
        for stage in ("pretrain", "train", "posttrain"):
            res = _run(self.train_cmd(self.reference, stage))
            if res.returncode:
                raise SystemExit(f"reference {stage} failed: {res.stderr[-2000:]}")
        self.case = sorted(p for p in self.phantoms.iterdir() if p.is_dir())[0]
        res = _run(self.predict_cmd(self.reference, self.reference / "pred.nii.gz"))
        if res.returncode:
            raise SystemExit(f"reference predict failed: {res.stderr[-2000:]}")

    def config(self, base: Path) -> Path:
        path = base / "config.toml"
        if not path.exists():
            path.write_text(TRAIN_CONFIG.format(shards=base / "shards", runs=base / "runs"))
        return path

    def train_cmd(self, base: Path, stage: str) -> list[str]:
        return [
            *_tool("train"),
            "run",
            "--stage",
            stage,
            "--config",
            str(self.config(base)),
            "--no-progress",
        ]

    def predict_cmd(self, base: Path, out: Path) -> list[str]:
        ckpt = base / "runs" / "faults" / "posttrain" / "final.pt"
        return [
            *_tool("train"),
            "predict",
            "--checkpoint",
            str(ckpt),
            "--case",
            str(self.case),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]

    def build_fault(self, name: str, ready_glob: str) -> None:
        out = self.work / name / "shards"
        out.mkdir(parents=True)
        result = _kill_when(self.build_cmd(out), lambda: any(out.glob(ready_glob)))
        partial = "manifest absent" if not (out / "manifest.json").exists() else "manifest present"
        res = _run(self.build_cmd(out))
        verified = _verified(out)
        same = res.returncode == 0 and _store_arrays(out) == self.ref_arrays
        ok = result == "killed" and partial == "manifest absent" and verified == "yes" and same
        self.rows.append(
            Row(
                name,
                f"{result}; {partial}; rerun rc {res.returncode}",
                verified,
                "yes" if same else "NO",
                ok,
            )
        )

    def concurrent_builds(self) -> None:
        from aem_synth.store.lock import build_in_progress

        out = self.work / "concurrent" / "shards"
        out.mkdir(parents=True)
        first = subprocess.Popen(
            self.build_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while build_in_progress(out) is None and first.poll() is None:
            time.sleep(0.01)  # polling for the first build's lock
        second = _run(self.build_cmd(out))
        first.wait()
        refused = second.returncode != 0 and "is being built by" in second.stderr
        verified = _verified(out)
        same = first.returncode == 0 and _store_arrays(out) == self.ref_arrays
        result = f"second build {'refused at once' if refused else 'NOT REFUSED'}; first rc {first.returncode}"
        self.rows.append(
            Row(
                "concurrent build",
                result,
                verified,
                "yes" if same else "NO",
                refused and verified == "yes" and same,
            )
        )

    def stage_fault(self, stage: str) -> None:
        base = self.work / f"kill-{stage}"
        base.mkdir()
        shutil.copytree(self.reference / "shards", base / "shards")
        runs_ref = self.reference / "runs" / "faults"
        for prev in ("pretrain", "train", "posttrain"):
            if prev == stage:
                break
            shutil.copytree(runs_ref / prev, base / "runs" / "faults" / prev)
        last = base / "runs" / "faults" / stage / "last.pt"
        result = _kill_when(self.train_cmd(base, stage), last.exists)
        res = _run(self.train_cmd(base, stage))
        final = base / "runs" / "faults" / stage / "final.pt"
        same = res.returncode == 0 and _same_weights(final, runs_ref / stage / "final.pt")
        self.rows.append(
            Row(
                f"kill -9 train {stage}",
                f"{result}; rerun rc {res.returncode}",
                "-",
                "yes" if same else "NO",
                result == "killed" and same,
            )
        )

    def predict_fault(self) -> None:
        """Kill ``train predict`` at the worst moment: its output written under the temporary
        name, not yet renamed (a patched writer kills its own process there)."""
        out = self.work / "predict" / "pred.nii.gz"
        out.parent.mkdir()
        killer = (
            "import os, signal, sys\n"
            "import aem_synth.dataset.preprocess as pre\n"
            "from train.cli import main\n"
            "write = pre._write_nifti\n"
            "def write_then_die(*a, **k):\n"
            "    write(*a, **k)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "pre._write_nifti = write_then_die\n"
            "sys.argv = ['train', *sys.argv[1:]]\n"
            "main()\n"
        )
        cmd = self.predict_cmd(self.reference, out)
        killed = subprocess.run([sys.executable, "-c", killer, *cmd[3:]], capture_output=True)
        result = "killed" if killed.returncode == -signal.SIGKILL else f"rc {killed.returncode}"
        partial = "no file at the target" if not out.exists() else "FILE AT TARGET"
        leftovers = len(list(out.parent.glob(".tmp-*")))
        res = _run(cmd)
        leftovers_after = len(list(out.parent.glob(".tmp-*")))
        same = (
            res.returncode == 0
            and out.read_bytes() == (self.reference / "pred.nii.gz").read_bytes()
        )
        self.rows.append(
            Row(
                "kill -9 predict while writing",
                f"{result} before rename; {partial}; rerun rc {res.returncode} "
                f"(temp files {leftovers} -> {leftovers_after})",
                "-",
                "yes" if same else "NO",
                result == "killed"
                and partial == "no file at the target"
                and leftovers_after == 0
                and same,
            )
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary one)")
    args = p.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    work = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    replay = Replay(work)
    replay.setup()
    replay.build_fault("kill -9 build, case phase", ".work/*.h5")
    replay.build_fault("kill -9 build, shard phase", "*/*.h5.done.json")
    replay.concurrent_builds()
    for stage in ("pretrain", "train", "posttrain"):
        replay.stage_fault(stage)
    replay.predict_fault()
    widths = (32, 62, 9, 10)
    head = ("fault", "result", "verified", "identical")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in replay.rows:
        cells = (r.fault, r.result, r.verified, r.identical)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    bad = [r.fault for r in replay.rows if not r.ok]
    print(
        f"{len(replay.rows) - len(bad)}/{len(replay.rows)} as expected "
        f"({time.perf_counter() - t0:.0f} s)" + (f"; NOT: {', '.join(bad)}" if bad else "")
    )
    if tmp is not None:
        tmp.cleanup()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
