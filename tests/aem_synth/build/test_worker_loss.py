"""A worker lost in the middle of the shard phase (issue 14, DESIGN §6).

An external ``dask scheduler`` and three ``dask worker`` processes (one thread
each, each with its own ``--local-directory``) run ``aem-synth build
--scheduler``.  A worker that has finished a shard and is less than half-way
through writing the next one is killed with SIGKILL together with its nanny
(the whole process group, as when its machine or container dies: nothing
restarts it).  A second case kills only the worker process, so the nanny
starts a fresh one (as when the kernel's OOM killer picks the worker).

Either way the build must finish with exit status 0, ``aem-synth verify``
must pass, and every shard must be byte-identical to an undisturbed build.

What happens: the scheduler sees the worker's connection drop, removes it and
sends the tasks it was processing (running or queued there) back to the
others; each is marked "suspicious" once and would fail with ``KilledWorker``
only after ``distributed.scheduler.allowed-failures`` + 1 = 4 such deaths (the
build's ``retries`` count task exceptions, not worker deaths).  Results held
only by the dead worker and not yet gathered by the build are recomputed:
``run_shard`` then finds its own finished shard and returns its record
without writing it again, and the build releases each result once gathered,
so Dask does not rerun those at all.  The per-case intermediates are in
``OUT/.work``, not in the worker's local directory, so nothing of the case
phase is lost.  The dead writer's temporary file
(``.aem-0000k.h5.tmp-<pid>-<host>``) cannot collide with the rerun (another pid or host) and
is removed at the end of the build.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from aem_synth.build import BuildOptions, build
from aem_synth.build.tasks import done_path, finished_shard, run_shard
from aem_synth.store.shards import ShardReader, list_samples, read_manifest

from .test_resume import _store_with_cache

# 16 cases -> 11 training cases; x8 -> 88 synthetic samples in 11 shards of 8 (about a
# second each on a 2-core machine with 3 workers), then 3 real shards.
CASES, SHAPE, SEED = 16, (128, 128, 96), 3
BUILD = ("--multiplier", "8", "--shard-size", "8", "--seed", "5")
TMP_NAME = re.compile(r"^\..+\.h5\.tmp-(\d+)")
BIN = Path(sys.executable).parent


def _exe(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


AEM_SYNTH = _exe("aem-synth", "aem_synth.cli")
DASK_SCHEDULER = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
DASK_WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]


def _poll(what: str, ready: Any, timeout: float, interval: float = 0.01) -> Any:
    """Wait for ``ready()`` to return something truthy (polling a condition, not sleeping)."""
    end = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Cluster:
    """A scheduler and its workers, each in its own session (process group)."""

    folder: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen(
            argv, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted(self.folder.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM each process group we started, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in reversed(self.procs):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            for proc in reversed(self.procs):
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    continue
        for log in self.logs:
            log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """``dask scheduler`` + 3 ``dask worker`` (1 thread, own --local-directory, nanny)."""
    from distributed import Client

    folder = tmp_path / "cluster"
    folder.mkdir()
    c = Cluster(folder)
    sched_file = folder / "scheduler.json"
    try:
        sched = c.start(
            "scheduler",
            [
                *DASK_SCHEDULER,
                "--scheduler-file",
                str(sched_file),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
            ],
        )
        _poll("the scheduler file", lambda: sched_file.exists() or sched.poll() is not None, 60)
        assert sched.poll() is None, c.log_tail()
        for k in range(3):
            local = folder / f"local-{k}"
            local.mkdir()
            c.workers.append(
                c.start(
                    f"worker-{k}",
                    [
                        *DASK_WORKER,
                        "--scheduler-file",
                        str(sched_file),
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--local-directory",
                        str(local),
                        "--no-dashboard",
                    ],
                )
            )
        with Client(scheduler_file=str(sched_file), timeout="60s") as client:
            client.wait_for_workers(3, timeout=120)
            c.address = client.scheduler.address
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aem_synth.phantom.generator import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_cases=CASES, layout="brats2020", seed=SEED, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def undisturbed(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same build on the embedded cluster, nobody killed."""
    out = tmp_path_factory.mktemp("undisturbed") / "shards"
    opts = dict(zip(BUILD[::2], BUILD[1::2], strict=True))
    build(
        BuildOptions(
            root=phantoms,
            out=out,
            multiplier=int(opts["--multiplier"]),
            shard_size=int(opts["--shard-size"]),
            seed=int(opts["--seed"]),
            workers=2,
            progress=False,
        )
    )
    return out


def _arrays(root: Path) -> dict[str, str]:
    """sha256 of each sample's image and label arrays (with dtype and shape)."""
    out = {}
    for kind in ("real", "synthetic"):
        for ref in list_samples(root, kind):
            with ShardReader(ref.shard) as r:
                g = r.file["samples"][ref.sample_id]
                h = hashlib.sha256()
                for name in ("image", "label"):
                    a = g[name][()]
                    h.update(f"{a.dtype}{a.shape}".encode())
                    h.update(a.tobytes())
                out[ref.sample_id] = h.hexdigest()
    return out


def _checksums(root: Path) -> dict[str, str]:
    return {s["file"]: s["sha256"] for s in read_manifest(root)["shards"]}


def _half_written(out: Path) -> dict[Path, tuple[int, int]]:
    """Temporary shard files being written now: path -> (writer pid, bytes so far)."""
    found = {}
    for sub in ("synthetic", "real"):
        for path in (out / sub).glob(".*.tmp-*") if (out / sub).is_dir() else ():
            m = TMP_NAME.match(path.name)
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # renamed in the meantime
                continue
            if m:
                found[path] = (int(m.group(1)), size)
    return found


def _finished(out: Path) -> dict[str, tuple[int, int]]:
    """Finished shards and their records: relative path -> (inode, mtime in ns)."""
    found = {}
    for sub in ("synthetic", "real"):
        for path in (out / sub).glob("[!.]*") if (out / sub).is_dir() else ():
            st = path.stat()
            found[path.relative_to(out).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return found


@dataclass
class Kill:
    pid: int  # the killed worker process
    tmp: Path  # the shard it was writing
    finished_by_it: list[str]  # shards it had finished before
    finished: dict[str, tuple[int, int]]  # all finished shards at the kill (see _finished)


def _kill_mid_shard(
    out: Path, build_proc: subprocess.Popen[bytes], c: Cluster, whole_group: bool
) -> Kill:
    """SIGKILL a worker that has finished a shard and has just started writing another.

    The temporary files (``.<shard>.tmp-<pid>-<host>``) say which worker writes what;
    one that disappears with its shard in place was finished by that worker.
    """
    from distributed import Client

    with Client(c.address, timeout="30s") as client:
        worker_pid = client.run(os.getpid)  # worker address -> pid
        nanny_pid = client.run(os.getppid)  # the `dask worker` process we started
    nanny_of = {worker_pid[a]: nanny_pid[a] for a in worker_pid}
    procs = {p.pid: p for p in c.workers}
    assert set(nanny_of.values()) == set(procs), (nanny_of, list(procs))
    writing: dict[Path, tuple[int, int]] = {}
    finished_by: dict[int, list[str]] = {pid: [] for pid in nanny_of}

    def target() -> tuple[int, Path] | None:
        if build_proc.poll() is not None:
            raise AssertionError(f"the build ended before a worker could be killed: {finished_by}")
        now = _half_written(out)
        for tmp, (pid, _) in writing.items():
            shard = tmp.with_name(tmp.name[1:].split(".tmp-")[0])
            if tmp not in now and shard.exists() and pid in finished_by:
                finished_by[pid].append(shard.relative_to(out).as_posix())
        writing.clear()
        writing.update(now)
        sizes = [(out / f).stat().st_size for done in finished_by.values() for f in done]
        for tmp, (pid, size) in now.items():
            # A writer that finished a shard before and is less than half-way through this one.
            if finished_by.get(pid) and size < min(sizes) / 2:
                return pid, tmp
        return None

    pid, tmp = _poll("a worker that finished a shard to start another", target, timeout=180)
    finished = _finished(out)
    nanny = procs[nanny_of[pid]]
    if whole_group:
        os.killpg(nanny.pid, signal.SIGKILL)  # nanny + worker: the worker is gone for good
        nanny.wait(timeout=30)
    else:
        os.kill(pid, signal.SIGKILL)  # the worker only: its nanny starts a new one
    _poll(f"worker {pid} to die", lambda: not _alive(pid), timeout=30)
    return Kill(pid, tmp, finished_by[pid], finished)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("whole_group", [True, False], ids=["lost-for-good", "nanny-restarts"])
def test_worker_killed_mid_shard_phase(
    phantoms: Path, undisturbed: Path, cluster: Cluster, tmp_path: Path, whole_group: bool
) -> None:
    from distributed import Client

    out = tmp_path / "shards"
    argv = [*AEM_SYNTH, "build", "--in", str(phantoms), "--out", str(out), *BUILD]
    argv += ["--scheduler", cluster.address, "--no-progress"]
    build_log = tmp_path / "build.log"
    with open(build_log, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            kill = _kill_mid_shard(out, proc, cluster, whole_group)
            # Killed while writing: its temporary shard is left behind, half-written.
            assert kill.tmp.exists(), f"{kill.tmp.name} was finished before the kill"
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = build_log.read_text(errors="replace")
    assert rc == 0, f"build exit {rc}:\n{text}\n{cluster.log_tail()}"

    with Client(cluster.address, timeout="30s") as client:
        removed = [
            msg for _, msg in client.get_events("all") if msg.get("action") == "remove-worker"
        ]
        if whole_group:
            assert len(client.scheduler_info()["workers"]) == 2
        else:
            client.wait_for_workers(3, timeout=60)  # the nanny's replacement
    assert len(removed) == 1 and not removed[0]["expected"], removed
    # The shard the dead worker was writing went back to the scheduler, which ran it elsewhere.
    writing = kill.tmp.relative_to(out).parent / kill.tmp.name[1:].split(".tmp-")[0]
    processing = [str(k) for k in removed[0]["processing-tasks"]]
    assert any(k.startswith(f"shard-{writing.as_posix()}-") for k in processing), removed
    print(
        f"killed worker {kill.pid} writing {writing} after it finished {kill.finished_by_it}; "
        f"processing: {processing}; lost results: {removed[0]['lost-computed-tasks']}"
    )

    verify = subprocess.run([*AEM_SYNTH, "verify", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _arrays(out) == _arrays(undisturbed)
    assert _checksums(out) == _checksums(undisturbed)
    # The shards finished before the kill (some by the dead worker) were not written again.
    after = _finished(out)
    assert {f: after.get(f) for f in kill.finished} == kill.finished
    # No orphan of the dead writer, no intermediates left.
    assert not list(out.rglob("*.tmp-*")) and not (out / ".work").exists()
    # The case intermediates live in OUT/.work, never in a worker's own --local-directory.
    assert not list(cluster.folder.glob("local-*/**/*.h5"))


def test_rerun_of_a_finished_shard_task_writes_nothing(tmp_path: Path) -> None:
    """Dask reruns a finished task whose result died with its worker: it must not redo it."""
    root, spec = _store_with_cache(tmp_path)  # run_shard has run once
    files = (root / spec.file, done_path(root, spec.file))
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    shutil.rmtree(root / ".work")  # nothing left to build from: a rebuild would fail
    assert run_shard(spec, str(root), str(root / ".work")) == finished_shard(root, spec)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before
