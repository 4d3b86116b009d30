"""The loader workers' shared-memory slot ring: batches equal to the in-process ones,
slots sent once, abandoned epochs, growth, and refusal of a rewritten slot."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.train.data.test_data import _sample, _store
from train.data import CropDataset, CropLoader, EpochSampler, make_loader, stage_refs
from train.data.crops import RingBatch, SlotReader, SlotRing, collate_batch
from train.data.loader import RING_SLOTS, _worker_init

CROP = (12, 10, 8)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ring")
    return _store(
        root,
        {
            ("real", "train"): [
                _sample("r0", (24, 20, 18), 0),
                _sample("r1", (20, 24, 16), 1, present=[True, False, True, False]),
                _sample("r2", (10, 8, 6), 2, tumour=False),  # smaller than the crop: padded
            ],
            ("synthetic", "train"): [_sample(f"s{i}", (20, 20, 20), 10 + i) for i in range(3)],
        },
    )


def _dataset(store: Path, n: int, seed: int = 7) -> CropDataset:
    refs = stage_refs(store, "pretrain", mix_real_ratio=1.0)
    return CropDataset(refs, crop=CROP, seed=seed, samples_per_epoch=n, compact=True)


def _epochs(loader: Any, ds: CropDataset, epochs: int) -> list[list[dict[str, Any]]]:
    runs = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        runs.append(list(loader))
    return runs


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys() == {"channels", "label", "mask", "sample_id"}
    for key in ("channels", "label", "mask"):
        a, b = got[key], want[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.numpy().tobytes() == b.numpy().tobytes(), key  # byte-identical
    assert got["sample_id"] == want["sample_id"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("drop_last", [False, True])
def test_worker_batches_are_byte_identical_to_in_process_ones(store: Path, drop_last: bool) -> None:
    n, batch = 11, 3  # 3 full batches and a last one of 2
    ds0 = _dataset(store, n)
    expected = _epochs(
        make_loader(ds0, batch_size=batch, workers=0, seed=4, drop_last=drop_last), ds0, 3
    )
    assert [len(e) for e in expected] == [3 if drop_last else 4] * 3
    for workers in (1, 2, 3):
        ds = _dataset(store, n)
        loader = make_loader(ds, batch_size=batch, workers=workers, seed=4, drop_last=drop_last)
        got = _epochs(loader, ds, 3)  # persistent workers across the epochs
        for e_got, e_want in zip(got, expected, strict=True):
            assert len(e_got) == len(e_want)
            for b_got, b_want in zip(e_got, e_want, strict=True):
                _assert_same(b_got, b_want)
                # ordinary private tensors, not views of a worker's slot
                assert not b_got["channels"].is_shared() and not b_got["label"].is_shared()
        assert ds._ring is None  # rings live in the workers only
        # every worker's slots were sent once each, then reused
        assert 0 < loader.slot_reader.storages_received <= workers * RING_SLOTS


def test_each_slot_is_sent_once_then_reused(store: Path) -> None:
    ds = _dataset(store, 10)
    loader = make_loader(ds, batch_size=1, workers=1, seed=1, drop_last=False)
    assert isinstance(loader, CropLoader) and loader.prefetch_factor == 2
    runs = _epochs(loader, ds, 3)
    assert sum(len(e) for e in runs) == 30
    assert loader.slot_reader.storages_received == RING_SLOTS


def test_an_epoch_abandoned_part_way_leaves_the_next_one_intact(store: Path) -> None:
    ds0 = _dataset(store, 9)
    expected = _epochs(make_loader(ds0, batch_size=1, workers=0, seed=2), ds0, 2)
    ds = _dataset(store, 9)
    loader = make_loader(ds, batch_size=1, workers=1, seed=2)
    ds.set_epoch(0)
    # Like a resumed training epoch that stops early: the batches the worker made
    # ahead (the first use of slots 1 and 2) are dropped unread when epoch 1 starts.
    first = list(itertools.islice(iter(loader), 1))
    _assert_same(first[0], expected[0][0])
    ds.set_epoch(1)
    for got, want in zip(loader, expected[1], strict=True):
        _assert_same(got, want)
    ds.set_epoch(0)
    for got, want in zip(loader, expected[0], strict=True):
        _assert_same(got, want)


def test_a_rewritten_slot_is_refused_not_returned(store: Path) -> None:
    """A ring smaller than the worker's prefetching: the worker overwrites the single
    slot while the main process is away; the batch must be refused."""
    ds = _dataset(store, 6)
    loader = CropLoader(
        ds,
        batch_size=1,
        sampler=EpochSampler(ds),
        num_workers=1,
        persistent_workers=True,
        prefetch_factor=2,
        worker_init_fn=functools.partial(_worker_init, ring_slots=1),
        collate_fn=collate_batch,
    )
    batches = iter(loader)
    with pytest.raises(RuntimeError, match="rewrote the slot before the main process copied it"):
        for _ in range(6):
            time.sleep(0.5)  # the worker finishes its next batch meanwhile
            next(batches)


def _fill(ring: SlotRing, value: int, channels: int, n: int) -> RingBatch:
    claim = ring.claim(channels, n, CROP)
    claim.channels[...] = value
    claim.labels[...] = value
    masks = [(True, True, False, False)] * n if channels == 2 * n else [(True,) * 4] * n
    return ring.publish(claim, masks, [f"id{value}"] * n)


def _through_pickle(batch: RingBatch) -> RingBatch:
    """``batch`` as the main process gets it (the storage, shared memory, stays as it is)."""
    out = pickle.loads(pickle.dumps(dataclasses.replace(batch, storage=None)))
    return dataclasses.replace(out, storage=batch.storage)


def test_slots_are_reused_and_grow_and_the_sequence_check_refuses_overwrites() -> None:
    ring, reader = SlotRing(2), SlotReader()
    a = _fill(ring, 1, 2, 1)
    assert a.slot == 0 and a.seq == 1 and a.storage is not None
    got = reader.read(_through_pickle(a))
    assert got["channels"].shape == (2, *CROP) and got["channels"].dtype == torch.float16
    assert bool((got["channels"] == 1).all()) and bool((got["label"] == 1).all())
    assert got["mask"].tolist() == [[True, True, False, False]] and got["sample_id"] == ["id1"]
    b = _fill(ring, 2, 2, 1)
    assert b.slot == 1 and b.storage is not None
    reader.read(b)
    c = _fill(ring, 3, 4, 1)  # slot 0 again, already mapped: no storage sent
    assert c.slot == 0 and c.storage is None
    assert bool((reader.read(c)["channels"] == 3).all())
    d = _fill(ring, 4, 8, 2)  # a larger batch: slot 1 grows, its new memory is sent
    assert d.slot == 1 and d.storage is not None and d.storage is not b.storage
    got = reader.read(d)
    assert got["channels"].shape == (8, *CROP) and got["label"].shape == (2, *CROP)
    assert bool((got["channels"] == 4).all()) and reader.storages_received == 3
    # overrun: slot 0 is claimed again (being written) before c was copied out ...
    claim = ring.claim(1, 1, CROP)
    with pytest.raises(RuntimeError, match="rewrote the slot before"):
        reader.read(c)
    # ... and written completely
    ring.publish(claim, [(True, False, False, False)], ["x"])
    with pytest.raises(RuntimeError, match="writing batch 5, last complete 5"):
        reader.read(c)


def test_a_slot_rewritten_during_the_copy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ring, reader = SlotRing(1), SlotReader()
    a = _fill(ring, 1, 4, 1)
    copy = np.copyto

    def racing_copy(dst: np.ndarray, src: np.ndarray) -> None:
        copy(dst, src)
        ring.claim(4, 1, CROP)  # the worker starts the next batch in the same slot

    monkeypatch.setattr(np, "copyto", racing_copy)
    with pytest.raises(RuntimeError, match="rewrote the slot while the main process copied it"):
        reader.read(a)


def test_a_new_worker_process_gets_a_new_ring(store: Path) -> None:
    reader = SlotReader()
    old = SlotRing(1, worker=0)
    reader.read(_fill(old, 1, 4, 1))
    new = SlotRing(1, worker=0)  # e.g. the worker was replaced: same id, new ring
    assert new.token != old.token
    assert bool((reader.read(_fill(new, 2, 4, 1))["channels"] == 2).all())
    no_storage = dataclasses.replace(_fill(new, 3, 4, 1), ring="unknown", storage=None)
    with pytest.raises(RuntimeError, match="shared memory was never received"):
        reader.read(no_storage)
    ds = _dataset(store, 2)
    ds.use_slot_ring(RING_SLOTS)
    assert ds._worker_ring() is None  # not in a worker process
    ds._ring = old
    assert pickle.loads(pickle.dumps(ds))._ring is None
    with pytest.raises(ValueError, match="at least one slot"):
        SlotRing(0)


def test_plain_dataloader_workers_still_send_batches(store: Path) -> None:
    ds = _dataset(store, 4)
    plain = torch.utils.data.DataLoader(
        ds, batch_size=2, sampler=EpochSampler(ds), num_workers=1, collate_fn=collate_batch
    )
    ds0 = _dataset(store, 4)
    for got, want in zip(plain, make_loader(ds0, batch_size=2, workers=0), strict=True):
        _assert_same(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_ring_batches_are_pinned_when_cuda_is_available(store: Path) -> None:
    from train.data import batch_to_device

    ds = _dataset(store, 4)
    loader = make_loader(ds, batch_size=2, workers=1)
    assert loader.pin_slots and not loader.pin_memory
    for batch in loader:
        assert batch["channels"].is_pinned() and batch["label"].is_pinned()
        on_gpu = batch_to_device(batch, "cuda")
        assert on_gpu["image"].is_cuda and on_gpu["image"].dtype == torch.float32


@pytest.mark.usefixtures("one_torch_thread")
def test_training_through_loader_workers_matches_in_process(tmp_path: Path) -> None:
    """A stage trained with 2 loader workers (slot rings) ends with the weights of one
    trained in process: the loader feeds identical batches in the same order."""
    from tests.train.helpers import make_store, tiny_config_file
    from train.config_files import load_config
    from train.fit.checkpoint import load_checkpoint
    from train.fit.stages import run_stage

    store = make_store(tmp_path / "store")
    weights = []
    for workers in (0, 2):
        run = tmp_path / f"w{workers}"
        run.mkdir()
        cfg = load_config(
            tiny_config_file(run, store),
            [
                f"workers={workers}",
                "stage.pretrain.validate_every=0",
                "stage.pretrain.batch_size=2",
            ],
        )
        run_stage(cfg, "pretrain", progress=False)
        weights.append(load_checkpoint(cfg.stage_dir("pretrain") / "final.pt")["model"])
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
