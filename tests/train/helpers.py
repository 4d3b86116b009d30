"""Shared helpers of the training tests: a tiny shard store, its config, tiny checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aem_synth.store.shards import SCHEMA_VERSION, Sample, write_manifest, write_shard
from train.fit.checkpoint import save_checkpoint

SHAPE = (40, 40, 32)
TINY = """
name = "tiny"
shards = "{shards}"
runs_dir = "{runs}"
seed = 3
device = "cpu"
workers = 0

[model]
base_channels = 4

[data]
crop = [16, 16, 16]
tumour_share = 1.0
val_cases = 1

[augment]
rotate_deg = 5.0

[stage.pretrain]
epochs = 2
iters_per_epoch = 2
batch_size = 1
checkpoint_every = 1
validate_every = 1

[stage.train]
epochs = 1
iters_per_epoch = 2
batch_size = 1
validate_every = 1

[stage.posttrain]
epochs = 2
iters_per_epoch = 2
batch_size = 1
kd_refresh_every = 1
validate_every = 2
"""


def tiny_sample(sample_id: str, seed: int) -> Sample:
    """A 40x40x32 brain-like volume: noisy ellipsoid, a tumour ball with ED/NCR/ET shells."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = np.array(SHAPE)[:, None, None, None] / 2
    brain = (((grid - centre) / (np.array(SHAPE)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    tc = rng.integers(12, 28, size=3)[:, None, None, None]
    r = np.sqrt(((grid - tc) ** 2).sum(0))
    label = np.select([r < 2.5, r < 4.5, r < 7], [1, 3, 2], 0).astype(np.uint8) * brain
    image = rng.normal(0, 0.3, size=(4, *SHAPE)).astype(np.float32)
    contrast = np.array(
        [[0, 0.5, -0.5, 2.0], [0, -1, -0.5, 0.5], [0, 0.5, 2.5, 0.5], [0, 0.5, 0, 2.0]]
    )
    image += contrast[:, label]
    image *= brain
    meta = {"present": [True] * 4, "case_id": sample_id}
    return Sample(sample_id, image, label, meta)


def make_store(
    root: Path, n_real: int = 3, n_synth: int = 3, n_val: int = 1, store_id: str = "tiny0001"
) -> Path:
    """A complete shard store (manifest with splits and ``store_id``) with real train/val and
    synthetic samples; the real sample ids are the case ids."""
    infos = []
    groups = {
        ("real", "train", "real/train-00000.h5"): n_real,
        ("real", "val", "real/val-00000.h5"): n_val,
        ("synthetic", "train", "synthetic/aem-00000.h5"): n_synth,
    }
    seed = 0
    for (kind, split, name), n in groups.items():
        samples = []
        for i in range(n):
            samples.append(tiny_sample(f"{kind}-{split}-{i}", seed))
            seed += 1
        infos.append(
            write_shard(root / name, samples, root=root, kind=kind, split=split, chunk=(16, 16, 16))
        )
    splits = {
        "train": [f"real-train-{i}" for i in range(n_real)],
        "val": [f"real-val-{i}" for i in range(n_val)],
        "test": [],
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "store_id": store_id,
        "splits": splits,
        "shards": [i.to_dict() for i in infos],
    }
    write_manifest(root, manifest)
    return root


def tiny_config_file(tmp: Path, store: Path, extra: str = "") -> Path:
    """Write the tiny TOML config next to ``tmp/runs`` and return its path."""
    path = tmp / "tiny.toml"
    path.write_text(TINY.format(shards=store.as_posix(), runs=(tmp / "runs").as_posix()) + extra)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_tiny_checkpoint(path: Path, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Save ``model`` (an RFNet with 4 classes) as a finished-train-stage checkpoint at ``path``."""
    return save_checkpoint(
        path,
        {
            "stage": "train",
            "backbone": "rfnet",
            "backbone_kwargs": model.init_args,
            "num_classes": 4,
            "model": model.state_dict(),
            "config": config,
        },
    )
