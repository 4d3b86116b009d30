"""Codec x chunk shape table for the shard store (DESIGN §5), on BraTS-size data.

For each codec of ``aem_synth.store.shards.CODECS`` and each chunk shape it writes
one real sample, preprocessed and cropped to the brain box exactly as the
build stores it (float16 image, uint8 label, through ``write_shard``), and
prints:

* bytes per sample (file size),
* write MB/s (uncompressed float16 image + uint8 label bytes / write time),
* random 80^3 crop read time (all four channels + label, ms),

each the median of ``--repeats`` runs (crops: of ``--crops`` random crops).
The input is the first real case found under ``--data`` (default: the
shared BraTS samples), else a 240x240x155 phantom.  The last line names the
configuration the rule below supports; ``shards.DEFAULT_CODEC`` /
``DEFAULT_CHUNK`` are set to it.

Rule: among configurations that keep a sample within 0.25 of its float32
``.npy`` size (image float32 + uint8 label), those within 10 % of the fastest
random-crop read (training reads crops far more often than the build writes
shards, and the loader target is 100 crops/s per worker); of these, the
fastest writer.  (Until the loader work the rule started from the smallest
files, which chose blosc2-zstd-1.)

Run: ``.venv/bin/python benchmarks/bench_codecs.py [--data DIR] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from aem_synth.store.shards import CODECS, Sample, ShardReader, write_shard

CROP = 80
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "brats_samples"


def load_sample(data: Path | None) -> tuple[str, np.ndarray, np.ndarray]:
    """A preprocessed, cropped case: (name, image float32 (4,x,y,z), label uint8 (x,y,z))."""
    from aem_synth.dataset.discover import discover
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import preprocess_case

    if data is None or not data.is_dir():
        from aem_synth.phantom.generator import write_phantom_dataset

        data = Path(tempfile.mkdtemp(prefix="bench_codecs_phantom_"))
        write_phantom_dataset(data, n_cases=1, layout="brats2020", seed=0, shape=(240, 240, 155))
    record = next(r for r in discover(data) if r.labelled and r.complete)
    case = preprocess_case(load_case(record, require_label=True))
    assert case.label is not None  # labelled record
    return record.case_id, case.image, case.label


def chunk_shapes(shape: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
    return {
        "32^3": (32, 32, 32),
        "64^3": (64, 64, 64),
        "80^3": (80, 80, 80),
        "slice": (shape[0], shape[1], 1),
    }


def measure(
    image: np.ndarray,
    label: np.ndarray,
    codec: str,
    chunk: tuple[int, int, int],
    folder: Path,
    repeats: int,
    crops: int,
    rng: np.random.Generator,
) -> tuple[int, float, float]:
    sample = Sample("s", image, label, {"kind": "real"})
    raw_mb = (image.size * 2 + label.size) / 1e6
    times, size = [], 0
    path = folder / f"{codec}-{'x'.join(map(str, chunk))}.h5"
    for _ in range(repeats):
        t0 = time.perf_counter()
        info = write_shard(
            path, [sample], root=folder, kind="real", split="train", codec=codec, chunk=chunk
        )
        times.append(time.perf_counter() - t0)
        size = info.bytes
    shape = label.shape
    reads = []
    with ShardReader(path) as reader:
        for _ in range(crops):
            lo = [int(rng.integers(0, max(1, s - CROP + 1))) for s in shape]
            box = (
                slice(lo[0], lo[0] + CROP),
                slice(lo[1], lo[1] + CROP),
                slice(lo[2], lo[2] + CROP),
            )
            t0 = time.perf_counter()
            reader.image("s", box, dtype=None)  # as stored: what the loader reads
            reader.label("s", box)
            reads.append(time.perf_counter() - t0)
    return size, raw_mb / statistics.median(times), statistics.median(reads) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crops", type=int, default=15)
    args = parser.parse_args()
    from aem_synth.build.tuning import tune_worker

    # Measured as build and loader workers run: one Blosc thread, tuned allocator.
    tune_worker()

    name, image, label = load_sample(args.data)
    print(
        f"sample {name}: cropped shape {label.shape}, float16 image "
        f"{image.size * 2 / 1e6:.1f} MB + label {label.size / 1e6:.1f} MB uncompressed"
    )
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_codecs_") as tmp:
        for codec in CODECS:
            for cname, chunk in chunk_shapes(label.shape).items():
                size, mbps, read_ms = measure(
                    image, label, codec, chunk, Path(tmp), args.repeats, args.crops, rng
                )
                rows.append((codec, cname, chunk, size, mbps, read_ms))
    npy_mb = (image.size * 4 + label.size) / 1e6
    print(
        f"\n{'codec':<22}{'chunk':>8}{'MB/sample':>11}{'/npy':>7}{'write MB/s':>12}"
        f"{'crop read ms':>14}"
    )
    for codec, cname, _, size, mbps, read_ms in rows:
        print(
            f"{codec:<22}{cname:>8}{size / 1e6:>11.2f}{size / 1e6 / npy_mb:>7.3f}{mbps:>12.1f}"
            f"{read_ms:>14.2f}"
        )
    npy = image.size * 4 + label.size
    small = [r for r in rows if r[3] <= 0.25 * npy]
    fastest = min(r[5] for r in small)
    best = max((r for r in small if r[5] <= 1.10 * fastest), key=lambda r: r[4])
    print(
        f"\nchosen (size <= 0.25 x {npy / 1e6:.2f} MB float32 .npy, crop read <= 1.1 x "
        f"{fastest:.2f} ms, fastest write): codec={best[0]} chunk={best[2]} "
        f"({best[3] / npy:.3f} of .npy)"
    )


if __name__ == "__main__":
    main()
