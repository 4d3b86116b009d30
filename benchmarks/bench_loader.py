"""Loader throughput: 80^3 crops per second per worker from compressed shards, and bytes per crop.

Builds a temporary shard store of BraTS-like cropped samples (default 8 of
(4, 140, 172, 136) float16, brain ellipsoid with smooth texture plus noise
and a three-class tumour, written through ``aem_synth.store.shards.write_shard``
with the default codec, once with the default chunk shape and once with 32^3
chunks, side by side), then times :class:`train.data.crops.CropDataset` in-process
(workers=0) and through :func:`train.data.crops.make_loader` with 1 and 2 worker
processes.  Each figure is the median of ``--repeats`` epochs after a warm-up
epoch; next to the wall-clock rate it prints crops per CPU second of the
producing processes, which is less sensitive to other load on the machine.
Bytes decompressed per crop are computed from the chunk grid and each crop's
box (every chunk the box touches is decompressed whole) and compared with the
whole volume.

Run: ``python benchmarks/bench_loader.py`` (about three minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import psutil
from scipy import ndimage

from aem_synth.store.shards import (
    DEFAULT_CHUNK,
    DEFAULT_CODEC,
    SCHEMA_VERSION,
    Sample,
    write_manifest,
    write_shard,
)
from train.data import CropDataset, CropPlan, make_loader, stage_refs

TARGET = 30.0


def brats_like(sid: str, shape: tuple[int, int, int], rng: np.random.Generator) -> Sample:
    """A z-scored-looking brain: smooth per-modality texture + noise inside an ellipsoid."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    brain = sum(g**2 for g in grids) < 0.95
    coarse = tuple(max(2, n // 10) for n in shape)
    image = np.empty((4, *shape), np.float32)
    for m in range(4):
        low = rng.standard_normal(coarse).astype(np.float32)
        zoom = [n / c for n, c in zip(shape, coarse, strict=True)]
        smooth = ndimage.zoom(low, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
        image[m] = (smooth + 0.15 * rng.standard_normal(shape, dtype=np.float32)) * brain
    centre = [0.35, 0.1, 0.2]
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    label = np.zeros(shape, np.uint8)
    label[(d2 < 0.06) & brain] = 2
    label[(d2 < 0.025) & brain] = 1
    label[(d2 < 0.01) & brain] = 3
    image[:, label > 0] += 1.0
    return Sample(sid, image, label, {"present": [True] * 4, "spacing": [1.0, 1.0, 1.0]})


def build_store(
    root: Path, n: int, shape: tuple[int, int, int], seed: int, chunk: tuple[int, int, int]
) -> float:
    """Write one synthetic shard + manifest; returns the seconds it took."""
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]

    def samples() -> Iterator[Sample]:
        for i, rng in enumerate(rngs):
            yield brats_like(f"bench{i:03d}", shape, rng)

    t0 = time.perf_counter()
    info = write_shard(
        root / "synthetic" / "aem-00000.h5",
        samples(),
        root=root,
        kind="synthetic",
        split="train",
        chunk=chunk,
    )
    write_manifest(root, {"schema_version": SCHEMA_VERSION, "shards": [info.to_dict()]})
    return time.perf_counter() - t0


def touched(box: tuple[tuple[int, int], ...], chunk: tuple[int, ...]) -> list[range]:
    """Chunk indices per axis that a half-open box overlaps."""
    return [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(box, chunk, strict=True)]


def chunk_bytes(ds: h5py.Dataset, plan: CropPlan) -> tuple[int, int]:
    """(decompressed, stored) bytes of the chunks of ``ds`` that the crop box touches.

    Every touched chunk is decompressed whole (edge chunks too: HDF5 stores
    them at full chunk size).
    """
    chunks: tuple[int, ...] = ds.chunks
    spatial = touched(plan.box, chunks[-3:])
    channels = [range(ds.shape[0])] if ds.ndim == 4 else []
    full = int(np.prod(chunks)) * ds.dtype.itemsize
    raw = stored = 0
    for idx in itertools.product(*channels, *spatial):
        offset = tuple(i * c for i, c in zip(idx, chunks, strict=True))
        raw += full
        stored += ds.id.get_chunk_info_by_coord(offset).size
    return raw, stored


def crop_bytes(ds: CropDataset, n: int) -> dict[str, float]:
    raws, stores = [], []
    for i in range(n):
        plan = ds.plan(i)
        grp = ds.reader(plan.ref.shard).file["samples"][plan.ref.sample_id]
        img, lab = chunk_bytes(grp["image"], plan), chunk_bytes(grp["label"], plan)
        raws.append(img[0] + lab[0])
        stores.append(img[1] + lab[1])
    ref = ds.refs[0]
    shape = ds.reader(ref.shard).shape(ref.sample_id)
    vox = int(np.prod(shape))
    return {
        "decompressed": float(np.mean(raws)),
        "stored": float(np.mean(stores)),
        "volume": float(vox * 4 * 2 + vox),
        "crop": float(int(np.prod(ds.crop)) * (4 * 2 + 1)),
    }


@dataclass
class Timing:
    """Per timed epoch: crops per wall second and per CPU second of the producing processes."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def time_epochs(ds: CropDataset, workers: int, repeats: int) -> Timing:
    """Time ``repeats`` epochs after a warm-up epoch (page cache, readers, worker start-up).

    ``workers == 0`` indexes the dataset in this process; otherwise a
    :func:`make_loader` loader with batch 1.  CPU seconds are those of the
    processes producing crops (this one, or the workers).
    """
    loader = make_loader(ds, batch_size=1, workers=workers, drop_last=False) if workers else None
    me, out = psutil.Process(), Timing()
    for epoch in range(repeats + 1):
        ds.set_epoch(epoch)
        producers = me.children() if loader is not None else [me]
        t0, c0 = time.perf_counter(), _cpu_seconds(producers)
        if loader is None:
            for i in range(len(ds)):
                ds[i]
        else:
            for _ in loader:
                pass
        if epoch:
            out.wall.append(len(ds) / (time.perf_counter() - t0))
            out.cpu.append(len(ds) / max(_cpu_seconds(producers) - c0, 1e-9))
    del loader
    return out


def report_store(root: Path, args: argparse.Namespace, chunk: tuple[int, int, int]) -> None:
    shape = tuple(args.shape)
    build_s = build_store(root, args.samples, shape, args.seed, chunk)
    shard = root / "synthetic" / "aem-00000.h5"
    raw = args.samples * int(np.prod(shape)) * (4 * 2 + 1)
    print(
        f"\n=== chunk {chunk}: {args.samples} samples of (4, {', '.join(map(str, shape))}) "
        f"float16 + uint8 label, codec {DEFAULT_CODEC}"
    )
    print(
        f"  written in {build_s:.1f} s; {shard.stat().st_size / 2**20:.1f} MiB on disk, "
        f"{raw / 2**20:.1f} MiB raw (ratio {raw / shard.stat().st_size:.2f})"
    )
    refs = stage_refs(root, "pretrain")

    def dataset(compact: bool = False) -> CropDataset:
        crop = (args.crop,) * 3
        return CropDataset(
            refs,
            crop=crop,
            tumour_share=0.5,
            seed=args.seed,
            samples_per_epoch=args.crops,
            compact=compact,
        )

    b = crop_bytes(dataset(), args.crops)
    print(f"  bytes per {args.crop}^3 crop (mean of {args.crops} crops, image + label):")
    print(
        f"    decompressed {b['decompressed'] / 2**20:6.2f} MiB "
        f"= {b['decompressed'] / b['volume']:.2f} x whole volume "
        f"({b['volume'] / 2**20:.2f} MiB) = {b['decompressed'] / b['crop']:.2f} x crop "
        f"({b['crop'] / 2**20:.2f} MiB); read from disk {b['stored'] / 2**20:.2f} MiB"
    )
    print(
        f"  {'workers':>7} | {'dtypes':>13} | {'crops/s':>7} | {'crops/s/worker':>14} | {'crops/CPU-s':>11} | "
        f"{'per worker / ' + str(int(TARGET)):>17} | runs (crops/s)"
    )
    runs_of = [(w, False) for w in args.workers] + [(w, True) for w in args.workers if w]
    for w, compact in runs_of:
        t = time_epochs(dataset(compact), w, args.repeats)
        total, cpu = statistics.median(t.wall), statistics.median(t.cpu)
        per = total / max(w, 1)
        runs = ", ".join(f"{r:.1f}" for r in t.wall)
        print(
            f"  {w:>7} | {'f16/u8 compact' if compact else 'f32/i64':>13} | {total:7.1f} | {per:14.1f} | {cpu / max(w, 1):11.1f} | "
            f"{per / TARGET:16.2f}x | {runs}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=(140, 172, 136))
    p.add_argument("--crop", type=int, default=80)
    p.add_argument("--crops", type=int, default=48, help="crops per timed epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2))
    p.add_argument(
        "--chunks", type=int, nargs="+", default=(DEFAULT_CHUNK[0], 32), help="cubic chunk edges"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    for edge in args.chunks:
        with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
            report_store(Path(tmp), args, (edge, edge, edge))
    print(
        f"\nload average after: {os.getloadavg()[0]:.2f}.  crops/s: median wall-clock rate of "
        f"{args.repeats} epochs of {args.crops} crops after a warm-up epoch (workers=0: in "
        "process; otherwise DataLoader, batch 1, including transfer to the main process); "
        "crops/CPU-s: per CPU second of the producing process(es), per worker; "
        "compact: CropDataset(compact=True), float16 image / uint8 label."
    )


if __name__ == "__main__":
    main()
