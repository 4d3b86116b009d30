"""Build benchmarks (issue 3 "must show" 2-5); each part runs alone and prints its figures.

Parts (``--part``):

``floor``
    Per synthetic sample, end to end in the build (read the two per-case
    intermediates, synthesise, compress + write through ``write_shard``)
    versus the I/O floor (read the same intermediates, compress + write the
    same arrays, no synthesis), side by side, median of ``--repeats``.
``scaling``
    Whole-build throughput (samples / wall second) with 2 workers versus 1 on
    a ``--cases``-case phantom set (default 24 at 240x240x155, multiplier 4),
    ``--repeats`` runs of each, interleaved; also the case and shard phases.
``storage``
    Bytes per synthetic sample as a fraction of the float32 ``.npy`` size of
    the same arrays (image float32 + label uint8), on the real sample cases
    (multiplier 2, all in train) and on phantoms; float16 round-trip error of
    the stored z-scores (max and RMS over brain voxels).
``rss``
    Peak RSS per worker (``ru_maxrss`` of each worker process) for builds of
    ``--rss-cases`` cases (default 12 and 24): it must not grow with the set.
``brats-scale``
    BraTS2020 scale: ``--cases`` (use 369) BraTS-size phantoms, generated once
    into ``--tmp`` outside the timing, built with ``--workers`` (2) and
    ``--multiplier`` 4 on an embedded cluster: wall time, the case / shard
    phase split, samples, bytes, peak RSS per worker; then per-case and
    per-sample costs in worker-seconds and the projected wall time of a
    BraTS 2021 build (1,251 cases, ``--project-multiplier`` 8) on 2, 16 and 64
    workers, assuming the same per-worker costs (no storage or scheduler limit).

Heavy on a small machine: ``scaling`` and ``rss`` at BraTS size take many
minutes.  Run: ``.venv/bin/python benchmarks/bench_build.py --part storage``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from aem_synth.build import BuildOptions, BuildSummary, build, local_cluster
from aem_synth.build.tasks import ShardSpec, _CaseCache, run_shard
from aem_synth.store.cache import read_case
from aem_synth.store.shards import Sample, ShardReader, list_samples, read_manifest, write_shard

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "brats_samples"


def phantoms(folder: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    from aem_synth.phantom.generator import write_phantom_dataset

    root = folder / f"phantoms-{n}-{'x'.join(map(str, shape))}"
    if not root.is_dir():
        write_phantom_dataset(root, n_cases=n, layout="brats2020", seed=seed, shape=shape)
    return root


def all_train_splits(root: Path, folder: Path) -> Path:
    """A split folder putting every labelled case of ``root`` in train."""
    from aem_synth.dataset.discover import discover

    ids = sorted(r.case_id for r in discover(root) if r.labelled)
    splits = folder / "splits-all-train"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "train.txt").write_text("\n".join(ids))
    (splits / "val.txt").write_text("")
    (splits / "test.txt").write_text("")
    return splits


def synthetic_specs(out: Path, codec: str) -> list[ShardSpec]:
    """The build's synthetic pairs (from the manifest), one spec per sample."""
    from aem_synth.synthesis.pairing import plan_pairs

    m = read_manifest(out)
    train = m["splits"]["train"]
    donors = [c for c in train if m["cases"][c]["has_tumour"]]
    opts = m["options"]
    pairs = plan_pairs(train, donors, opts["multiplier"], opts["seed"])
    return [
        ShardSpec(
            f"bench/s-{n:05d}.h5",
            "synthetic",
            "train",
            ((f"s-{n}", asdict(p)),),
            "bench",
            codec=codec,
        )
        for n, p in enumerate(pairs)
    ]


def part_floor(tmp: Path, args: argparse.Namespace) -> None:
    root = phantoms(tmp, args.cases, args.shape)
    out = tmp / "floor-store"
    build(BuildOptions(root=root, out=out, multiplier=2, workers=1, keep_work=True, progress=False))
    work = out / ".work"
    specs = synthetic_specs(out, BuildOptions(root=root, out=out).codec)[: args.samples]
    stored = {ref.sample_id: ref for ref in list_samples(out, "synthetic")}
    e2e, floor = [], []
    for n, spec in enumerate(specs):
        ref = stored[f"aem-{n:06d}"]
        with ShardReader(ref.shard) as r:
            sample = r.image(ref.sample_id), r.label(ref.sample_id), r.meta(ref.sample_id)
        pair = spec.items[0][1]
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run_shard(spec, str(out), str(work))
            e2e.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cache = _CaseCache(work)
            cache.get(pair["anatomy"]), cache.get(pair["donor"])
            write_shard(
                out / "bench/floor.h5",
                [Sample("s", *sample)],
                root=out,
                kind="synthetic",
                split="train",
                codec=spec.codec,
            )
            floor.append(time.perf_counter() - t0)
    me, mf = statistics.median(e2e), statistics.median(floor)
    print(f"[floor] {len(specs)} samples x {args.repeats} repeats, shape {args.shape}")
    print(
        f"[floor] end to end per sample: {me * 1e3:.0f} ms   I/O floor: {mf * 1e3:.0f} ms   "
        f"ratio: {me / mf:.2f}x (target <= 1.5x)"
    )


def _timed_build(
    root: Path, out: Path, workers: int, multiplier: int, scheduler: str | None = None
) -> BuildSummary:
    shutil.rmtree(out, ignore_errors=True)
    opts = BuildOptions(
        root=root,
        out=out,
        multiplier=multiplier,
        workers=workers,
        scheduler=scheduler,
        progress=False,
    )
    return build(opts)


def _warm_build(root: Path, out: Path, workers: int, multiplier: int) -> BuildSummary:
    """Same build on a cluster started beforehand (worker start-up not timed)."""
    with local_cluster(workers) as cluster:
        return _timed_build(root, out, workers, multiplier, scheduler=cluster.scheduler_address)


def part_scaling(tmp: Path, args: argparse.Namespace) -> None:
    """2 versus 1 workers; runs interleaved (1, 2, 2, 1, ...) so drift hits both alike."""
    root = phantoms(tmp, args.cases, args.shape)
    order = [1, 2, 2, 1] * ((args.repeats + 1) // 2)
    order = order[: 2 * args.repeats]
    modes = {
        "whole": ("whole command, embedded cluster started inside the timing", _timed_build),
        "warm": ("build on an already running cluster (--scheduler)", _warm_build),
    }
    for label, fn in (modes[m] for m in args.scaling_modes):
        runs: dict[int, list[BuildSummary]] = {1: [], 2: []}
        for w in order:
            runs[w].append(fn(root, tmp / f"scaling-{w}", w, args.multiplier))
        med = {
            w: {
                k: statistics.median(getattr(r, k) for r in rs)
                for k in ("wall_seconds", "prepare_seconds", "shard_seconds")
            }
            for w, rs in runs.items()
        }
        n = runs[1][0].samples
        print(f"[scaling] {label}, median of {args.repeats} run(s) each, interleaved:")
        for w, m in med.items():
            walls = ", ".join(f"{r.wall_seconds:.1f}" for r in runs[w])
            print(
                f"[scaling]   {w} worker(s): {n} samples in {m['wall_seconds']:.1f} s "
                f"({walls}) = {n / m['wall_seconds']:.2f} samples/s; "
                f"cases {m['prepare_seconds']:.1f} s, shards {m['shard_seconds']:.1f} s"
            )
        ratio = {k: med[1][k] / med[2][k] for k in med[1]}
        print(
            f"[scaling]   2 vs 1 workers: {ratio['wall_seconds']:.2f}x (target >= 1.7x); "
            f"case phase {ratio['prepare_seconds']:.2f}x, shard phase "
            f"{ratio['shard_seconds']:.2f}x"
        )


def _npy_bytes(*arrays: np.ndarray) -> int:
    total = 0
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a)
        total += buf.tell()
    return total


def _storage(label: str, root: Path, tmp: Path, splits: Path | None) -> None:
    out = tmp / f"storage-{label}"
    shutil.rmtree(out, ignore_errors=True)
    build(
        BuildOptions(
            root=root,
            out=out,
            multiplier=2,
            workers=1,
            splits_dir=splits,
            keep_work=True,
            progress=False,
        )
    )
    per_sample, errors = [], []
    for ref in list_samples(out, "synthetic"):
        with ShardReader(ref.shard) as r:
            img, lab = r.image(ref.sample_id), r.label(ref.sample_id)
        npy = _npy_bytes(img.astype(np.float32), lab)
        per_sample.append(npy)
    shard_bytes = sum(e["bytes"] for e in read_manifest(out)["shards"] if e["kind"] == "synthetic")
    n = len(per_sample)
    for ref in list_samples(out, "real"):
        case = read_case(out / ".work", ref.sample_id, full_grid=False)
        with ShardReader(ref.shard) as r:
            stored = r.image(ref.sample_id)
        errors.append((stored - case.image)[:, case.mask])
    err = np.concatenate([e.ravel() for e in errors])
    print(
        f"[storage] {label}: {n} synthetic samples, {shard_bytes / n / 1e6:.2f} MB/sample stored "
        f"vs {sum(per_sample) / n / 1e6:.2f} MB float32 .npy = "
        f"{shard_bytes / sum(per_sample):.3f} of .npy"
    )
    print(
        f"[storage] {label}: float16 round-trip error of z-scores: max {np.abs(err).max():.2e}, "
        f"RMS {np.sqrt(np.mean(err.astype(np.float64) ** 2)):.2e}"
    )


def part_storage(tmp: Path, args: argparse.Namespace) -> None:
    if REAL_DATA.is_dir():
        _storage("real-samples", REAL_DATA, tmp, all_train_splits(REAL_DATA, tmp))
    else:
        print(f"[storage] real samples not found at {REAL_DATA}: skipped")
    root = phantoms(tmp, args.cases, args.shape)
    _storage("phantoms", root, tmp, None)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part_rss(tmp: Path, args: argparse.Namespace) -> None:
    from distributed import Client

    for n in args.rss_cases:
        root = phantoms(tmp, n, args.shape)
        with local_cluster(2) as cluster, Client(cluster) as client:
            out = tmp / f"rss-{n}"
            shutil.rmtree(out, ignore_errors=True)
            build(
                BuildOptions(
                    root=root,
                    out=out,
                    multiplier=args.multiplier,
                    scheduler=cluster.scheduler_address,
                    progress=False,
                )
            )
            peaks = sorted(client.run(_peak_rss_mb).values())
        print(f"[rss] {n} cases: peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MB")


def part_brats_scale(tmp: Path, args: argparse.Namespace) -> None:
    from distributed import Client

    t0 = time.perf_counter()
    root = phantoms(tmp, args.cases, args.shape)
    print(
        f"[brats-scale] {args.cases} phantoms at {args.shape}: ready in {time.perf_counter() - t0:.0f} s (not timed)"
    )
    out = tmp / "brats-scale"
    shutil.rmtree(out, ignore_errors=True)
    with local_cluster(args.workers) as cluster, Client(cluster) as client:
        summary = _timed_build(
            root, out, args.workers, args.multiplier, scheduler=cluster.scheduler_address
        )
        peaks = sorted(client.run(_peak_rss_mb).values())
    cases = summary.real_samples
    w = args.workers
    print(
        f"[brats-scale] {w} workers, multiplier {args.multiplier}: {summary.samples} samples "
        f"({summary.synthetic_samples} synthetic + {cases} real) in {summary.wall_seconds:.1f} s "
        f"= {int(summary.wall_seconds // 60)}m{int(summary.wall_seconds % 60):02d}s (target <= 300 s)"
    )
    print(
        f"[brats-scale]   case phase {summary.prepare_seconds:.1f} s "
        f"({summary.prepare_seconds / summary.wall_seconds:.0%}), shard phase "
        f"{summary.shard_seconds:.1f} s; {summary.bytes / 2**30:.2f} GiB in {summary.shards} "
        f"shards; peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MB"
    )
    per_case = summary.prepare_seconds * w / cases
    per_sample = summary.shard_seconds * w / summary.samples
    rest = summary.wall_seconds - summary.prepare_seconds - summary.shard_seconds
    print(
        f"[brats-scale]   per worker: {per_case:.2f} s per case, {per_sample:.3f} s per "
        f"sample; {rest:.1f} s outside the two phases"
    )
    n_cases = 1251
    train = round(n_cases * summary.synthetic_samples / args.multiplier / cases)
    samples = n_cases + train * args.project_multiplier
    for workers in (2, 16, 64):
        est = (n_cases * per_case + samples * per_sample) / workers + rest
        print(
            f"[brats-scale]   projected BraTS 2021 x{args.project_multiplier} ({n_cases} cases, "
            f"~{samples} samples): {workers:2d} workers ~ {est / 60:.1f} min"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=["floor", "scaling", "storage", "rss", "brats-scale"], required=True
    )
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument(
        "--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(240, 240, 155)
    )
    parser.add_argument("--multiplier", type=int, default=4)
    parser.add_argument("--samples", type=int, default=6, help="floor: samples measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scaling-modes",
        nargs="+",
        choices=["whole", "warm"],
        default=["whole", "warm"],
        help="scaling: time the whole command and/or builds on a running cluster",
    )
    parser.add_argument("--rss-cases", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--workers", type=int, default=2, help="brats-scale: build workers")
    parser.add_argument("--project-multiplier", type=int, default=8)
    parser.add_argument("--tmp", type=Path, default=None, help="Scratch folder (default: temp)")
    args = parser.parse_args()
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench_build_"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = {
        "floor": part_floor,
        "scaling": part_scaling,
        "storage": part_storage,
        "rss": part_rss,
        "brats-scale": part_brats_scale,
    }
    parts[args.part](tmp, args)
    print(f"[{args.part}] done in {time.perf_counter() - t0:.0f} s (scratch: {tmp})")


if __name__ == "__main__":
    main()
