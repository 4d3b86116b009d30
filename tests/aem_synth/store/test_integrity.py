"""Damaged shards are caught where they are read, naming the file and the sample."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from aem_synth.errors import ShardError
from aem_synth.store.shards import (
    SCHEMA_VERSION,
    Sample,
    ShardReader,
    list_samples,
    write_manifest,
    write_shard,
)


def _store(root: Path) -> Path:
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"s{i}",
            rng.normal(size=(4, 24, 20, 16)).astype(np.float32),  # incompressible: real bytes
            rng.integers(0, 4, size=(24, 20, 16)).astype(np.uint8),
            {"case_id": f"s{i}"},
        )
        for i in range(2)
    ]
    info = write_shard(
        root / "real" / "train-00000.h5",
        samples,
        root=root,
        kind="real",
        split="train",
        chunk=(16, 16, 16),
    )
    write_manifest(root, {"schema_version": SCHEMA_VERSION, "shards": [info.to_dict()]})
    return root / info.file


def flip_chunk_bytes(shard: Path, sample: str, dataset: str, chunk: int = 0) -> None:
    """Invert 16 bytes in the middle of one stored chunk, keeping the file size."""
    with h5py.File(shard, "r") as f:
        info = f[f"samples/{sample}/{dataset}"].id.get_chunk_info(chunk)
    with open(shard, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        data = fh.read(16)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("dataset", ["image", "label"])
def test_flipped_bytes_fail_the_read_naming_file_and_sample(tmp_path: Path, dataset: str) -> None:
    shard = _store(tmp_path)
    flip_chunk_bytes(shard, "s1", dataset)
    with ShardReader(shard) as reader:
        reader.image("s0"), reader.label("s0")  # the other sample reads fine
        read = reader.image if dataset == "image" else reader.label
        with pytest.raises(
            ShardError, match=rf"{shard}: sample 's1': cannot read {dataset} .*verify"
        ):
            read("s1")
        # A crop away from the damaged chunk reads; one over it fails.
        far = (slice(16, 24), slice(16, 20), slice(0, 16))
        read("s1", far)
        with pytest.raises(ShardError, match="sample 's1'"):
            read("s1", (slice(0, 8), slice(0, 8), slice(0, 8)))


def test_shards_carry_chunk_checksums(tmp_path: Path) -> None:
    shard = _store(tmp_path)
    with h5py.File(shard, "r") as f:
        for name in ("image", "label", "fg/1"):
            assert f[f"samples/s0/{name}"].fletcher32, name


def test_truncated_shard_is_named_before_any_read(tmp_path: Path) -> None:
    shard = _store(tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=rf"{shard}: \d+ bytes on disk but the manifest records"):
        list_samples(tmp_path, "real")
    shard.unlink()
    with pytest.raises(ShardError, match=rf"{shard}: listed in the manifest but cannot be found"):
        list_samples(tmp_path, "real", "train")
