"""verify_store / `aem-synth verify`: every failure a corrupted store can show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from aem_synth.cli import main
from aem_synth.store.shards import (
    SCHEMA_VERSION,
    Sample,
    read_manifest,
    sha256_file,
    write_manifest,
    write_shard,
)
from aem_synth.store.verify import verify_store

SPLITS = {"train": ["c0", "c1", "c2"], "val": ["c3"], "test": ["c4"]}


def _sample(sid: str, meta: dict, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((4, 12, 10, 8)).astype(np.float32)
    label = rng.integers(0, 4, (12, 10, 8)).astype(np.uint8)
    return Sample(sid, image, label, {"sample_id": sid, **meta})


def _make_store(root: Path) -> Path:
    """A small hand-made store (no synthesis needed): 5 real cases, 3 synthetic samples."""
    infos = []
    for split, ids in SPLITS.items():
        samples = [
            _sample(c, {"kind": "real", "case_id": c, "split": split}, i) for i, c in enumerate(ids)
        ]
        infos.append(
            write_shard(
                root / f"real/{split}-00000.h5", samples, root=root, kind="real", split=split
            )
        )
    pairs = [("c0", "c1"), ("c1", "c2"), ("c2", "c0")]
    synth = [
        _sample(f"aem-{n:06d}", {"kind": "synthetic", "anatomy": a, "donor": b}, 10 + n)
        for n, (a, b) in enumerate(pairs)
    ]
    infos.append(
        write_shard(
            root / "synthetic/aem-00000.h5", synth, root=root, kind="synthetic", split="train"
        )
    )
    write_manifest(
        root,
        {
            "schema_version": SCHEMA_VERSION,
            "splits": SPLITS,
            "shards": [i.to_dict() for i in infos],
        },
    )
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "store"))


def _edit_manifest(root: Path, edit) -> None:
    manifest = read_manifest(root)
    edit(manifest)
    write_manifest(root, manifest)


def _rehash(root: Path, file: str) -> None:
    """Update a shard's manifest checksum after an edit, so only the edit itself is reported."""

    def edit(m: dict) -> None:
        for e in m["shards"]:
            if e["file"] == file:
                e["sha256"] = sha256_file(root / file)

    _edit_manifest(root, edit)


def test_clean_store_is_ok(store: Path) -> None:
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.shards == 4 and report.samples == 8
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 0 and "OK" in result.output


def test_tampered_byte_fails_checksum(store: Path) -> None:
    path = store / "real/train-00000.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_store(store)
    assert any("real/train-00000.h5: sha256" in p for p in report.problems)
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 1 and "sha256" in result.output


def test_deleted_shard(store: Path) -> None:
    (store / "synthetic/aem-00000.h5").unlink()
    report = verify_store(store)
    assert not report.ok
    assert any(
        "synthetic/aem-00000.h5: listed in the manifest but missing" in p for p in report.problems
    )


def test_bad_label_value(store: Path) -> None:
    with h5py.File(store / "real/val-00000.h5", "r+") as f:
        f["samples/c3/label"][0, 0, 0] = 4
    _rehash(store, "real/val-00000.h5")
    problems = verify_store(store).problems
    assert problems == ["real/val-00000.h5:c3: label values [4] not in {0,1,2,3}"]


def test_shape_mismatch_and_missing_sample(store: Path) -> None:
    with h5py.File(store / "real/test-00000.h5", "r+") as f:
        g = f["samples/c4"]
        del g["label"]
        g.create_dataset("label", data=np.zeros((12, 10, 7), np.uint8))
    _rehash(store, "real/test-00000.h5")
    _edit_manifest(store, lambda m: m["shards"][1]["samples"].append("ghost"))
    problems = verify_store(store).problems
    assert any(
        "c4: image shape (4, 12, 10, 8) does not match label shape (12, 10, 7)" in p
        for p in problems
    )
    assert any("samples listed but absent: ['ghost']" in p for p in problems)


def test_synthetic_donor_outside_train_is_leakage(store: Path) -> None:
    def leak(m: dict) -> None:
        m["splits"]["train"].remove("c1")
        m["splits"]["val"].append("c1")

    _edit_manifest(store, leak)
    problems = verify_store(store).problems
    assert any("split leakage: donor 'c1' is not a training case" in p for p in problems)
    assert any("split leakage: anatomy 'c1' is not a training case" in p for p in problems)
    assert any("case 'c1' is in a train shard but not in split train" in p for p in problems)


def test_case_in_two_splits(store: Path) -> None:
    _edit_manifest(store, lambda m: m["splits"]["test"].append("c0"))
    problems = verify_store(store).problems
    assert any("split leakage: ['c0'] in both test and train" in p for p in problems)


def test_stray_shard_and_duplicate_ids(store: Path) -> None:
    shutil.copy(store / "real/val-00000.h5", store / "real/val-00001.h5")
    report = verify_store(store)
    assert any(
        "real/val-00001.h5: shard file on disk is not in the manifest" in p for p in report.problems
    )
    manifest = read_manifest(store)
    entry = dict(next(e for e in manifest["shards"] if e["file"] == "real/val-00000.h5"))
    entry["file"] = "real/val-00001.h5"
    _edit_manifest(store, lambda m: m["shards"].append(entry))
    assert "sample id 'c3' appears 2 times" in verify_store(store).problems


def test_wrong_schema_attr_and_meta_kind(store: Path) -> None:
    with h5py.File(store / "synthetic/aem-00000.h5", "r+") as f:
        f.attrs["schema_version"] = 99
        f["samples/aem-000000"].attrs["meta"] = json.dumps({"kind": "real"})
    _rehash(store, "synthetic/aem-00000.h5")
    problems = verify_store(store).problems
    assert any("attribute schema_version is 99, expected 1" in p for p in problems)
    assert any("aem-000000: meta kind 'real' in a synthetic shard" in p for p in problems)


def test_no_manifest(store: Path) -> None:
    (store / "manifest.json").unlink()
    report = verify_store(store)
    assert not report.ok and "no manifest.json" in report.problems[0]
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 1 and "incomplete" in result.output
