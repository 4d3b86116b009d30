"""`aem-synth info`: the fields of a built store, its JSON, its checks and every error it names;
the store id (splits + options + shard checksums) and stores written before it existed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from aem_synth import __version__
from aem_synth.cli import main
from aem_synth.store.identity import (
    SCOPE_FULL,
    SCOPE_LEGACY,
    manifest_store_id,
    read_identity,
    store_id,
)
from aem_synth.store.info import IncompleteStoreError, NotAStoreError, StoreInfo, store_info
from aem_synth.store.lock import StoreBusyError, build_lock
from aem_synth.store.shards import SCHEMA_VERSION, read_manifest
from aem_synth.store.verify import verify_store


def _copy(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "copy", symlinks=True))


def _edit_manifest(root: Path, **changes: object) -> None:
    path = root / "manifest.json"
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


def test_fields_of_a_built_store(phantom_store: Path) -> None:
    manifest = read_manifest(phantom_store)
    info = store_info(phantom_store)
    identity = read_identity(phantom_store)
    assert identity is not None and info.build_id == identity["id"] == manifest["build_id"]
    assert info.store_id == manifest["store_id"] == manifest_store_id(manifest)
    assert info.store_id != info.build_id and info.id_scope == SCOPE_FULL
    assert info.path == str(phantom_store.resolve())
    assert (info.schema_version, info.tool_version) == (SCHEMA_VERSION, __version__)
    assert info.dataset_root == manifest["dataset"]["root"] and info.layouts == ("brats2020",)
    assert info.seed == 0 and info.options["multiplier"] == 1 and info.options["shard_size"] == 4
    assert "root" not in info.options and "workers" not in info.options
    assert info.splits == {k: len(manifest["splits"][k]) for k in ("train", "val", "test")}
    assert list(info.splits) == ["train", "val", "test"]
    assert info.real_samples == info.splits  # one real sample per case
    totals = manifest["totals"]
    assert info.synthetic_samples == totals["synthetic_samples"] == info.splits["train"]
    assert info.samples == totals["samples"] and info.shards == totals["shards"]
    on_disk = {kind: 0 for kind in ("real", "synthetic")}
    for kind in on_disk:
        on_disk[kind] = sum(p.stat().st_size for p in (phantom_store / kind).glob("*.h5"))
    assert info.shard_bytes == {**on_disk, "total": on_disk["real"] + on_disk["synthetic"]}
    assert info.disk_bytes > info.shard_bytes["total"]  # manifest, splits, store.json
    assert info.check.level == "quick" and info.check.ok
    full = store_info(phantom_store, verify=True)
    assert full.check.level == "full" and full.check.ok


def test_cli_text_and_json_round_trip(phantom_store: Path) -> None:
    info = store_info(phantom_store)
    text = CliRunner().invoke(main, ["info", str(phantom_store)])
    assert text.exit_code == 0, text.output
    for expected in (
        f"store id  {info.store_id} ({SCOPE_FULL})",
        f"by aem-synth {__version__}",
        f"schema    shard schema {SCHEMA_VERSION}",
        "seed      0",
        f"splits    train {info.splits['train']}, val 1, test {info.splits['test']} cases",
        f"{info.synthetic_samples} synthetic",
        f"({info.shard_bytes['total']:,} bytes) in {info.shards} shards",
        "check     OK: store id, splits, every shard present with its size (quick;",
    ):
        assert " ".join(expected.split()) in " ".join(text.output.split()), expected
    as_json = CliRunner().invoke(main, ["info", str(phantom_store), "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert StoreInfo.from_dict(doc) == info
    assert doc["samples"] == info.samples and doc["check"]["ok"] is True
    full = CliRunner().invoke(main, ["info", str(phantom_store), "--verify", "--json"])
    assert json.loads(full.output)["check"] == {"level": "full", "ok": True, "problems": []}


def test_errors_name_the_folder_and_the_problem(phantom_store: Path, tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match=r"missing: no such folder"):
        store_info(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStoreError, match=r"file: a file, not a shard store"):
        store_info(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match=r"empty: not a shard store: no manifest\.json"):
        store_info(tmp_path / "empty")
    copy = _copy(phantom_store, tmp_path)
    with build_lock(copy):
        with pytest.raises(StoreBusyError, match=rf"{copy}: the store is being built by pid \d+"):
            store_info(copy)
        busy = CliRunner().invoke(main, ["info", str(copy)])
        assert busy.exit_code == 2 and "is being built by" in busy.output
    (copy / "manifest.json").unlink()
    with pytest.raises(
        IncompleteStoreError, match=r"incomplete store: no manifest\.json \(found store\.json"
    ):
        store_info(copy)
    result = CliRunner().invoke(main, ["info", str(tmp_path / "empty")])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "Traceback" not in result.output


def test_quick_check_finds_files_full_check_finds_bytes(
    phantom_store: Path, tmp_path: Path
) -> None:
    copy = _copy(phantom_store, tmp_path)
    shard = copy / "real" / "train-00000.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the SHA-256 pass sees it
    shard.write_bytes(bytes(data))
    assert store_info(copy).check.ok
    full = CliRunner().invoke(main, ["info", str(copy), "--verify"])
    assert full.exit_code == 1 and "real/train-00000.h5: sha256" in full.output
    with open(shard, "ab") as fh:
        fh.write(b"tail")
    (copy / "synthetic" / "aem-00099.h5").write_bytes(b"")
    quick = CliRunner().invoke(main, ["info", str(copy)])
    assert quick.exit_code == 1
    assert f"real/train-00000.h5: {len(data) + 4} bytes on disk, the manifest records" in (
        quick.output
    )
    assert "synthetic/aem-00099.h5: shard file on disk is not in the manifest" in quick.output


def test_an_edited_manifest_no_longer_matches_its_store_id(
    phantom_store: Path, tmp_path: Path
) -> None:
    copy = _copy(phantom_store, tmp_path)
    splits = read_manifest(copy)["splits"]
    _edit_manifest(copy, splits={**splits, "test": splits["test"][:1]})
    for problems in (store_info(copy).check.problems, verify_store(copy).problems):
        assert any("manifest.json: store_id" in p and "does not match" in p for p in problems)


def test_stores_written_before_the_store_id_covered_checksums(
    phantom_store: Path, tmp_path: Path
) -> None:
    copy = _copy(phantom_store, tmp_path)
    legacy_id = read_manifest(copy)["build_id"]
    _edit_manifest(copy, build_id=None, store_id=legacy_id)  # as the previous version wrote it
    info = store_info(copy, verify=True)
    assert info.store_id == legacy_id and info.id_scope == SCOPE_LEGACY and info.build_id is None
    assert info.check.ok and verify_store(copy).ok
    _edit_manifest(copy, store_id=None)  # before stores had ids
    text = CliRunner().invoke(main, ["info", str(copy)])
    assert text.exit_code == 0 and "store id  none (built before stores had ids)" in text.output


def test_store_id_covers_splits_options_and_checksums_not_places() -> None:
    shards = [{"file": "real/a.h5", "sha256": "1" * 64}, {"file": "real/b.h5", "sha256": "2" * 64}]
    options = {"seed": 0, "multiplier": 4, "root": "/data/a", "out": "/x", "workers": 2}
    splits = {"train": ["b", "a"], "test": ["c"]}
    base = store_id(options, splits, shards)
    assert len(base) == 16
    moved = {**options, "root": "/elsewhere", "out": "/y", "workers": 9}
    assert store_id(moved, {"test": ["c"], "train": ["a", "b"]}, shards[::-1]) == base
    assert store_id({**options, "seed": 1}, splits, shards) != base
    assert store_id(options, {**splits, "test": []}, shards) != base
    other = [shards[0], {**shards[1], "sha256": "3" * 64}]
    assert store_id(options, splits, other) != base
