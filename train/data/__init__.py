"""Data stage: stream shard samples as training batches.

Takes a shard store (``manifest.json`` + HDF5 shards).  Gives the samples of
each stage (``stage_refs``, ``val_refs``), random crops with a drawn modality
subset (``CropDataset``: image ``(4, cx, cy, cz)``, label, mask ``(4,)``),
epoch-seeded loaders, batch augmentation and the 15 modality subsets.
"""

from __future__ import annotations

from train.data.augment import AugmentParams, BatchAugment, rotate, rotation_matrices
from train.data.crops import CropDataset, CropPlan, collate_batch, crop_start, unpack_channels
from train.data.loader import (
    STAGES,
    CropLoader,
    EpochDistributedSampler,
    EpochSampler,
    batch_to_device,
    make_loader,
    stage_refs,
    val_refs,
)
from train.data.subsets import (
    ALL_SUBSETS,
    MODALITY_NAMES,
    Mask,
    allowed_subsets,
    draw_subset,
    subset_index,
    subset_name,
)

__all__ = [
    "ALL_SUBSETS",
    "AugmentParams",
    "BatchAugment",
    "CropDataset",
    "CropLoader",
    "CropPlan",
    "EpochDistributedSampler",
    "EpochSampler",
    "MODALITY_NAMES",
    "Mask",
    "STAGES",
    "allowed_subsets",
    "batch_to_device",
    "collate_batch",
    "crop_start",
    "draw_subset",
    "make_loader",
    "rotate",
    "rotation_matrices",
    "stage_refs",
    "unpack_channels",
    "subset_index",
    "subset_name",
    "val_refs",
]
