from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from aem_synth.errors import ShardError
from aem_synth.store.shards import (
    SCHEMA_VERSION,
    Sample,
    SampleRef,
    ShardReader,
    write_manifest,
    write_shard,
)
from train.data import (
    CropDataset,
    EpochDistributedSampler,
    batch_to_device,
    crop_start,
    make_loader,
    stage_refs,
    unpack_channels,
    val_refs,
)

CROP = (16, 16, 16)
ALL = [True, True, True, True]


def _sample(
    sid: str,
    shape: tuple[int, int, int],
    seed: int,
    *,
    tumour: bool = True,
    present: list[bool] | None = None,
) -> Sample:
    """Random brain-like volume (ellipsoid) with a small three-class tumour blob off-centre."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = sum(g**2 for g in grids) < 0.9
    image = (rng.standard_normal((4, *shape)) + 1.5).astype(np.float32) * brain
    present = ALL if present is None else present
    image[~np.asarray(present)] = 0
    label = np.zeros(shape, np.uint8)
    if tumour:
        c = [int(n * 0.7) for n in shape]
        d2 = sum(
            (np.arange(n)[idx] - ci) ** 2 for n, ci, idx in zip(shape, c, _axes(), strict=True)
        )
        label[d2 < 9] = 2
        label[d2 < 4] = 1
        label[d2 < 1] = 3
    meta = {"present": present, "spacing": [1.0, 1.0, 1.0]}
    return Sample(sid, image, label, meta)


def _axes() -> list[tuple[slice | None, ...]]:
    return [(slice(None), None, None), (None, slice(None), None), (None, None, slice(None))]


def _store(root: Path, shards: dict[tuple[str, str], list[Sample]]) -> Path:
    infos = []
    for (kind, split), samples in shards.items():
        name = f"{kind}/{split}-00000.h5" if kind == "real" else "synthetic/aem-00000.h5"
        infos.append(
            write_shard(root / name, samples, root=root, kind=kind, split=split, chunk=(8, 8, 8))
        )
    write_manifest(root, {"schema_version": SCHEMA_VERSION, "shards": [i.to_dict() for i in infos]})
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    real_train = [
        _sample("r0", (40, 36, 30), 0),
        _sample("r1", (36, 40, 32), 1, present=[True, False, True, True]),
        _sample("r2", (30, 30, 30), 2, tumour=False),
    ]
    return _store(
        root,
        {
            ("real", "train"): real_train,
            ("real", "val"): [_sample("v0", (30, 30, 30), 3)],
            ("synthetic", "train"): [_sample(f"s{i}", (32, 32, 32), 10 + i) for i in range(4)],
        },
    )


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    return _store(root, {("real", "train"): [_sample("tiny", (10, 12, 8), 4)]})


def _equal_items(a: dict, b: dict) -> bool:
    return (
        torch.equal(a["image"], b["image"])
        and torch.equal(a["label"], b["label"])
        and torch.equal(a["mask"], b["mask"])
        and a["sample_id"] == b["sample_id"]
    )


def test_items_have_documented_shapes_dtypes_and_zeroed_absent_modalities(store: Path) -> None:
    ds = CropDataset(stage_refs(store, "train"), crop=CROP, samples_per_epoch=40, seed=1)
    for i in range(len(ds)):
        item = ds[i]
        img, lab, mask = item["image"], item["label"], item["mask"]
        assert img.shape == (4, *CROP) and img.dtype == torch.float32
        assert lab.shape == CROP and lab.dtype == torch.int64
        assert mask.shape == (4,) and mask.dtype == torch.bool and mask.any()
        assert img[~mask].eq(0).all()
        assert int(lab.min()) >= 0 and int(lab.max()) <= 3
        if item["sample_id"] == "r1":
            assert not mask[1]


def test_compact_items_hold_the_same_values_in_stored_dtypes(store: Path) -> None:
    refs = stage_refs(store, "train")
    wide = CropDataset(refs, crop=CROP, seed=6)
    compact = CropDataset(refs, crop=CROP, seed=6, compact=True)
    small = compact[1]
    assert small["image"].dtype == torch.float16 and small["label"].dtype == torch.uint8
    loader = make_loader(compact, batch_size=3, workers=0)
    batch = batch_to_device(next(iter(loader)), "cpu")
    expected = next(iter(make_loader(wide, batch_size=3, workers=0)))
    assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert (
        _equal_items({**batch, "sample_id": 0}, {**expected, "sample_id": 0})
        and batch["sample_id"] == expected["sample_id"]
    )


def test_crop_equals_the_stored_box(store: Path) -> None:
    ds = CropDataset(stage_refs(store, "train"), crop=CROP, seed=3)
    plan = ds.plan(0)
    item = ds.load(plan)
    with ShardReader(plan.ref.shard) as rd:
        full_img = rd.image(plan.ref.sample_id)
        full_lab = rd.label(plan.ref.sample_id)
    sl = tuple(slice(a, b) for a, b in plan.box)
    expected = full_img[(slice(None), *sl)] * np.asarray(plan.mask)[:, None, None, None]
    np.testing.assert_array_equal(item["image"].numpy(), expected)
    np.testing.assert_array_equal(item["label"].numpy(), full_lab[sl])


def test_items_are_deterministic_per_seed_epoch_and_index(store: Path) -> None:
    refs = stage_refs(store, "pretrain")
    a = CropDataset(refs, crop=CROP, seed=5)
    b = CropDataset(refs, crop=CROP, seed=5)
    assert all(_equal_items(a[i], b[i]) for i in range(len(a)))
    first = [a[i] for i in range(len(a))]
    a.set_epoch(1)
    assert not all(_equal_items(x, a[i]) for i, x in enumerate(first))
    assert all(_equal_items(a[(0, i)], x) for i, x in enumerate(first))


def test_zero_and_two_workers_give_identical_batches_across_epochs(store: Path) -> None:
    refs = stage_refs(store, "pretrain", mix_real_ratio=0.5)
    batches: dict[int, list[list[dict]]] = {}
    for workers in (0, 2):
        ds = CropDataset(refs, crop=CROP, seed=2, samples_per_epoch=8)
        loader = make_loader(ds, batch_size=2, workers=workers, seed=9)
        runs = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            runs.append(list(loader))
        batches[workers] = runs
        if workers:
            assert ds._readers == {}  # only the worker processes opened the shards
    for e0, e2 in zip(batches[0], batches[2], strict=True):
        assert len(e0) == len(e2) == 4
        for b0, b2 in zip(e0, e2, strict=True):
            assert _equal_items(b0, b2)
    assert not torch.equal(batches[0][0][0]["image"], batches[0][1][0]["image"])


def test_compact_batches_carry_only_the_drawn_modalities(store: Path) -> None:
    refs = stage_refs(store, "pretrain", mix_real_ratio=0.5)
    items = CropDataset(refs, crop=CROP, seed=4, samples_per_epoch=6, compact=True)
    for workers in (0, 1):  # 1: the batch tensors are made in a worker's shared memory
        ds = CropDataset(refs, crop=CROP, seed=4, samples_per_epoch=6, compact=True)
        loader = make_loader(ds, batch_size=3, workers=workers, seed=1, drop_last=False)
        order = list(loader.sampler)
        for b, batch in enumerate(loader):
            assert "image" not in batch
            mask, channels = batch["mask"], batch["channels"]
            assert channels.dtype == torch.float16 and channels.shape == (int(mask.sum()), *CROP)
            expected = [items[index] for index in order[3 * b : 3 * b + 3]]
            image = unpack_channels(channels, mask)
            for k, item in enumerate(expected):
                assert torch.equal(image[k], item["image"]) and torch.equal(mask[k], item["mask"])
                assert torch.equal(batch["label"][k], item["label"])
            wide = batch_to_device(batch, "cpu")
            assert wide["image"].dtype == torch.float32 and torch.equal(
                wide["image"], image.float()
            )
    with pytest.raises(ValueError, match="packed channels"):
        unpack_channels(torch.zeros(1, *CROP), torch.ones(1, 4, dtype=torch.bool))


def test_absent_modalities_are_not_read(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    original = ShardReader.read_into

    def spy(
        self: ShardReader, key: str, name: str, out: np.ndarray, source: tuple, dest: tuple
    ) -> None:
        if name == "image":
            read.append(source[0])
        original(self, key, name, out, source, dest)

    monkeypatch.setattr(ShardReader, "read_into", spy)
    ds = CropDataset(stage_refs(store, "train"), crop=CROP, seed=8, samples_per_epoch=20)
    for i in range(len(ds)):
        read.clear()
        item = ds[i]
        assert read == [m for m in range(4) if item["mask"][m]]
        assert item["image"][~item["mask"]].eq(0).all()


def test_full_tumour_share_always_crops_tumour(store: Path) -> None:
    refs = stage_refs(store, "train")
    ds = CropDataset(refs, crop=(8, 8, 8), tumour_share=1.0, samples_per_epoch=30, seed=4)
    seen_no_tumour = False
    for i in range(len(ds)):
        plan = ds.plan(i)
        item = ds.load(plan)
        if plan.ref.sample_id == "r2":  # no tumour: falls back to a uniform crop
            seen_no_tumour = True
            assert not plan.tumour and item["label"].eq(0).all()
        else:
            assert plan.tumour and item["label"].gt(0).any()
    assert seen_no_tumour
    uniform = CropDataset(refs, crop=(8, 8, 8), tumour_share=0.0, samples_per_epoch=10)
    assert not any(uniform.plan(i).tumour for i in range(len(uniform)))


def test_volumes_smaller_than_the_crop_are_zero_padded(small_store: Path) -> None:
    ds = CropDataset(stage_refs(small_store, "train"), crop=CROP, tumour_share=0.5)
    plan = ds.plan(0)
    item = ds.load(plan)
    assert plan.box == ((0, 10), (0, 12), (0, 8))
    assert plan.offset == (3, 2, 4)
    inside = (slice(3, 13), slice(2, 14), slice(4, 12))
    with ShardReader(plan.ref.shard) as rd:
        np.testing.assert_array_equal(item["label"][inside].numpy(), rd.label("tiny"))
    outside = torch.ones(CROP, dtype=torch.bool)
    outside[inside] = False
    assert item["label"][outside].eq(0).all()
    assert item["image"][:, outside].eq(0).all()
    assert item["label"].gt(0).any()


def test_crop_start_keeps_the_centre_inside_the_crop() -> None:
    rng = np.random.default_rng(0)
    for size, crop, centre in [(50, 16, 0), (50, 16, 49), (50, 16, 25), (16, 16, 3), (10, 16, 5)]:
        start = crop_start(size, crop, centre, rng)
        assert 0 <= start <= max(0, size - crop)
        if size >= crop:
            assert start <= centre < start + crop
    starts = {crop_start(20, 16, None, rng) for _ in range(200)}
    assert starts == set(range(5))


def test_dataset_opens_no_file_in_init_pickles_and_keeps_one_handle_per_shard(
    store: Path,
) -> None:
    refs = stage_refs(store, "train")
    ds = CropDataset(refs, crop=CROP, samples_per_epoch=20)
    assert ds._readers == {}
    restored = pickle.loads(pickle.dumps(ds))
    assert len(restored) == 20 and restored._readers == {}
    for i in range(len(ds)):
        ds[i]
    shard = refs[0].shard
    assert set(ds._readers) == {shard}
    open_names = [h5py.File(fid).filename for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)]
    assert open_names.count(str(shard)) == 1
    again = pickle.loads(pickle.dumps(ds))
    assert again._readers == {} and _equal_items(again[3], ds[3])
    ds.close()


def test_samples_per_epoch_draws_refs_and_sets_length(store: Path) -> None:
    refs = stage_refs(store, "pretrain")
    ds = CropDataset(refs, crop=CROP, samples_per_epoch=24, seed=0)
    assert len(ds) == 24
    ids = {ds.plan(i).ref.sample_id for i in range(len(ds))}
    assert ids == {"s0", "s1", "s2", "s3"}
    plain = CropDataset(refs, crop=CROP)
    assert [plain.plan(i).ref.sample_id for i in range(4)] == ["s0", "s1", "s2", "s3"]
    with pytest.raises(IndexError, match="out of range"):
        plain[4]


def test_stage_refs_selects_the_stage_data(store: Path) -> None:
    synthetic = stage_refs(store, "pretrain")
    assert [r.sample_id for r in synthetic] == ["s0", "s1", "s2", "s3"]
    assert all(isinstance(r, SampleRef) and r.shard.is_file() for r in synthetic)
    assert [r.sample_id for r in stage_refs(store, "train")] == ["r0", "r1", "r2"]
    assert stage_refs(store, "posttrain") == stage_refs(store, "train")
    assert [r.sample_id for r in val_refs(store)] == ["v0"]
    half = stage_refs(store, "pretrain", mix_real_ratio=0.5, seed=1)
    assert half[:4] == synthetic and len(half) == 6
    assert {r.sample_id for r in half[4:]} <= {"r0", "r1", "r2"}
    assert len({r.sample_id for r in half[4:]}) == 2
    double = stage_refs(store, "pretrain", mix_real_ratio=2.0, seed=1)
    real_ids = [r.sample_id for r in double[4:]]
    assert len(real_ids) == 8 and {real_ids.count(s) for s in ("r0", "r1", "r2")} <= {2, 3}
    assert double == stage_refs(store, "pretrain", mix_real_ratio=2.0, seed=1)


def test_stage_refs_errors_name_the_store_and_stage(store: Path, small_store: Path) -> None:
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_refs(store, "finetune")
    with pytest.raises(ValueError, match="mix_real_ratio must be"):
        stage_refs(store, "pretrain", mix_real_ratio=-1.0)
    with pytest.raises(ValueError, match="applies to stage 'pretrain' only"):
        stage_refs(store, "train", mix_real_ratio=0.5)
    with pytest.raises(ShardError, match=r"small.*no synthetic samples for stage 'pretrain'"):
        stage_refs(small_store, "pretrain")
    with pytest.raises(ShardError, match="no real validation samples"):
        val_refs(small_store)
    with pytest.raises(ShardError, match=r"no manifest\.json"):
        stage_refs(small_store / "real", "train")


def test_bad_samples_and_arguments_are_rejected(tmp_path: Path, store: Path) -> None:
    bad_label = _sample("bad", (20, 20, 20), 0)
    bad_label.label[:] = 4
    no_present = _sample("nop", (20, 20, 20), 1)
    no_present.meta = {}
    _store(tmp_path, {("real", "train"): [bad_label, no_present]})
    bad, nop = stage_refs(tmp_path, "train")
    with pytest.raises(ShardError, match=r"'bad' has label value 4"):
        CropDataset([bad], crop=CROP)[0]
    with pytest.raises(ShardError, match=r"'nop' has no valid 'present'"):
        CropDataset([nop], crop=CROP)[0]
    refs = stage_refs(store, "train")
    with pytest.raises(ValueError, match="at least one sample"):
        CropDataset([], crop=CROP)
    with pytest.raises(ValueError, match="crop must be three positive"):
        CropDataset(refs, crop=(16, 16))
    with pytest.raises(ValueError, match="tumour_share must be in"):
        CropDataset(refs, tumour_share=1.5)
    with pytest.raises(ValueError, match="samples_per_epoch must be"):
        CropDataset(refs, samples_per_epoch=0)
    with pytest.raises(ValueError, match="batch_size must be"):
        make_loader(CropDataset(refs), batch_size=0, workers=0)


def test_distributed_sampler_splits_each_epoch_between_ranks(store: Path) -> None:
    ds = CropDataset(stage_refs(store, "pretrain"), crop=CROP, samples_per_epoch=10)
    ranks = [EpochDistributedSampler(ds, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    ds.set_epoch(4)
    parts = [list(s) for s in ranks]
    assert all(e == 4 for part in parts for e, _ in part)
    flat = [i for part in parts for _, i in part]
    assert sorted(flat) == list(range(10))
    ranks[0].set_epoch(5)
    assert ds.epoch == 5 and {e for e, _ in ranks[1]} == {5}
