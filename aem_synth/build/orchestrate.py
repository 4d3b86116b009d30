"""Build a shard store from a BraTS root with Dask (DESIGN §5, §6).

``build(BuildOptions(root=..., out=..., multiplier=4))`` runs, in order:

0. take the store's build lock (held to the end; a second build fails at once);
1. discover the cases; unlabelled ones are reported and left out;
2. resolve the splits (user folder or a seeded paper-proportion split); check
   that ``<out>`` holds no store of another identity (else stop, unless
   ``overwrite``), record the identity in ``<out>/store.json``, write the
   splits to ``<out>/splits/`` and drop the old manifest;
3. one *prepare* task per case (:func:`aem_synth.build.tasks.prepare_case`) writes
   ``<out>/.work/<case>.h5`` and returns a small summary; a bad case is
   skipped and reported (fatal with ``strict``);
4. plan the pairs (``multiplier x |train|``; donors = training cases with a
   tumour) and the shards; shards finished by an earlier run with the same
   plan are reused (resume);
5. one task per shard (:func:`aem_synth.build.tasks.run_shard`);
6. ``manifest.json`` last; then the intermediates are removed.

The scheduler is an embedded ``LocalCluster`` (processes, one thread each)
or an existing cluster (``scheduler`` / ``DASK_SCHEDULER_ADDRESS``), whose
workers must see ``out`` at the same path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aem_synth import __version__
from aem_synth.build.cluster import client_for, progress
from aem_synth.build.options import BuildOptions, BuildSummary
from aem_synth.build.tasks import CaseFailure, ShardSpec, finished_shard, prepare_case, run_shard
from aem_synth.build.tasks import source_key as case_source_key
from aem_synth.dataset.splits import write_splits
from aem_synth.errors import BuildError
from aem_synth.paths import prepare_output_dir
from aem_synth.store.cache import CaseSummary
from aem_synth.store.identity import (
    IDENTITY_NAME,
    identity_differences,
    read_identity,
    store_id,
    store_identity,
    write_identity,
)
from aem_synth.store.lock import build_lock
from aem_synth.store.shards import (
    DEFAULT_CHUNK,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    ShardInfo,
    write_manifest,
)
from aem_synth.types import MODALITIES, CaseRecord

__all__ = ["SPLITS", "WORK_DIR", "build"]

WORK_DIR = ".work"
SPLITS = ("train", "val", "test")
TASK_RETRIES = 3
log = logging.getLogger(__name__)


@dataclass
class _State:
    """Mutable bookkeeping of one build run."""

    options: BuildOptions
    records: dict[str, CaseRecord] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, CaseSummary] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    store_id: str = ""

    @property
    def work(self) -> Path:
        return self.options.out / WORK_DIR


def build(options: BuildOptions) -> BuildSummary:
    """Build (or resume) the shard store described by ``options``.

    The store's build lock is held from start to end (see
    :mod:`aem_synth.store.lock`), and a store of another identity (seed,
    splits, sample-defining options; :mod:`aem_synth.store.identity`) is never
    replaced without ``options.overwrite``.

    Raises
    ------
    DatasetError
        The root has no usable cases.
    BuildError
        A case failed under ``strict``, the pairing is impossible, a shard
        task failed after its retries, or ``out`` holds a store of another
        identity and ``overwrite`` is off.
    StoreBusyError
        Another build holds ``out``.
    """
    prepare_output_dir(options.out, "build output folder (--out)")
    with build_lock(options.out):
        return _build_locked(options)


def _build_locked(options: BuildOptions) -> BuildSummary:
    from aem_synth.dataset.discover import discover

    t0 = time.perf_counter()
    out = options.out
    state = _State(options)
    for rec in discover(options.root, layout=options.layout):
        if rec.labelled:
            state.records[rec.case_id] = rec
            state.keys[rec.case_id] = case_source_key(rec)
        else:
            state.skipped.append((rec.case_id, "no segmentation: usable for prediction only"))
    if not state.records:
        raise BuildError(
            f"{options.root}: no labelled case to build shards from; {_left_out(state)}"
        )
    splits = _resolve_splits(state)
    state.store_id = _claim_store(out, store_identity(options.to_dict(), splits), options.overwrite)
    write_splits(out / "splits", splits)
    _start_clean(out)
    with client_for(options) as client:
        t1 = time.perf_counter()
        _prepare_all(client, state)
        if not state.summaries:
            raise BuildError(
                f"{options.root}: no usable case, the store would be empty; {_left_out(state)}"
            )
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


def _left_out(state: _State, limit: int = 20) -> str:
    """The cases set aside so far and why, for error messages (at most ``limit`` named)."""
    left = [(c, f"skipped: {r}") for c, r in state.skipped]
    left += [(c, f"not used for synthesis: {r}") for c, r in state.excluded]
    if not left:
        return "no case was skipped"
    named = "; ".join(f"{c} ({r})" for c, r in left[:limit])
    more = f"; and {len(left) - limit} more" if len(left) > limit else ""
    return f"{len(left)} case(s) left out: {named}{more}"


def _claim_store(out: Path, identity: dict[str, Any], overwrite: bool) -> str:
    """Make ``out`` the store of ``identity``; refuse to replace another one without
    ``overwrite``.  Returns the store id.  Nothing is removed before this check passes."""
    old = read_identity(out)
    if old is None and (out / MANIFEST_NAME).is_file():
        # A store written before store.json existed: its options are in the manifest.
        try:
            legacy = json.loads((out / MANIFEST_NAME).read_text()).get("options", {})
        except (OSError, ValueError):
            legacy = {}
        old = store_identity(legacy, identity["splits"])
    diffs = identity_differences(old, identity) if old is not None else []
    if diffs:
        if not overwrite:
            raise BuildError(
                f"{out} already holds a store built with other options or splits "
                f"({'; '.join(diffs)}); building here would replace its samples and splits, "
                "and models trained on it would be evaluated on the wrong cases. "
                "Pass --overwrite to replace it, or choose another --out"
            )
        for name in (MANIFEST_NAME, IDENTITY_NAME):
            (out / name).unlink(missing_ok=True)
        for sub in ("real", "synthetic", "splits", WORK_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    write_identity(out, identity)
    return str(identity["id"])


def _start_clean(out: Path) -> None:
    """Drop the old manifest (the store is incomplete until this run ends) and temp files."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for sub in ("real", "synthetic", WORK_DIR, "."):
        folder = out / sub
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp-*"):
                tmp.unlink(missing_ok=True)


def _resolve_splits(state: _State) -> dict[str, list[str]]:
    from aem_synth.dataset.splits import resolve_splits

    opts = state.options
    layouts = sorted({r.layout for r in state.records.values()})
    dataset = opts.dataset or ("brats2015" if layouts == ["brats2015"] else "brats2020")
    splits = resolve_splits(
        sorted(state.records), splits_dir=opts.splits_dir, seed=opts.seed, dataset=dataset
    )
    listed = {c for s in SPLITS for c in splits.get(s, [])}
    for cid in sorted(set(state.records) - listed):
        state.skipped.append((cid, "not listed in any split file"))
        del state.records[cid]
    return {s: list(splits.get(s, [])) for s in SPLITS}


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
    for fut in progress(futures, "prepare", "case", state.options.progress):
        result = fut.result()
        fut.release()  # in hand: Dask must not recompute it if its worker is lost later
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
    from aem_synth.synthesis.pairing import plan_pairs

    opts = state.options
    if opts.multiplier == 0:
        return []
    anatomy, donors = _synthesis_cases(state, train)
    try:
        pairs = plan_pairs(anatomy, donors, opts.multiplier, opts.seed)
    except ValueError as exc:
        raise BuildError(
            f"cannot pair {len(anatomy)} training cases: {exc}; {_left_out(state)}"
        ) from exc
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
        "checksums": "fletcher32",
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
    for fut in progress(list(futures), "shards", "shard", state.options.progress):
        spec = futures[fut]
        try:
            done[spec.file] = fut.result()
        except Exception as exc:
            raise BuildError(f"shard {spec.file} failed: {type(exc).__name__}: {exc}") from exc
        fut.release()  # in hand: Dask must not recompute it if its worker is lost later
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
        "build_id": state.store_id,  # the identity's id (store.json); the rebuild guard
        "store_id": store_id(o.to_dict(), membership, [i.to_dict() for i in infos]),
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
