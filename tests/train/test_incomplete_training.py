"""Training on cases that are themselves incomplete: 30 % of the training cases lack one or
two modalities; all three stages run, evaluation covers what each case can serve, and an
absent modality is never presented as present."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aem_synth.build import BuildOptions, build
from aem_synth.dataset.splits import write_splits
from aem_synth.store.shards import ShardReader, list_samples
from tests.train.helpers import TINY
from train.config_files import load_config
from train.data import CropDataset, stage_refs
from train.fit.kd import draw_teacher_masks
from train.fit.stages import AllModalityCrops, run_stage
from train.inference.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MISSING = {0: ("t1",), 1: ("t1ce", "t2")}  # training cases 0 and 1 of 7 (~30 %)
TEST_MISSING = ("flair",)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aem_synth.phantom.generator import write_phantom_dataset

    tmp = tmp_path_factory.mktemp("incomplete")
    root = tmp / "data"
    write_phantom_dataset(root, n_cases=10, layout="brats2020", seed=31, shape=(40, 40, 32))
    ids = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, val, test = ids[:7], ids[7:8], ids[8:]
    for i, missing in MISSING.items():
        for m in missing:
            (root / train[i] / f"{train[i]}_{m}.nii.gz").unlink()
    for m in TEST_MISSING:
        (root / test[0] / f"{test[0]}_{m}.nii.gz").unlink()
    write_splits(tmp / "splits", {"train": train, "val": val, "test": test})
    out = tmp / "shards"
    build(
        BuildOptions(
            root=root, out=out, multiplier=1, workers=1, splits_dir=tmp / "splits", progress=False
        )
    )
    return out


def _present(store: Path) -> dict[str, tuple[bool, ...]]:
    out = {}
    for ref in list_samples(store, "real"):
        with ShardReader(ref.shard) as r:
            out[ref.sample_id] = tuple(r.meta(ref.sample_id)["present"])
    return out


def test_incomplete_cases_are_real_training_samples(store: Path) -> None:
    present = _present(store)
    train = {r.sample_id for r in stage_refs(store, "train")}
    incomplete = {sid for sid, p in present.items() if not all(p) and sid in train}
    assert len(incomplete) == 2 and len(train) == 7
    manifest = json.loads((store / "manifest.json").read_text())
    excluded = {e["case_id"] for e in manifest["excluded_from_synthesis"]}
    assert incomplete <= excluded  # synthesis still uses complete cases only


def test_absent_modalities_are_never_presented(store: Path) -> None:
    present = _present(store)
    refs = stage_refs(store, "train")
    data = CropDataset(refs, crop=(16, 16, 16), seed=0, samples_per_epoch=200)
    for i in range(200):
        item = data[i]
        have = torch.tensor(present[item["sample_id"]])
        mask = item["mask"]
        assert not bool((mask & ~have).any()), (item["sample_id"], mask)
        assert not item["image"][~mask].any()
    full = AllModalityCrops(refs, crop=(16, 16, 16), seed=0, samples_per_epoch=50)
    for i in range(50):
        item = full[i]
        assert tuple(item["mask"].tolist()) == present[item["sample_id"]]
    have = torch.tensor([present[r.sample_id] for r in refs if sum(present[r.sample_id]) >= 2])
    teacher = draw_teacher_masks(have.repeat(20, 1), torch.Generator().manual_seed(0))
    assert not bool((teacher & ~have.repeat(20, 1)).any()) and bool((teacher.sum(1) >= 2).all())


def test_three_stages_train_and_evaluation_covers_what_each_case_has(
    store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(shards=store.as_posix(), runs=(tmp_path / "runs").as_posix()))
    cfg = load_config(config)
    for stage in ("pretrain", "train", "posttrain"):
        assert run_stage(cfg, stage, progress=False).status == "finished"
    result = evaluate(
        cfg.stage_dir("posttrain") / "final.pt",
        split="test",
        out_dir=tmp_path / "eval",
        device="cpu",
        progress=False,
    )
    table = result.dice
    # Two test cases; one lacks FLAIR: the 8 subsets with FLAIR average one case.
    counts = dict(zip(table.subsets, table.counts, strict=True))
    assert sorted(set(counts.values())) == [1, 2]
    assert all((n == 1) == s[0] for s, n in counts.items())
    assert np.isfinite(table.values).all()
    per_case = (tmp_path / "eval" / "per_case.csv").read_text().splitlines()
    assert len(per_case) == 1 + 15 + 7
    assert "| n |" in (tmp_path / "eval" / "dice.md").read_text()
    shutil.rmtree(tmp_path / "runs")
