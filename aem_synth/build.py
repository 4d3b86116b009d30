"""Build a shard store from a BraTS root with Dask (DESIGN §5, §6).

``build(BuildOptions(root=..., out=..., multiplier=4))`` runs, in order:

1. discover the cases; unlabelled ones are reported and left out;
2. resolve the splits (user folder or a seeded paper-proportion split) and
   write them to ``<out>/splits/``;
3. one *prepare* task per case (:func:`aem_synth.tasks.prepare_case`) writes
   ``<out>/.work/<case>.h5`` and returns a small summary; a bad case is
   skipped and reported (fatal with ``strict``);
4. plan the pairs (``multiplier x |train|``; donors = training cases with a
   tumour) and the shards; shards finished by an earlier run with the same
   plan are reused (resume);
5. one task per shard (:func:`aem_synth.tasks.run_shard`);
6. ``manifest.json`` last; then the intermediates are removed.

The scheduler is an embedded ``LocalCluster`` (processes, one thread each)
or an existing cluster (``scheduler`` / ``DASK_SCHEDULER_ADDRESS``), whose
workers must see ``out`` at the same path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aem_synth import __version__
from aem_synth.cache import CaseSummary
from aem_synth.errors import BuildError
from aem_synth.shards import (
    CODECS,
    DEFAULT_CHUNK,
    DEFAULT_CODEC,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    ShardInfo,
    write_manifest,
)
from aem_synth.tasks import CaseFailure, ShardSpec, finished_shard, prepare_case, run_shard
from aem_synth.tasks import source_key as case_source_key
from aem_synth.types import MODALITIES, CaseRecord

__all__ = ["SPLITS", "WORK_DIR", "BuildOptions", "BuildSummary", "build", "local_cluster"]

WORK_DIR = ".work"
SPLITS = ("train", "val", "test")
TASK_RETRIES = 3
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Options of one build (what ``aem-synth build`` parses).

    Attributes
    ----------
    root, out : Path
        Dataset root and store folder.
    multiplier : int
        Synthetic samples per training case (``AEM x N``); 0 writes real shards only.
    seed : int
        Seed of the split generation and of the pairing / synthesis parameters.
    mode : str
        ``"signed"`` (default) or ``"abs"`` asymmetric error map.
    method : str
        ``"aem"`` or ``"mixup"`` (the paper's ablation).
    workers : int or None
        Workers of the embedded cluster; None = CPU cores.
    shard_size : int
        Samples per shard.
    splits_dir : Path or None
        Folder of split files; None = seeded split with the paper's proportions.
    scheduler : str or None
        Address of an existing Dask scheduler (else ``DASK_SCHEDULER_ADDRESS``,
        else an embedded cluster).
    layout : str or None
        Force a dataset layout; None = detect.
    strict : bool
        A case that cannot be prepared stops the build.
    codec : str
        Shard compression, one of ``aem_synth.shards.CODECS``.
    allow_incomplete : bool
        Let cases with a missing modality take part in synthesis (their absent
        channels stay absent in the synthetic sample).
    diversity : bool
        Allow mirroring the donor's tumour to the other hemisphere.
    dataset : str or None
        Dataset name for the split proportions (``brats2020``, ``brats2018``,
        ``brats2015``); None = from the layout.
    keep_work : bool
        Keep ``<out>/.work`` (per-case intermediates) after a successful build.
    progress : bool
        Show progress bars on stderr.
    """

    root: Path
    out: Path
    multiplier: int = 4
    seed: int = 0
    mode: str = "signed"
    method: str = "aem"
    workers: int | None = None
    shard_size: int = 8
    splits_dir: Path | None = None
    scheduler: str | None = None
    layout: str | None = None
    strict: bool = False
    codec: str = DEFAULT_CODEC
    allow_incomplete: bool = False
    diversity: bool = False
    dataset: str | None = None
    keep_work: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.multiplier >= 0, f"multiplier must be >= 0, got {self.multiplier}"),
            (self.mode in ("signed", "abs"), f"mode must be 'signed' or 'abs', got {self.mode!r}"),
            (
                self.method in ("aem", "mixup"),
                f"method must be 'aem' or 'mixup', got {self.method!r}",
            ),
            (
                self.workers is None or self.workers >= 1,
                f"workers must be >= 1, got {self.workers}",
            ),
            (self.shard_size >= 1, f"shard_size must be >= 1, got {self.shard_size}"),
            (self.codec in CODECS, f"codec must be one of {list(CODECS)}, got {self.codec!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass(frozen=True)
class BuildSummary:
    """What a build did (printed by the CLI).

    Attributes
    ----------
    out : Path
    real_samples, synthetic_samples : int
    shards, reused_shards : int
        Shards in the store, and how many of them an earlier run had finished.
    bytes : int
        Total size of the shard files.
    wall_seconds : float
        Whole build, seconds.
    prepare_seconds, shard_seconds : float
        Of which: the per-case phase (load, normalise, calibrate) and the
        shard phase (synthesise, compress, write), seconds.
    skipped : tuple of (case_id, reason)
        Cases left out of the store.
    excluded : tuple of (case_id, reason)
        Cases in the real shards but not used for synthesis.
    """

    out: Path
    real_samples: int
    synthetic_samples: int
    shards: int
    reused_shards: int
    bytes: int
    wall_seconds: float
    prepare_seconds: float = 0.0
    shard_seconds: float = 0.0
    skipped: tuple[tuple[str, str], ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def samples(self) -> int:
        return self.real_samples + self.synthetic_samples

    def format(self) -> str:
        lines = [
            f"store: {self.out}",
            f"samples: {self.samples} ({self.real_samples} real, {self.synthetic_samples} synthetic)",
            f"shards: {self.shards} ({self.reused_shards} reused from an earlier run)",
            f"bytes: {self.bytes} ({self.bytes / 2**20:.1f} MiB)",
            f"wall time: {self.wall_seconds:.1f} s (cases {self.prepare_seconds:.1f} s, "
            f"shards {self.shard_seconds:.1f} s)",
            f"skipped cases: {len(self.skipped)}",
        ]
        lines += [f"  {cid}: {why}" for cid, why in self.skipped]
        if self.excluded:
            lines.append(f"excluded from synthesis: {len(self.excluded)}")
            lines += [f"  {cid}: {why}" for cid, why in self.excluded]
        return "\n".join(lines)


@dataclass
class _State:
    """Mutable bookkeeping of one build run."""

    options: BuildOptions
    records: dict[str, CaseRecord] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, CaseSummary] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.options.out / WORK_DIR


def build(options: BuildOptions) -> BuildSummary:
    """Build (or resume) the shard store described by ``options``.

    Raises
    ------
    DatasetError
        The root has no usable cases.
    BuildError
        A case failed under ``strict``, the pairing is impossible, or a shard
        task failed after its retries.
    """
    from aem_synth.discover import discover

    t0 = time.perf_counter()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    _start_clean(out)
    state = _State(options)
    for rec in discover(options.root, layout=options.layout):
        if rec.labelled:
            state.records[rec.case_id] = rec
            state.keys[rec.case_id] = case_source_key(rec)
        else:
            state.skipped.append((rec.case_id, "no segmentation: usable for prediction only"))
    if not state.records:
        raise BuildError(f"{options.root}: no labelled case to build shards from")
    splits = _resolve_splits(state)
    with _client(options) as client:
        t1 = time.perf_counter()
        _prepare_all(client, state)
        t2 = time.perf_counter()
        membership = {s: [c for c in splits[s] if c in state.summaries] for s in SPLITS}
        specs = _plan_shards(state, membership)
        infos, reused = _run_shards(client, state, specs)
        t3 = time.perf_counter()
    _remove_stale(out, {s.file for s in specs})
    write_manifest(out, _manifest(state, membership, infos))
    if not options.keep_work:
        shutil.rmtree(state.work, ignore_errors=True)
    return BuildSummary(
        out=out,
        real_samples=sum(len(i.samples) for i in infos if i.kind == "real"),
        synthetic_samples=sum(len(i.samples) for i in infos if i.kind == "synthetic"),
        shards=len(infos),
        reused_shards=reused,
        bytes=sum(i.bytes for i in infos),
        wall_seconds=time.perf_counter() - t0,
        prepare_seconds=t2 - t1,
        shard_seconds=t3 - t2,
        skipped=tuple(state.skipped),
        excluded=tuple(state.excluded),
    )


def _start_clean(out: Path) -> None:
    """Drop the old manifest (the store is incomplete until this run ends) and temp files."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for sub in ("real", "synthetic", WORK_DIR, "."):
        folder = out / sub
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp-*"):
                tmp.unlink(missing_ok=True)


def _resolve_splits(state: _State) -> dict[str, list[str]]:
    from aem_synth.splits import resolve_splits, write_splits

    opts = state.options
    layouts = sorted({r.layout for r in state.records.values()})
    dataset = opts.dataset or ("brats2015" if layouts == ["brats2015"] else "brats2020")
    splits = resolve_splits(
        sorted(state.records), splits_dir=opts.splits_dir, seed=opts.seed, dataset=dataset
    )
    write_splits(opts.out / "splits", splits)
    listed = {c for s in SPLITS for c in splits.get(s, [])}
    for cid in sorted(set(state.records) - listed):
        state.skipped.append((cid, "not listed in any split file"))
        del state.records[cid]
    return {s: list(splits.get(s, [])) for s in SPLITS}


def local_cluster(workers: int) -> Any:
    """The embedded cluster of a build: ``workers`` processes with one thread each.

    Returns a ``distributed.LocalCluster`` (a context manager); its scheduler
    address can be given to :class:`BuildOptions` as ``scheduler``.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


@contextmanager
def _client(options: BuildOptions) -> Iterator[Any]:
    from distributed import Client

    address = options.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address, timeout="60s") as client:
            yield client
        return
    n = options.workers or os.cpu_count() or 1
    with local_cluster(n) as cluster, Client(cluster) as client:
        yield client


def _progress(futures: Sequence[Any], desc: str, unit: str, enabled: bool) -> Iterator[Any]:
    from distributed import as_completed
    from tqdm import tqdm

    bar = tqdm(total=len(futures), desc=desc, unit=unit, disable=not enabled, leave=False)
    try:
        for fut in as_completed(futures):
            bar.update(1)
            yield fut
    finally:
        bar.close()


def _prepare_all(client: Any, state: _State) -> None:
    work = str(state.work)
    futures = [
        client.submit(
            prepare_case,
            rec,
            work,
            state.keys[cid],
            retries=TASK_RETRIES,
            pure=False,
            key=f"prepare-{cid}-{state.keys[cid][:12]}",
        )
        for cid, rec in sorted(state.records.items())
    ]
    for fut in _progress(futures, "prepare", "case", state.options.progress):
        result = fut.result()
        if isinstance(result, CaseFailure):
            if state.options.strict:
                raise BuildError(f"{result.case_id}: {result.reason} (stopped by --strict)")
            state.skipped.append((result.case_id, result.reason))
        else:
            state.summaries[result.case_id] = result
    state.skipped.sort()


def _synthesis_cases(state: _State, train: list[str]) -> tuple[list[str], list[str]]:
    """Anatomy and donor ids among the training cases, recording exclusions."""
    anatomy: list[str] = []
    for cid in train:
        s = state.summaries[cid]
        if not s.complete and not state.options.allow_incomplete:
            missing = [m for m, p in zip(MODALITIES, s.present, strict=True) if not p]
            state.excluded.append((cid, f"incomplete (missing {', '.join(missing)})"))
        else:
            anatomy.append(cid)
    donors = [cid for cid in anatomy if state.summaries[cid].has_tumour]
    state.excluded += [
        (cid, "empty tumour mask: not a donor") for cid in anatomy if cid not in donors
    ]
    return anatomy, donors


def _plan_pairs(state: _State, train: list[str]) -> list[dict[str, Any]]:
    from aem_synth.pairing import plan_pairs

    opts = state.options
    if opts.multiplier == 0:
        return []
    anatomy, donors = _synthesis_cases(state, train)
    try:
        pairs = plan_pairs(anatomy, donors, opts.multiplier, opts.seed)
    except ValueError as exc:
        raise BuildError(f"cannot pair {len(anatomy)} training cases: {exc}") from exc
    return [asdict(p) for p in pairs]


def _fingerprint(state: _State, kind: str, split: str, items: Any, cases: set[str]) -> str:
    o = state.options
    payload = {
        "tool": __version__,
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "split": split,
        "items": items,
        "codec": o.codec,
        "chunk": list(DEFAULT_CHUNK),
        "mode": o.mode,
        "method": o.method,
        "diversity": o.diversity,
        "allow_incomplete": o.allow_incomplete,
        "sources": {c: state.keys[c] for c in sorted(cases)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _spec(state: _State, file: str, kind: str, split: str, items: tuple[Any, ...]) -> ShardSpec:
    o = state.options
    if kind == "real":
        cases = set(items)
    else:
        cases = {p[role] for _, p in items for role in ("anatomy", "donor")}
    return ShardSpec(
        file,
        kind,
        split,
        items,
        _fingerprint(state, kind, split, items, cases),
        mode=o.mode,
        method=o.method,
        diversity=o.diversity,
        codec=o.codec,
        chunk=DEFAULT_CHUNK,
    )


def _plan_shards(state: _State, membership: dict[str, list[str]]) -> list[ShardSpec]:
    size = state.options.shard_size
    specs: list[ShardSpec] = []
    for split in SPLITS:
        ids = membership[split]
        for k, start in enumerate(range(0, len(ids), size)):
            cases = tuple(ids[start : start + size])
            specs.append(_spec(state, f"real/{split}-{k:05d}.h5", "real", split, cases))
    method = state.options.method
    named = [
        (f"{method}-{n:06d}", p) for n, p in enumerate(_plan_pairs(state, membership["train"]))
    ]
    for k, start in enumerate(range(0, len(named), size)):
        pairs = tuple(named[start : start + size])
        specs.append(_spec(state, f"synthetic/{method}-{k:05d}.h5", "synthetic", "train", pairs))
    return specs


def _run_shards(client: Any, state: _State, specs: list[ShardSpec]) -> tuple[list[ShardInfo], int]:
    out = state.options.out
    done: dict[str, ShardInfo] = {}
    todo: list[ShardSpec] = []
    for spec in specs:
        info = finished_shard(out, spec)
        if info is not None:
            done[spec.file] = info
        else:
            todo.append(spec)
    # Longest tasks first (synthetic before real, fuller before emptier): the
    # scheduler runs them roughly in submission order, so the tail stays short.
    todo.sort(key=lambda s: (s.kind == "synthetic", len(s.items)), reverse=True)
    futures = {
        client.submit(
            run_shard,
            spec,
            str(out),
            str(state.work),
            retries=TASK_RETRIES,
            pure=False,
            key=f"shard-{spec.file}-{spec.fingerprint[:12]}",
        ): spec
        for spec in todo
    }
    for fut in _progress(list(futures), "shards", "shard", state.options.progress):
        spec = futures[fut]
        try:
            done[spec.file] = fut.result()
        except Exception as exc:
            raise BuildError(f"shard {spec.file} failed: {type(exc).__name__}: {exc}") from exc
    return [done[s.file] for s in specs], len(specs) - len(todo)


def _remove_stale(out: Path, planned: set[str]) -> None:
    """Delete shard files (and their records) of an earlier, different plan."""
    for sub in ("real", "synthetic"):
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            rel = f"{sub}/{path.name.removesuffix('.done.json')}"
            if path.is_file() and rel not in planned:
                path.unlink()


def _manifest(
    state: _State, membership: dict[str, list[str]], infos: list[ShardInfo]
) -> dict[str, Any]:
    o = state.options
    cases = {
        cid: {
            "layout": s.layout,
            "present": list(s.present),
            "has_tumour": s.has_tumour,
            "box": [list(r) for r in s.box],
            "full_shape": list(s.full_shape),
            "calibration": s.calibration,
        }
        for cid, s in sorted(state.summaries.items())
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {
            "root": str(Path(o.root).resolve()),
            "layouts": sorted({r.layout for r in state.records.values()}),
        },
        "options": o.to_dict(),
        "seed": o.seed,
        "splits": membership,
        "shards": [i.to_dict() for i in infos],
        "cases": cases,
        "skipped": [{"case_id": c, "reason": r} for c, r in state.skipped],
        "excluded_from_synthesis": [{"case_id": c, "reason": r} for c, r in state.excluded],
        "totals": {
            "shards": len(infos),
            "samples": sum(len(i.samples) for i in infos),
            "real_samples": sum(len(i.samples) for i in infos if i.kind == "real"),
            "synthetic_samples": sum(len(i.samples) for i in infos if i.kind == "synthetic"),
            "bytes": sum(i.bytes for i in infos),
        },
    }
