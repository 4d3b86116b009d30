"""Loaders over the shard store: the samples of each stage, epoch-seeded samplers, device transfer.

Batches are the collated items of :class:`train.data.crops.CropDataset`:
``image`` ``(B, 4, cx, cy, cz)``, ``label`` ``(B, cx, cy, cz)``, ``mask``
``(B, 4)`` bool, ``sample_id`` list of str.  Item ``i`` of epoch ``e`` is a
pure function of ``(seed, e, i)``: the samplers read the epoch from the
dataset in the main process and send ``(epoch, i)`` to the workers, so the
batches do not depend on the number of workers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from aem_synth.build.tuning import tune_worker
from aem_synth.errors import ShardError
from aem_synth.store.shards import SampleRef, list_samples
from train.data.crops import CropDataset, RingBatch, SlotReader, collate_batch, unpack_channels

__all__ = [
    "PREFETCH_FACTOR",
    "RING_SLOTS",
    "STAGES",
    "CropLoader",
    "EpochDistributedSampler",
    "EpochSampler",
    "batch_to_device",
    "make_loader",
    "stage_refs",
    "val_refs",
]

STAGES = ("pretrain", "train", "posttrain")

PREFETCH_FACTOR = 2
"""Batches each loader worker is asked for ahead (DataLoader's ``prefetch_factor``)."""
RING_SLOTS = PREFETCH_FACTOR + 2
"""Slots of each worker's :class:`train.data.crops.SlotRing`: the batch the main
process is copying, the ``PREFETCH_FACTOR`` batches the worker may be writing
or have queued meanwhile, and one spare (see :func:`make_loader`)."""


def batch_to_device(
    batch: dict[str, Any], device: torch.device | str, *, non_blocking: bool = True
) -> dict[str, Any]:
    """Move a collated batch to ``device`` as image float32, label int64, mask bool.

    Converts after the copy, so compact batches (float16 / uint8, packed
    ``channels`` of the drawn modalities only) cross the bus at their small
    size and ``image`` ``(B, 4, ...)`` is rebuilt on ``device``; ``sample_id``
    and other entries pass through.
    """
    out = dict(batch)
    if "channels" in out:  # compact batch: only the drawn modalities were sent
        channels = out.pop("channels").to(device, non_blocking=non_blocking)
        out["image"] = unpack_channels(channels.float(), batch["mask"].to(device))
    else:
        out["image"] = batch["image"].to(device, non_blocking=non_blocking).float()
    out["label"] = batch["label"].to(device, non_blocking=non_blocking).long()
    out["mask"] = batch["mask"].to(device, non_blocking=non_blocking).bool()
    return out


def _epoch_seed_rng(seed: int, epoch: int) -> np.random.Generator:
    # The trailing tag keeps the order stream distinct from the item streams.
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 2**31 - 1, 0]))


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch permutation yielding ``(epoch, index)`` with the dataset's epoch.

    Runs in the main process, so the epoch set there with
    :meth:`CropDataset.set_epoch` travels to (persistent) workers in the index.
    """

    def __init__(self, dataset: CropDataset, *, seed: int = 0, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, n = self.dataset.epoch, len(self.dataset)
        order = _epoch_seed_rng(self.seed, epoch).permutation(n) if self.shuffle else range(n)
        return iter([(epoch, int(i)) for i in order])


class EpochDistributedSampler(DistributedSampler[tuple[int, int]]):
    """``DistributedSampler`` that follows the dataset's epoch and yields ``(epoch, index)``."""

    dataset: CropDataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        super().set_epoch(self.dataset.epoch)
        epoch = self.dataset.epoch
        indices = cast(Iterator[int], super().__iter__())  # the parent yields plain indices
        return iter([(epoch, int(i)) for i in indices])


def _worker_init(worker_id: int, ring_slots: int = 0) -> None:
    """Per-worker set-up: one intra-op thread, a fresh reader cache, the slot ring
    (``ring_slots`` slots, 0: none); no RNG seeding needed.

    Items are seeded from ``(seed, epoch, index)``, so no global RNG is touched here.
    """
    torch.set_num_threads(1)
    tune_worker()  # one core per loader worker; the allocator part matters under spawn
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, CropDataset):
        info.dataset.close()
        info.dataset.use_slot_ring(ring_slots)


class _Batches:
    """Iterator over a DataLoader iterator that copies :class:`RingBatch` slots out
    (:class:`SlotReader`) as each batch is returned, before the next is asked for."""

    def __init__(self, batches: Iterator[Any], reader: SlotReader, pin_memory: bool) -> None:
        self._batches = batches
        self._reader = reader
        self._pin = pin_memory

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._batches)
        if isinstance(batch, RingBatch):
            return self._reader.read(batch, pin_memory=self._pin)
        return cast(dict[str, Any], batch)

    def __len__(self) -> int:
        return len(cast(Any, self._batches))


class CropLoader(DataLoader[dict[str, Any]]):
    """The ``DataLoader`` of :func:`make_loader`: yields ordinary batches (dicts of
    private tensors) also when its workers send :class:`RingBatch` slot references.

    Parameters are those of ``DataLoader`` plus ``pin_slots``: copy the slots
    into pinned memory (the workers' batches skip ``DataLoader``'s pin-memory
    thread, which would only forward the references).  ``slot_reader`` holds
    the main process's mappings of the workers' slots.
    """

    def __init__(self, dataset: CropDataset, *, pin_slots: bool = False, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.pin_slots = bool(pin_slots)
        self.slot_reader = SlotReader()

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        batches = super().__iter__()
        if self.num_workers == 0:
            return batches
        return _Batches(batches, self.slot_reader, self.pin_slots)


def make_loader(
    dataset: CropDataset,
    *,
    batch_size: int,
    workers: int,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = True,
) -> CropLoader:
    """DataLoader over a :class:`CropDataset` with a seeded, epoch-following sampler.

    Parameters
    ----------
    dataset : CropDataset
        Call ``dataset.set_epoch(e)`` (or ``loader.sampler.set_epoch(e)``)
        before iterating epoch ``e``.
    batch_size : int
        Per process (per rank when distributed).
    workers : int
        Worker processes; 0 reads in the calling process.  Workers are
        persistent when > 0.
    distributed : bool
        Use :class:`EpochDistributedSampler` (``torch.distributed`` must be
        initialised); each rank gets a disjoint share of every epoch.
    seed : int
        Seed of the epoch order and of torch's per-worker base seed.
    drop_last : bool
        Drop the last incomplete batch.

    Notes
    -----
    With workers and a ``compact`` dataset, each worker writes its batches into
    a ring of :data:`RING_SLOTS` reusable shared-memory slots
    (:class:`train.data.crops.SlotRing`) and the loader copies each batch out
    of its slot in the main process when it is returned (:class:`CropLoader`),
    so batches are ordinary tensors and no batch allocates fresh shared memory
    or sends a file descriptor.  The ring cannot be overrun, from torch's
    ``torch/utils/data/dataloader.py`` (2.13): tasks are sent only when the
    iterator is primed, ``prefetch_factor * num_workers`` of them
    (``_reset``), and one per returned batch, from ``_process_data``, which
    calls ``_try_put_index`` just *before* returning the batch; with
    ``in_order`` (the default) ``_try_put_index`` gives task ``t`` to worker
    ``t mod num_workers`` (``_worker_queue_idx_cycle``, reset each epoch; all
    workers of a map-style dataset stay active).  So when batch ``j`` is
    returned, tasks up to ``j + prefetch_factor * num_workers`` have been sent,
    of which ``prefetch_factor`` belong to batch ``j``'s worker after ``j``; a
    worker runs its tasks in order (one index queue each), so while the main
    process copies a worker's batch ``m`` (slot ``m mod R``), the worker writes
    at most its batches ``m + 1 .. m + prefetch_factor``.  The next task goes
    out only at the next ``__next__``, after the copy.  Batches received out of
    order wait in ``_task_info``, and the same count holds for them.
    ``R = prefetch_factor + 1`` would do; :data:`RING_SLOTS` keeps one spare.
    Batches of an epoch abandoned part-way are dropped unread when the next
    epoch starts (``_reset`` waits for every worker's ``_ResumeIteration``
    acknowledgement, which follows its last stale batch), so they hold no slot;
    a slot whose first batch was dropped sends its memory again with its next
    batch, since the main process marks a slot in its header only when mapped.
    Each batch's sequence number is checked around the copy all the same
    (:meth:`train.data.crops.SlotReader.read` raises rather than return a
    rewritten slot).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    sampler: Sampler[tuple[int, int]]
    if distributed:
        sampler = EpochDistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last)
    else:
        sampler = EpochSampler(dataset, seed=seed)
    ring = workers > 0 and dataset.compact
    pin = torch.cuda.is_available()
    return CropLoader(
        dataset,
        pin_slots=pin and ring,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        pin_memory=pin and not ring,
        drop_last=drop_last,
        worker_init_fn=(
            functools.partial(_worker_init, ring_slots=RING_SLOTS if ring else 0)
            if workers > 0
            else None
        ),
        collate_fn=collate_batch,
        # An explicit generator keeps DataLoader from drawing its base seed from global state.
        generator=torch.Generator().manual_seed(seed),
    )


def _require(refs: list[SampleRef], root: Path, stage: str, what: str) -> list[SampleRef]:
    if not refs:
        raise ShardError(f"{root}: the shard store has no {what} samples for stage {stage!r}")
    return refs


def stage_refs(
    shards_root: Path | str, stage: str, *, mix_real_ratio: float = 0.0, seed: int = 0
) -> list[SampleRef]:
    """Samples a training stage streams.

    Parameters
    ----------
    shards_root : Path
        Store root holding ``manifest.json``.
    stage : {"pretrain", "train", "posttrain"}
        ``pretrain`` uses the synthetic shards; ``train`` and ``posttrain``
        use the real training split only.
    mix_real_ratio : float
        Pretrain only: real training samples added per synthetic sample.
        ``r`` adds ``round(r * n_synthetic)`` real refs, taken from seeded
        permutations of the real training cases (repeated when more are
        needed than exist), after the synthetic refs.  0 adds none.
    seed : int
        Seed of the real-case selection.

    Raises
    ------
    ValueError
        Unknown stage, a negative or non-finite ratio, or a ratio for a stage
        other than pretrain.
    ShardError
        The store has no samples for the stage.
    """
    root = Path(shards_root)
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if not (math.isfinite(mix_real_ratio) and mix_real_ratio >= 0):
        raise ValueError(f"mix_real_ratio must be a finite number >= 0, got {mix_real_ratio}")
    if stage != "pretrain":
        if mix_real_ratio:
            raise ValueError(
                f"mix_real_ratio applies to stage 'pretrain' only, got {mix_real_ratio} "
                f"for stage {stage!r}"
            )
        return _require(list_samples(root, "real", "train"), root, stage, "real training")
    synthetic = _require(list_samples(root, "synthetic", "train"), root, stage, "synthetic")
    n_real = round(mix_real_ratio * len(synthetic))
    if n_real == 0:
        return synthetic
    real = _require(list_samples(root, "real", "train"), root, stage, "real training")
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(real), n_real]))
    picks = np.concatenate([rng.permutation(len(real)) for _ in range(-(-n_real // len(real)))])
    return synthetic + [real[int(i)] for i in picks[:n_real]]


def val_refs(shards_root: Path | str) -> list[SampleRef]:
    """Real validation samples used for monitoring; ``ShardError`` when there are none."""
    root = Path(shards_root)
    return _require(list_samples(root, "real", "val"), root, "val", "real validation")
