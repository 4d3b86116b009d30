"""Random crops of shard samples: what one training item reads, and the dataset that reads it.

Everything is read through :mod:`aem_synth.store.shards` (manifest + ``ShardReader``).

Tensors produced
----------------
``image``  float32 ``(4, cx, cy, cz)``: FLAIR, T1, T1ce, T2 in canonical RAS
           axes, z-scores; modalities absent from the drawn subset are zero.
``label``  int64 ``(cx, cy, cz)``: 0 background, 1 NCR/NET, 2 ED, 3 ET.
``mask``   bool ``(4,)``: the drawn modality subset (one of the 15 of
           :data:`train.data.subsets.ALL_SUBSETS`, never using a modality the
           sample lacks).
``sample_id`` str.

With ``compact=True`` image and label keep their stored dtypes (float16,
uint8; same values) for a cheaper transfer, and :func:`batch_to_device`
converts them on the target device.

Determinism and workers
-----------------------
Item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` and the
store, so batches do not depend on the number of workers.  The loaders of
:func:`make_loader` use samplers that read the epoch from the dataset in the
main process and send ``(epoch, i)`` to the workers, so
:meth:`CropDataset.set_epoch` also reaches persistent workers.  Each worker
process opens each shard file once, lazily, on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aem_synth.errors import ShardError
from aem_synth.store.shards import SampleRef, ShardReader
from train.data.subsets import Mask, draw_subset

__all__ = ["CropDataset", "CropPlan", "check_crop_fits", "crop_start", "refs_with_modalities"]

FG_CLASSES = (1, 2, 3)
N_LABELS = 4


@dataclass(frozen=True)
class CropPlan:
    """What one item reads: drawn by :meth:`CropDataset.plan`, loaded by :meth:`CropDataset.load`.

    Attributes
    ----------
    ref : SampleRef
    box : tuple of 3 (start, stop)
        Half-open voxel ranges read from the stored volume along (x, y, z).
    offset : tuple of 3 int
        Where the read box starts inside the crop (non-zero only when the
        volume is smaller than the crop and is zero-padded).
    mask : tuple of 4 bool
        Drawn modality subset.
    tumour : bool
        True when the crop was centred on an indexed tumour voxel.
    """

    ref: SampleRef
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    offset: tuple[int, int, int]
    mask: Mask
    tumour: bool


def crop_start(size: int, crop: int, centre: int | None, rng: np.random.Generator) -> int:
    """First voxel of a crop of length ``crop`` along an axis of length ``size``.

    Centred on ``centre`` (clipped to stay inside the volume) or uniform over
    all valid starts when ``centre`` is None; 0 when the axis is shorter than
    the crop (the whole axis is read and padded).
    """
    if size <= crop:
        return 0
    if centre is None:
        return int(rng.integers(0, size - crop + 1))
    return int(np.clip(centre - crop // 2, 0, size - crop))


def _check_crop(crop: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(c) for c in crop)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"crop must be three positive voxel counts (x, y, z), got {tuple(crop)}")
    return (values[0], values[1], values[2])


def check_crop_fits(refs: Sequence[SampleRef], crop: Sequence[int]) -> tuple[int, int, int]:
    """Largest stored volume per axis (x, y, z); a crop larger than all of them is refused.

    Volumes smaller than the crop are zero-padded (some cases are small), but a
    crop larger than every volume along an axis only adds padding, while the
    model's memory grows with the crop's volume (a 200^3 crop on 64x64x48
    volumes needs tens of GB).  Reads shapes only (HDF5 metadata, no voxels).

    Raises
    ------
    ValueError
        The message names the crop, the largest volume and the config key.
    """
    size = _check_crop(crop)
    if not refs:
        raise ValueError("no samples to crop from")
    largest = [0, 0, 0]
    readers: dict[Path, ShardReader] = {}
    try:
        for ref in refs:
            rd = readers.setdefault(ref.shard, ShardReader(ref.shard))
            largest = [max(a, b) for a, b in zip(largest, rd.shape(ref.sample_id), strict=True)]
    finally:
        for rd in readers.values():
            rd.close()
    over = [ax for ax, c, m in zip("xyz", size, largest, strict=True) if c > m]
    if over:
        raise ValueError(
            f"crop {'x'.join(map(str, size))} (data.crop) is larger than every stored volume "
            f"along {', '.join(over)}: the largest of the {len(refs)} samples is "
            f"{'x'.join(map(str, largest))}. Crops would be mostly padding and memory grows with "
            f"the crop volume; set data.crop to at most {'x'.join(map(str, largest))} "
            f"(e.g. --set data.crop=[{','.join(str(min(c, m)) for c, m in zip(size, largest, strict=True))}])"
        )
    return (largest[0], largest[1], largest[2])


def refs_with_modalities(refs: Sequence[SampleRef], at_least: int) -> list[SampleRef]:
    """The samples that have at least ``at_least`` modalities on disk (``present`` in meta).

    KD post-training drops one modality from a teacher set of two or more, so a
    case with a single modality cannot take part.
    """
    kept: list[SampleRef] = []
    readers: dict[Path, ShardReader] = {}
    try:
        for ref in refs:
            rd = readers.setdefault(ref.shard, ShardReader(ref.shard))
            if sum(CropDataset._present(rd, ref)) >= at_least:
                kept.append(ref)
    finally:
        for rd in readers.values():
            rd.close()
    return kept


class CropDataset(Dataset[dict[str, Any]]):
    """Map-style dataset of random crops with tumour oversampling and a drawn modality subset.

    Parameters
    ----------
    refs : sequence of SampleRef
        Samples to crop from (e.g. from :func:`stage_refs`).
    crop : tuple of 3 int
        Crop size (x, y, z) in voxels; smaller volumes are zero-padded.
    tumour_share : float
        Probability that a crop is centred on a random indexed tumour voxel
        (class chosen uniformly among the tumour classes the sample has, then
        a position of that class).  Samples without tumour fall back to a
        uniform crop.
    seed : int
        Base seed; item ``i`` of epoch ``e`` uses ``SeedSequence([seed, e, i])``.
    samples_per_epoch : int, optional
        Epoch length.  ``None``: one item per ref, item ``i`` uses ref
        ``i mod len(refs)``; otherwise each item draws its ref uniformly.
    compact : bool
        Return the image as float16 and the label as uint8 (the stored
        dtypes, so values are identical) to make the worker -> main process
        transfer 2.4x smaller; convert with :func:`batch_to_device`.
    """

    def __init__(
        self,
        refs: Sequence[SampleRef],
        *,
        crop: Sequence[int] = (80, 80, 80),
        tumour_share: float = 0.5,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        compact: bool = False,
    ) -> None:
        if len(refs) == 0:
            raise ValueError("CropDataset needs at least one sample reference, got none")
        if not 0.0 <= tumour_share <= 1.0:
            raise ValueError(f"tumour_share must be in [0, 1], got {tumour_share}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        self.refs: list[SampleRef] = list(refs)
        self.crop = _check_crop(crop)
        self.tumour_share = float(tumour_share)
        self.seed = int(seed)
        self.samples_per_epoch = samples_per_epoch
        self.compact = bool(compact)
        self.epoch = 0
        self._readers: dict[Path, ShardReader] = {}
        self._readers_pid: int | None = None

    def __len__(self) -> int:
        return self.samples_per_epoch if self.samples_per_epoch is not None else len(self.refs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose items ``__getitem__(i)`` returns (also seen by loader workers)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = {}
        state["_readers_pid"] = None
        return state

    def reader(self, shard: Path) -> ShardReader:
        """This process's reader of ``shard``, created on first use."""
        pid = os.getpid()
        if self._readers_pid != pid:
            # Inherited through fork: the parent's handles are not ours to use or close.
            self._readers = {}
            self._readers_pid = pid
        rd = self._readers.get(shard)
        if rd is None:
            rd = self._readers[shard] = ShardReader(shard)
        return rd

    def close(self) -> None:
        """Close the readers this process opened."""
        if self._readers_pid == os.getpid():
            for rd in self._readers.values():
                rd.close()
        self._readers = {}

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index]))

    def _split_index(self, index: int | tuple[int, int]) -> tuple[int, int]:
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        return int(epoch), int(i)

    def plan(self, index: int | tuple[int, int]) -> CropPlan:
        """Draw what item ``index`` (or ``(epoch, index)``) reads, without reading voxels."""
        epoch, i = self._split_index(index)
        rng = self._rng(epoch, i)
        if self.samples_per_epoch is None:
            ref = self.refs[i % len(self.refs)]
        else:
            ref = self.refs[int(rng.integers(len(self.refs)))]
        rd = self.reader(ref.shard)
        shape = rd.shape(ref.sample_id)
        centre = self._tumour_centre(rd, ref, rng) if rng.random() < self.tumour_share else None
        starts = [
            crop_start(s, c, None if centre is None else int(centre[a]), rng)
            for a, (s, c) in enumerate(zip(shape, self.crop, strict=True))
        ]
        box = tuple((st, min(st + c, s)) for st, c, s in zip(starts, self.crop, shape, strict=True))
        offset = tuple(max(0, (c - s) // 2) for c, s in zip(self.crop, shape, strict=True))
        mask = draw_subset(rng, self._present(rd, ref))
        return CropPlan(ref, box, offset, mask, centre is not None)  # type: ignore[arg-type]

    @staticmethod
    def _tumour_centre(
        rd: ShardReader, ref: SampleRef, rng: np.random.Generator
    ) -> np.ndarray | None:
        positions = [rd.foreground(ref.sample_id, c) for c in FG_CLASSES]
        positions = [p for p in positions if len(p)]
        if not positions:
            return None
        chosen = positions[int(rng.integers(len(positions)))]
        return chosen[int(rng.integers(len(chosen)))]

    @staticmethod
    def _present(rd: ShardReader, ref: SampleRef) -> tuple[bool, ...]:
        present = rd.meta(ref.sample_id).get("present")
        if present is None or len(present) != 4:
            raise ShardError(
                f"{ref.shard}: sample {ref.sample_id!r} has no valid 'present' entry in its meta "
                f"(need 4 bools in FLAIR, T1, T1ce, T2 order), got {present!r}"
            )
        return tuple(bool(p) for p in present)

    def load(self, plan: CropPlan) -> dict[str, Any]:
        """Read the planned box, pad it to the crop size and zero absent modalities."""
        rd = self.reader(plan.ref.shard)
        sl = tuple(slice(a, b) for a, b in plan.box)
        patch = rd.image(plan.ref.sample_id, sl)  # type: ignore[arg-type]
        lab = rd.label(plan.ref.sample_id, sl)  # type: ignore[arg-type]
        if lab.size and int(lab.max()) >= N_LABELS:
            raise ShardError(
                f"{plan.ref.shard}: sample {plan.ref.sample_id!r} has label value {int(lab.max())} "
                f"in box {plan.box}; labels must be 0..{N_LABELS - 1}"
            )
        # torch converts dtypes several times faster than numpy (float16 especially).
        img_dtype, lab_dtype = (
            (torch.float16, torch.uint8) if self.compact else (torch.float32, torch.int64)
        )
        patch_t, lab_t = torch.from_numpy(patch), torch.from_numpy(lab)
        if lab.shape == self.crop:
            image, label = patch_t.to(img_dtype), lab_t.to(lab_dtype)
        else:
            image = torch.zeros((4, *self.crop), dtype=img_dtype)
            label = torch.zeros(self.crop, dtype=lab_dtype)
            dst = tuple(
                slice(o, o + (b - a)) for o, (a, b) in zip(plan.offset, plan.box, strict=True)
            )
            image[(slice(None), *dst)] = patch_t
            label[dst] = lab_t
        mask = torch.tensor(plan.mask, dtype=torch.bool)
        image[~mask] = 0
        return {"image": image, "label": label, "mask": mask, "sample_id": plan.ref.sample_id}

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        return self.load(self.plan(index))
