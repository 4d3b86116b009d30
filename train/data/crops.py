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
uint8; same values) for a cheaper transfer, and batches (what loaders yield,
:meth:`CropDataset.read_batch`) carry only the drawn modalities' channels;
:func:`batch_to_device` rebuilds and widens them on the target device.

Worker -> main process transfer
-------------------------------
In the workers of :func:`train.data.loader.make_loader` compact batches are
written into a per-worker :class:`SlotRing` of reusable shared-memory slots
and sent as a small :class:`RingBatch` (which slot, which sequence number,
the masks and sample ids); the main process copies each out of its slot into
ordinary tensors (:class:`SlotReader`) before the slot can be written again.
A slot's shared memory travels (as a file descriptor) only the first time
the main process sees it, so no batch allocates, page-faults or releases
fresh shared memory.  See :func:`train.data.loader.make_loader` for why the
ring is large enough; a sequence-number check refuses a batch whose slot was
rewritten before it was copied.

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
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from aem_synth.errors import ShardError
from aem_synth.store.shards import SampleRef, ShardReader
from train.data.subsets import Mask, draw_subset

__all__ = [
    "CropDataset",
    "CropPlan",
    "RingBatch",
    "SlotReader",
    "SlotRing",
    "check_crop_fits",
    "collate_batch",
    "crop_start",
    "refs_with_modalities",
    "unpack_channels",
]

FG_CLASSES = (1, 2, 3)
N_LABELS = 4

_SampleFacts = tuple[tuple[int, int, int], tuple[bool, ...], tuple[int, ...]]
"""Per sample: spatial shape, modalities present, tumour positions indexed per class."""


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor, in shared memory when called in a DataLoader worker."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape, strides)


def unpack_channels(channels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` ``(B, 4, cx, cy, cz)`` from packed ``channels`` ``(P, cx, cy, cz)`` and
    ``mask`` ``(B, 4)`` (see :meth:`CropDataset.read_batch`); absent modalities are 0."""
    if channels.shape[0] != int(mask.sum()):
        raise ValueError(
            f"{channels.shape[0]} packed channels for a mask with {int(mask.sum())} modalities"
        )
    image = channels.new_zeros((mask.shape[0], mask.shape[1], *channels.shape[1:]))
    image[mask.to(channels.device)] = channels
    return image


def collate_batch(batch: Any) -> Any:
    """``collate_fn`` of loaders over :class:`CropDataset`: batches made by its
    ``__getitems__`` (dicts, :class:`RingBatch`) pass through, lists of items go
    to ``default_collate``."""
    return batch if isinstance(batch, dict | RingBatch) else default_collate(batch)


# -- Slot ring: compact batches handed from a DataLoader worker to the main process ------------

_HEADER_BYTES = 64
"""Slot header: int64 fields ``_BEGIN``, ``_END``, ``_MAPPED``, then padding."""
_BEGIN, _END, _MAPPED = 0, 1, 2
"""Header fields: sequence number of the batch being written (set before the
data) and of the batch written completely (set after it), by the worker; 1
once the main process holds a mapping of the slot, set by the main process."""


def _slot_bounds(channels: int, n: int, crop: tuple[int, int, int]) -> tuple[int, int, int]:
    """Byte offsets in a slot of the packed channels (float16 ``(channels, *crop)``,
    after the header), of the labels (uint8 ``(n, *crop)``, right after them) and of
    their end."""
    vox = crop[0] * crop[1] * crop[2]
    label = _HEADER_BYTES + channels * vox * 2
    return _HEADER_BYTES, label, label + n * vox


def _byte_view(storage: torch.UntypedStorage) -> np.ndarray:
    """A flat uint8 array over the whole of ``storage`` (sharing its memory)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,)).numpy()


@dataclass(frozen=True)
class RingBatch:
    """A compact batch left in slot ``slot`` of a worker's :class:`SlotRing` (what the
    workers of :func:`train.data.loader.make_loader` send; :class:`SlotReader` turns
    it into the batch of :meth:`CropDataset.read_batch`).

    Attributes
    ----------
    ring : str
        Random token of the ring (one per worker process).
    worker : int
        DataLoader worker id.
    slot, seq : int
        Slot index and the batch's sequence number in the ring.
    crop : tuple of 3 int
    channels : int
        Packed channels (drawn modalities of all samples).
    mask : tuple of tuples of 4 bool
        Per sample, the drawn modalities.
    sample_id : tuple of str
    storage : UntypedStorage or None
        The slot's shared memory, sent only while the main process has not
        mapped it (first use of the slot, or a larger slot); else None.
    """

    ring: str
    worker: int
    slot: int
    seq: int
    crop: tuple[int, int, int]
    channels: int
    mask: tuple[tuple[bool, ...], ...]
    sample_id: tuple[str, ...]
    storage: torch.UntypedStorage | None


@dataclass
class _Claim:
    """A slot being written: where the crops go and what :meth:`SlotRing.publish` sends."""

    slot: int
    seq: int
    storage: torch.UntypedStorage
    header: np.ndarray
    channels: np.ndarray
    labels: np.ndarray


class SlotRing:
    """A DataLoader worker's ring of ``slots`` reusable shared-memory slots for compact batches.

    Batch ``s`` (1, 2, ...) of the worker goes to slot ``(s - 1) % slots``: one
    shared storage per slot holding a 64-byte header, the packed float16
    channels and the uint8 labels.  A slot is allocated on first use, sized
    for the batch with all four modalities (so only a larger batch size makes
    a new one), and reused afterwards: its pages stay mapped and populated in
    both processes, and its storage is sent only until the main process
    records in the header that it holds a mapping.

    The worker writes the batch's sequence number into the header before
    (``_BEGIN``) and after (``_END``) the data; :meth:`SlotReader.read` checks
    both around its copy, so a slot rewritten too early is an error, never a
    wrong batch.  Create it in the worker process (see
    :meth:`CropDataset.use_slot_ring`); ``pid`` keeps a forked child from
    writing its parent's ring.
    """

    def __init__(self, slots: int, worker: int = 0) -> None:
        if slots < 1:
            raise ValueError(f"a slot ring needs at least one slot, got {slots}")
        self.token = secrets.token_hex(8)
        self.worker = int(worker)
        self.pid = os.getpid()
        self._storages: list[torch.UntypedStorage | None] = [None] * slots
        self._arrays: list[np.ndarray | None] = [None] * slots
        self._next = 0
        self._seq = 0

    def __len__(self) -> int:
        return len(self._storages)

    def claim(self, channels: int, n: int, crop: tuple[int, int, int]) -> _Claim:
        """The next slot, marked as being written, with views for ``channels``
        packed float16 channels and ``n`` uint8 labels of ``crop``."""
        k = self._next
        self._next = (k + 1) % len(self)
        self._seq += 1
        start, label, end = _slot_bounds(channels, n, crop)
        storage, buf = self._storages[k], self._arrays[k]
        if storage is None or buf is None or buf.nbytes < end:
            nbytes = _slot_bounds(4 * n, n, crop)[2]
            storage = torch.UntypedStorage._new_shared(nbytes)
            buf = _byte_view(storage)
            self._storages[k], self._arrays[k] = storage, buf
        header = buf[:_HEADER_BYTES].view(np.int64)
        header[_BEGIN] = self._seq
        return _Claim(
            slot=k,
            seq=self._seq,
            storage=storage,
            header=header,
            channels=buf[start:label].view(np.float16).reshape(channels, *crop),
            labels=buf[label:end].reshape(n, *crop),
        )

    def publish(
        self, claim: _Claim, masks: Sequence[Sequence[bool]], sample_ids: Sequence[str]
    ) -> RingBatch:
        """Mark ``claim`` written and describe it for the main process."""
        claim.header[_END] = claim.seq
        crop = claim.labels.shape[1:]
        return RingBatch(
            ring=self.token,
            worker=self.worker,
            slot=claim.slot,
            seq=claim.seq,
            crop=(int(crop[0]), int(crop[1]), int(crop[2])),
            channels=int(claim.channels.shape[0]),
            mask=tuple(tuple(bool(m) for m in mask) for mask in masks),
            sample_id=tuple(sample_ids),
            storage=None if claim.header[_MAPPED] else claim.storage,
        )


class SlotReader:
    """The main process's side of the workers' :class:`SlotRing`: keeps a mapping of
    every slot it was sent and copies batches out of them.

    Holds the slots of the latest ring of each worker id (a worker replaced by
    a new process drops its predecessor's).  ``storages_received`` counts the
    slot storages that arrived (a ring of ``R`` slots sends ``R`` of them once
    the main process has seen every slot, unless batches are discarded unread).
    """

    def __init__(self) -> None:
        self._rings: dict[int, tuple[str, dict[int, tuple[torch.UntypedStorage, np.ndarray]]]] = {}
        self.storages_received = 0

    def read(self, batch: RingBatch, *, pin_memory: bool = False) -> dict[str, Any]:
        """The batch of :meth:`CropDataset.read_batch` held in ``batch``'s slot, copied
        into new (pinned, when ``pin_memory``) tensors.

        Raises
        ------
        RuntimeError
            The slot's memory never arrived, or the slot does not hold this
            batch any more (rewritten before or during the copy).
        """
        token, slots = self._rings.get(batch.worker, ("", {}))
        if token != batch.ring:
            token, slots = batch.ring, {}
            self._rings[batch.worker] = (token, slots)
        if batch.storage is not None:
            slots[batch.slot] = (batch.storage, _byte_view(batch.storage))
            slots[batch.slot][1][:_HEADER_BYTES].view(np.int64)[_MAPPED] = 1
            self.storages_received += 1
        entry = slots.get(batch.slot)
        where = f"loader worker {batch.worker}, slot {batch.slot}, batch {batch.seq}"
        if entry is None:
            raise RuntimeError(f"{where}: the slot's shared memory was never received")
        view = entry[1]
        header = view[:_HEADER_BYTES].view(np.int64)
        start, label, end = _slot_bounds(batch.channels, len(batch.mask), batch.crop)
        if view.size < end:
            raise RuntimeError(f"{where}: the slot holds {view.size} bytes, need {end}")
        self._check(header, batch.seq, where, "before")
        n = len(batch.mask)
        channels = torch.empty(
            (batch.channels, *batch.crop), dtype=torch.float16, pin_memory=pin_memory
        )
        labels = torch.empty((n, *batch.crop), dtype=torch.uint8, pin_memory=pin_memory)
        # numpy's copy is one memcpy; torch's would split it over the intra-op
        # threads, which stalls when the loader workers hold the other cores.
        np.copyto(channels.numpy().reshape(-1).view(np.uint8), view[start:label])
        np.copyto(labels.numpy().reshape(-1), view[label:end])
        self._check(header, batch.seq, where, "while")
        mask = torch.tensor(batch.mask, dtype=torch.bool).reshape(n, 4)
        return {
            "channels": channels,
            "label": labels,
            "mask": mask.pin_memory() if pin_memory else mask,
            "sample_id": list(batch.sample_id),
        }

    @staticmethod
    def _check(header: np.ndarray, seq: int, where: str, when: str) -> None:
        begin, end = int(header[_BEGIN]), int(header[_END])
        if begin != seq or end != seq:
            raise RuntimeError(
                f"{where}: the worker rewrote the slot {when} the main process copied it "
                f"(header: writing batch {begin}, last complete {end}); the batch is refused. "
                "The ring has fewer slots than the batches a worker can have in flight "
                "(see train.data.loader.make_loader)"
            )


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
        self._facts_cache: dict[tuple[Path, str], _SampleFacts] = {}
        self._ring_slots = 0
        self._ring: SlotRing | None = None

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
        state["_ring"] = None
        return state

    def use_slot_ring(self, slots: int) -> None:
        """Write compact batches made in a DataLoader worker into a :class:`SlotRing` of
        ``slots`` slots (sent as :class:`RingBatch`; 0: fresh shared tensors per batch).

        Called in the worker processes of :func:`train.data.loader.make_loader`,
        whose loader reads the slots back; a plain ``DataLoader`` would yield
        the :class:`RingBatch` references themselves.  The ring is created
        lazily, once per worker process.
        """
        if slots < 0:
            raise ValueError(f"slots must be >= 0, got {slots}")
        self._ring_slots = int(slots)
        self._ring = None

    def _worker_ring(self) -> SlotRing | None:
        """This worker process's slot ring, or None (main process, or no ring asked for)."""
        if not self._ring_slots:
            return None
        info = get_worker_info()
        if info is None:
            return None
        if self._ring is None or self._ring.pid != os.getpid():
            self._ring = SlotRing(self._ring_slots, info.id)
        return self._ring

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
        shape, present, fg_counts = self._facts(ref)
        centre = (
            self._tumour_centre(rd, ref, fg_counts, rng)
            if rng.random() < self.tumour_share
            else None
        )
        starts = [
            crop_start(s, c, None if centre is None else int(centre[a]), rng)
            for a, (s, c) in enumerate(zip(shape, self.crop, strict=True))
        ]
        box = tuple((st, min(st + c, s)) for st, c, s in zip(starts, self.crop, shape, strict=True))
        offset = tuple(max(0, (c - s) // 2) for c, s in zip(self.crop, shape, strict=True))
        mask = draw_subset(rng, present)
        return CropPlan(ref, box, offset, mask, centre is not None)  # type: ignore[arg-type]

    def _facts(self, ref: SampleRef) -> _SampleFacts:
        """Shape, modalities present and tumour index sizes of ``ref``, read once per process."""
        key = (ref.shard, ref.sample_id)
        facts = self._facts_cache.get(key)
        if facts is None:
            rd = self.reader(ref.shard)
            facts = self._facts_cache[key] = (
                rd.shape(ref.sample_id),
                self._present(rd, ref),
                tuple(rd.foreground_count(ref.sample_id, c) for c in FG_CLASSES),
            )
        return facts

    @staticmethod
    def _tumour_centre(
        rd: ShardReader, ref: SampleRef, fg_counts: tuple[int, ...], rng: np.random.Generator
    ) -> np.ndarray | None:
        classes = [c for c, n in zip(FG_CLASSES, fg_counts, strict=True) if n]
        if not classes:
            return None
        cls = classes[int(rng.integers(len(classes)))]
        chosen = rd.foreground(ref.sample_id, cls)
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

    def read_into(self, plan: CropPlan, channels: Sequence[np.ndarray], label: np.ndarray) -> None:
        """Read the planned box of the drawn modalities into zero-padded crop arrays.

        Parameters
        ----------
        plan : CropPlan
        channels : sequence of ndarray, float16, (cx, cy, cz)
            One C-contiguous array per drawn modality (``plan.mask``), in
            MODALITIES order; filled in place with the box at ``plan.offset``,
            0 elsewhere.
        label : ndarray, uint8, (cx, cy, cz)
            Filled in place, 0 outside the box.

        Absent modalities are not read at all, which saves their
        decompression; HDF5 decompresses straight into the given arrays.
        """
        rd, key = self.reader(plan.ref.shard), plan.ref.sample_id
        drawn = [m for m, on in enumerate(plan.mask) if on]
        if len(channels) != len(drawn):
            raise ValueError(f"{len(drawn)} modalities drawn, {len(channels)} arrays given")
        source = tuple(slice(a, b) for a, b in plan.box)
        dest = tuple(slice(o, o + (b - a)) for o, (a, b) in zip(plan.offset, plan.box, strict=True))
        padded = any(d.stop - d.start != c for d, c in zip(dest, self.crop, strict=True))
        for m, out in zip(drawn, channels, strict=True):
            if padded:
                out[...] = 0
            rd.read_into(key, "image", out, (m, *source), dest)
        if padded:
            label[...] = 0
        rd.read_into(key, "label", label, source, dest)
        if int(label.max()) >= N_LABELS:
            raise ShardError(
                f"{plan.ref.shard}: sample {key!r} has label value {int(label.max())} "
                f"in box {plan.box}; labels must be 0..{N_LABELS - 1}"
            )

    def load(self, plan: CropPlan) -> dict[str, Any]:
        """One item: the planned crop as tensors (see the module docstring)."""
        image = np.zeros((4, *self.crop), np.float16)
        label = np.zeros(self.crop, np.uint8)
        self.read_into(plan, [image[m] for m, on in enumerate(plan.mask) if on], label)
        image_t, label_t = torch.from_numpy(image), torch.from_numpy(label)
        if not self.compact:
            # torch widens float16 several times faster than numpy.
            image_t, label_t = image_t.float(), label_t.long()
        mask = torch.tensor(plan.mask, dtype=torch.bool)
        return {"image": image_t, "label": label_t, "mask": mask, "sample_id": plan.ref.sample_id}

    def read_batch(self, plans: Sequence[CropPlan]) -> dict[str, Any] | RingBatch:
        """The collated batch of ``plans`` (what loaders yield).

        Not ``compact``: the items of :meth:`load` collated. ``compact``: the
        transfer format, each crop read straight into its slot of the batch
        tensors, and of the image only the drawn modalities:

        ``channels`` float16 ``(P, cx, cy, cz)``: the drawn modalities of
            every sample, sample after sample, in MODALITIES order (``P =
            mask.sum()``); :func:`unpack_channels` / ``batch_to_device``
            rebuild ``image`` ``(n, 4, cx, cy, cz)`` with zeros elsewhere.
        ``label`` uint8 ``(n, cx, cy, cz)``, ``mask`` bool ``(n, 4)``,
        ``sample_id`` list of str.

        No collate copy, and no bytes for the absent modalities (about half of
        them over the 15 subsets).  In a DataLoader worker the crops are read
        into the worker's :class:`SlotRing` when :meth:`use_slot_ring` asked
        for one (the workers of ``make_loader``), and the batch is the
        :class:`RingBatch` naming the slot; otherwise into tensors allocated in
        shared memory, sent as they are.
        """
        if not self.compact:
            return default_collate([self.load(plan) for plan in plans])
        n = len(plans)
        p = sum(sum(plan.mask) for plan in plans)
        masks = [plan.mask for plan in plans]
        sample_ids = [plan.ref.sample_id for plan in plans]
        ring = self._worker_ring()
        if ring is not None:
            claim = ring.claim(p, n, self.crop)
            self._read_packed(plans, claim.channels, claim.labels)
            return ring.publish(claim, masks, sample_ids)
        channels = _new_tensor((p, *self.crop), torch.float16)
        label = _new_tensor((n, *self.crop), torch.uint8)
        self._read_packed(plans, channels.numpy(), label.numpy())
        return {
            "channels": channels,
            "label": label,
            "mask": torch.tensor(masks, dtype=torch.bool).reshape(n, 4),
            "sample_id": sample_ids,
        }

    def _read_packed(
        self, plans: Sequence[CropPlan], channels: np.ndarray, labels: np.ndarray
    ) -> None:
        """Read ``plans`` into packed ``channels`` (drawn modalities, sample after
        sample) and ``labels`` (one per sample)."""
        start = 0
        for k, plan in enumerate(plans):
            drawn = sum(plan.mask)
            self.read_into(plan, list(channels[start : start + drawn]), labels[k])
            start += drawn

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> dict[str, Any] | RingBatch:
        """The collated batch of ``indices`` (``DataLoader`` calls this instead of
        ``__getitem__`` per item; pair it with :func:`collate_batch`), saving
        ``default_collate``'s copy of every crop (4.6 MB per 80^3 compact crop)."""
        return self.read_batch([self.plan(i) for i in indices])

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        return self.load(self.plan(index))
