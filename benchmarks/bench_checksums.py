"""Cost of the per-chunk Fletcher32 checksums: crop reads, writes and bytes, with vs without.

Writes the same BraTS-like samples (``brats_like``, default 4 of
(4, 140, 172, 136)) twice with the default codec and chunk shape, once with
checksums (the store default) and once without, then reads the same random
80^3 crops (image float16 -> float32, label) from both, interleaved round by
round so that machine noise hits both alike.  Prints crops/s, write seconds and
file bytes for each and their ratios.

Run: ``python benchmarks/bench_checksums.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from aem_synth.store.shards import Sample, ShardReader, write_shard


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


def _write(path: Path, samples: list, checksums: bool) -> float:
    t0 = time.perf_counter()
    write_shard(
        path, iter(samples), root=path.parent, kind="synthetic", split="train", checksums=checksums
    )
    return time.perf_counter() - t0


Box = tuple[slice, slice, slice]


def _read_round(reader: ShardReader, boxes: list[tuple[str, Box]]) -> float:
    t0 = time.perf_counter()
    for sid, box in boxes:
        reader.image(sid, box)
        reader.label(sid, box)
    return len(boxes) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--crops", type=int, default=60, help="crops per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--crop", type=int, default=80)
    args = p.parse_args()
    shape = (140, 172, 136)
    rng = np.random.default_rng(0)
    samples = [brats_like(f"s{i}", shape, rng) for i in range(args.samples)]
    boxes: list[tuple[str, Box]] = []
    for _ in range(args.crops):
        sid = f"s{rng.integers(args.samples)}"
        start = [int(rng.integers(0, n - args.crop + 1)) for n in shape]
        x, y, z = (slice(a, a + args.crop) for a in start)
        boxes.append((sid, (x, y, z)))
    with tempfile.TemporaryDirectory() as tmp:
        paths = {True: Path(tmp) / "with.h5", False: Path(tmp) / "without.h5"}
        writes = {c: _write(paths[c], samples, c) for c in (False, True)}
        rates: dict[bool, list[float]] = {True: [], False: []}
        readers = {c: ShardReader(paths[c]) for c in paths}
        for c in paths:
            _read_round(readers[c], boxes[:5])  # warm-up: open files, page cache
        for r in range(args.rounds):
            for c in (True, False) if r % 2 else (False, True):
                rates[c].append(_read_round(readers[c], boxes))
        sizes = {c: paths[c].stat().st_size for c in paths}
        for reader in readers.values():
            reader.close()
    med = {c: statistics.median(v) for c, v in rates.items()}
    print(
        f"{args.samples} samples {shape}, {args.crops} crops of {args.crop}^3 x {args.rounds} rounds"
    )
    print(f"{'':18}{'crops/s':>10}{'write s':>10}{'MiB':>10}")
    for c, name in ((False, "no checksums"), (True, "fletcher32")):
        print(f"{name:18}{med[c]:10.1f}{writes[c]:10.2f}{sizes[c] / 2**20:10.2f}")
    print(
        f"ratio (fletcher32 / none): read rate {med[True] / med[False]:.3f}, "
        f"write time {writes[True] / writes[False]:.3f}, bytes {sizes[True] / sizes[False]:.4f}"
    )


if __name__ == "__main__":
    main()
