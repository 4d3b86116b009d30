"""Loader throughput: 80^3 crops per second per worker from the shard store, side by side.

Writes a temporary store of BraTS samples preprocessed exactly as the build
stores them (float16 image ``(4, x, y, z)``, uint8 label; the real cases under
``--data``, default the shared BraTS samples, else 240x240x155 phantoms),
``--samples`` of them (cases cycled, every other pass mirrored), once per
codec x chunk edge, and prints for each:

* bytes on disk against the float32 ``.npy`` files of the same image and a
  uint8 label (the storage target is <= 0.25);
* the raw read of a random 80^3 box (4 channels + label) through h5py, and
  the same box read as whole chunks (the chunk-aligned box around it, then a
  numpy slice), ms;
* bytes decompressed per crop (every chunk a box touches is decompressed
  whole) against the crop and the whole volume;
* crops/s of :class:`train.data.crops.CropDataset` (what training uses:
  ``compact=True``, tumour-centred half the time, a modality subset drawn per
  crop; a row "all 4" reads all four modalities of every crop, the worst case) in process and through
  :func:`train.data.crops.make_loader` with 1 worker (batch ``--batch``,
  default 1, including the transfer to the main process: the worker's slot
  ring and the copy out of the slot into ordinary tensors), per worker and
  per CPU second of the producing process; the same with the dataset as it
  read crops before this benchmark's changes (stored float16 widened to
  float32 by numpy, then narrowed again; shape, modalities and the three
  tumour indexes read for every crop) under the previous default codec; and,
  for the worker rows, the rows "per-batch shm": the transfer as it was
  before the slot ring (fresh shared-memory tensors for every batch, sent as
  file descriptors; the main process does not copy).

Every figure is the median of ``--repeats`` epochs after a warm-up epoch; the
configurations are timed in interleaved rounds so that machine noise hits
them alike.

Run: ``python benchmarks/bench_loader.py`` (about three minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import torch

from aem_synth.store.shards import (
    DEFAULT_CHUNK,
    DEFAULT_CODEC,
    SCHEMA_VERSION,
    Sample,
    SampleRef,
    ShardReader,
    write_manifest,
    write_shard,
)
from train.data import CropDataset, CropPlan, make_loader, stage_refs
from train.data.crops import FG_CLASSES

TARGET = 100.0
PREVIOUS_CODEC = "blosc2-zstd-1"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "brats_samples"


def load_cases(data: Path | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed, brain-cropped cases as the build stores them: (float32 image, uint8 label)."""
    from aem_synth.dataset.discover import discover
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import preprocess_case

    if data is None or not data.is_dir():
        from aem_synth.phantom.generator import write_phantom_dataset

        data = Path(tempfile.mkdtemp(prefix="bench_loader_phantom_"))
        write_phantom_dataset(data, n_cases=3, layout="brats2020", seed=0, shape=(240, 240, 155))
    out = []
    for record in discover(data):
        if record.labelled and record.complete:
            case = preprocess_case(load_case(record, require_label=True))
            assert case.label is not None
            out.append((case.image, case.label.astype(np.uint8)))
    if not out:
        raise SystemExit(f"no complete labelled case under {data}")
    return out


def samples(cases: list[tuple[np.ndarray, np.ndarray]], n: int) -> list[Sample]:
    out = []
    for i in range(n):
        image, label = cases[i % len(cases)]
        if (i // len(cases)) % 2:
            image, label = image[:, ::-1].copy(), label[::-1].copy()
        meta = {"present": [True] * 4, "spacing": [1.0, 1.0, 1.0]}
        out.append(Sample(f"s{i:03d}", image, label, meta))
    return out


def build_store(root: Path, data: list[Sample], codec: str, chunk: tuple[int, int, int]) -> float:
    """One shard + manifest; returns the write seconds."""
    t0 = time.perf_counter()
    info = write_shard(
        root / "synthetic" / "aem-00000.h5",
        data,
        root=root,
        kind="synthetic",
        split="train",
        codec=codec,
        chunk=chunk,
    )
    write_manifest(root, {"schema_version": SCHEMA_VERSION, "shards": [info.to_dict()]})
    return time.perf_counter() - t0


def touched(box: tuple[tuple[int, int], ...], chunk: tuple[int, ...]) -> list[range]:
    """Chunk indices per axis that a half-open box overlaps."""
    return [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(box, chunk, strict=True)]


def chunk_bytes(ds: h5py.Dataset, box: tuple[tuple[int, int], ...]) -> int:
    """Bytes decompressed to read ``box``: every chunk it touches, whole (edge chunks too)."""
    chunks: tuple[int, ...] = ds.chunks
    n = int(np.prod([len(r) for r in touched(box, chunks[-3:])]))
    return n * (ds.shape[0] if ds.ndim == 4 else 1) * int(np.prod(chunks)) * ds.dtype.itemsize


class PreviousCrops(CropDataset):
    """The dataset as it read crops before this benchmark's changes, for the side-by-side row:
    all four channels read and the absent ones zeroed afterwards, stored float16
    widened to float32 by numpy (then narrowed again for compact batches), shape,
    modalities and the three tumour indexes read for every crop, one item per
    ``__getitem__`` collated by ``default_collate``."""

    __getitems__ = None  # type: ignore[assignment]

    def _facts(self, ref: SampleRef) -> Any:
        rd = self.reader(ref.shard)
        counts = tuple(len(rd.foreground(ref.sample_id, c)) for c in FG_CLASSES)
        return rd.shape(ref.sample_id), self._present(rd, ref), counts

    def load(self, plan: CropPlan) -> dict[str, Any]:
        rd = self.reader(plan.ref.shard)
        sl = tuple(slice(a, b) for a, b in plan.box)
        patch = rd.image(plan.ref.sample_id, sl)  # type: ignore[arg-type]
        lab = rd.label(plan.ref.sample_id, sl)  # type: ignore[arg-type]
        assert int(lab.max()) < 4
        dtypes = (torch.float16, torch.uint8) if self.compact else (torch.float32, torch.int64)
        image = torch.zeros((4, *self.crop), dtype=dtypes[0])
        label = torch.zeros(self.crop, dtype=dtypes[1])
        dst = tuple(slice(o, o + (b - a)) for o, (a, b) in zip(plan.offset, plan.box, strict=True))
        image[(slice(None), *dst)] = torch.from_numpy(patch)
        label[dst] = torch.from_numpy(lab)
        mask = torch.tensor(plan.mask, dtype=torch.bool)
        image[~mask] = 0
        return {"image": image, "label": label, "mask": mask, "sample_id": plan.ref.sample_id}


class AllModalities(CropDataset):
    """Every crop with all four modalities (the worst case; posttrain's KD reads these)."""

    def plan(self, index: int | tuple[int, int]) -> CropPlan:
        p = super().plan(index)
        return dataclasses.replace(p, mask=(True, True, True, True))


class PerBatchShm(CropDataset):
    """The worker -> main process transfer before the slot ring: every batch in fresh
    shared-memory tensors, sent as file descriptors."""

    def use_slot_ring(self, slots: int) -> None:
        super().use_slot_ring(0)


class AllModalitiesPerBatchShm(PerBatchShm, AllModalities):
    """All four modalities, transferred as before the slot ring."""


@dataclass
class Timing:
    """Per timed epoch: crops per wall second and per CPU second of the producing processes."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def time_epoch(
    ds: CropDataset, loader: Any, epoch: int, out: Timing | None, batch: int = 1
) -> None:
    """One epoch of ``ds`` in process (``loader is None``, batches of ``batch``) or through
    ``loader``."""
    me = psutil.Process()
    ds.set_epoch(epoch)
    producers = me.children() if loader is not None else [me]
    t0, c0 = time.perf_counter(), _cpu_seconds(producers)
    if loader is None:
        # What a loader with no worker process does: batches through __getitems__ if defined.
        batched = getattr(ds, "__getitems__", None)
        fetch = batched if batched is not None else (lambda idx: [ds[i] for i in idx])
        for i in range(0, len(ds), batch):
            fetch(list(range(i, min(i + batch, len(ds)))))
    else:
        for _ in loader:
            pass
    if out is not None:
        out.wall.append(len(ds) / (time.perf_counter() - t0))
        out.cpu.append(len(ds) / max(_cpu_seconds(producers) - c0, 1e-9))


def read_ms(root: Path, boxes: list[tuple[slice, ...]], whole_chunks: bool) -> float:
    """Mean ms to read image + label of each box (all samples in turn) through h5py."""
    with h5py.File(root / "synthetic" / "aem-00000.h5", "r") as f:
        groups = [f["samples"][k] for k in sorted(f["samples"])]
        t0 = time.perf_counter()
        for i, box in enumerate(boxes):
            g = groups[i % len(groups)]
            image, label = g["image"], g["label"]
            if whole_chunks:
                c = image.chunks[1:]
                big = tuple(
                    slice(b.start // e * e, min(-(-b.stop // e) * e, n))
                    for b, e, n in zip(box, c, label.shape, strict=True)
                )
                inner = tuple(
                    slice(b.start - o.start, b.stop - o.start)
                    for b, o in zip(box, big, strict=True)
                )
                image[(slice(None), *big)][(slice(None), *inner)]
                label[big][inner]
            else:
                image[(slice(None), *box)]
                label[box]
        return (time.perf_counter() - t0) / len(boxes) * 1e3


@dataclass
class Config:
    name: str
    codec: str
    chunk: tuple[int, int, int]
    dataset: type[CropDataset]
    workers: tuple[int, ...] | None = None  # None: all of --workers
    root: Path = Path()
    rates: dict[int, Timing] = field(default_factory=dict)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--crop", type=int, default=80)
    p.add_argument("--crops", type=int, default=48, help="crops per timed epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=(0, 1))
    p.add_argument("--batch", type=int, default=1, help="loader batch size")
    p.add_argument("--codecs", nargs="+", default=(PREVIOUS_CODEC, DEFAULT_CODEC))
    p.add_argument("--chunks", type=int, nargs="+", default=(DEFAULT_CHUNK[0],))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    cases = load_cases(args.data)
    data = samples(cases, args.samples)
    npy = sum(s.image.astype(np.float32).nbytes + s.label.nbytes for s in data)
    print(
        f"{len(data)} samples from {len(cases)} case(s) under {args.data}: shapes "
        f"{sorted({s.label.shape for s in data})}; float32 .npy image + uint8 label "
        f"{npy / 2**20:.1f} MiB"
    )
    configs = [
        Config(f"{codec} {edge}^3", codec, (edge,) * 3, CropDataset)
        for codec in dict.fromkeys(args.codecs)
        for edge in args.chunks
    ]
    configs.append(
        Config(
            f"{DEFAULT_CODEC} {DEFAULT_CHUNK[0]}^3, all 4",
            DEFAULT_CODEC,
            DEFAULT_CHUNK,
            AllModalities,
        )
    )
    with_workers = tuple(w for w in args.workers if w)
    if with_workers:
        configs += [
            Config(
                f"{DEFAULT_CODEC} {DEFAULT_CHUNK[0]}^3, per-batch shm",
                DEFAULT_CODEC,
                DEFAULT_CHUNK,
                PerBatchShm,
                with_workers,
            ),
            Config(
                f"{DEFAULT_CODEC} {DEFAULT_CHUNK[0]}^3, all 4, per-batch shm",
                DEFAULT_CODEC,
                DEFAULT_CHUNK,
                AllModalitiesPerBatchShm,
                with_workers,
            ),
        ]
    configs.insert(
        0,
        Config(
            f"previous: {PREVIOUS_CODEC} 32^3, old reads", PREVIOUS_CODEC, (32,) * 3, PreviousCrops
        ),
    )
    width = max(40, *(len(cfg.name) for cfg in configs))
    rng = np.random.default_rng(args.seed)
    boxes = []
    for i in range(60):
        shape = data[i % len(data)].label.shape
        lo = [int(rng.integers(0, max(1, n - args.crop + 1))) for n in shape]
        boxes.append(tuple(slice(a, a + args.crop) for a in lo))
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        print(
            f"\n{'configuration':{width}s} {'MiB':>7s} {'/npy':>6s} {'write s':>8s} "
            f"{'box ms':>7s} {'whole-chunk ms':>14s} {'decompressed/crop':>18s}"
        )
        for k, cfg in enumerate(configs):
            cfg.root = Path(tmp) / f"store{k}"
            write_s = build_store(cfg.root, data, cfg.codec, cfg.chunk)
            size = (cfg.root / "synthetic" / "aem-00000.h5").stat().st_size
            with ShardReader(cfg.root / "synthetic" / "aem-00000.h5") as rd:
                g = rd.file["samples"]["s000"]
                dec = statistics.mean(
                    chunk_bytes(g["image"], tuple((b.start, b.stop) for b in box))
                    + chunk_bytes(g["label"], tuple((b.start, b.stop) for b in box))
                    for box in boxes
                )
            crop_bytes = args.crop**3 * (4 * 2 + 1)
            print(
                f"{cfg.name:{width}s} {size / 2**20:7.1f} {size / npy:6.3f} {write_s:8.2f} "
                f"{read_ms(cfg.root, boxes, False):7.2f} {read_ms(cfg.root, boxes, True):14.2f} "
                f"{dec / crop_bytes:8.2f}x crop"
            )
        runs: list[tuple[Config, int, Callable[..., None]]] = []
        loaders = []
        for cfg in configs:
            refs = stage_refs(cfg.root, "pretrain")
            for w in cfg.workers or args.workers:
                ds = cfg.dataset(
                    refs,
                    crop=(args.crop,) * 3,
                    tumour_share=0.5,
                    seed=args.seed,
                    samples_per_epoch=args.crops,
                    compact=True,
                )
                loader = (
                    make_loader(ds, batch_size=args.batch, workers=w, drop_last=False)
                    if w
                    else None
                )
                loaders.append(loader)
                cfg.rates[w] = Timing()
                # warm-up: worker start, page cache, readers
                time_epoch(ds, loader, 0, None, args.batch)

                def run(
                    ds: CropDataset = ds, loader: Any = loader, t: Timing = cfg.rates[w]
                ) -> None:
                    time_epoch(ds, loader, len(t.wall) + 1, t, args.batch)

                runs.append((cfg, w, run))
        for _ in range(args.repeats):
            for _cfg, _w, run in runs:
                run()
        print(
            f"\ncrops/s ({args.crop}^3, compact float16/uint8, batch {args.batch}; median of "
            f"{args.repeats} interleaved epochs of {args.crops}); target >= {TARGET:.0f} per worker"
        )
        print(
            f"{'configuration':{width}s} {'workers':>7s} {'crops/s':>8s} {'per CPU-s':>9s} {'vs target':>9s} {'vs previous':>11s}"
        )
        base = {w: statistics.median(configs[0].rates[w].wall) for w in args.workers}
        for cfg in configs:
            for w in cfg.workers or args.workers:
                t = cfg.rates[w]
                rate, cpu = statistics.median(t.wall), statistics.median(t.cpu)
                print(
                    f"{cfg.name:{width}s} {w:7d} {rate:8.1f} {cpu:9.1f} {rate / TARGET:8.2f}x "
                    f"{rate / base[w]:10.2f}x"
                )
        del loaders
    print(
        f"\nload average after: {os.getloadavg()[0]:.2f}. workers 0: in process; 1: one "
        f"DataLoader worker process, batch {args.batch}, including the transfer to the main "
        "process (per-batch shm: as before the slot ring)."
    )


if __name__ == "__main__":
    main()
