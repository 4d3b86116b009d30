"""The shard builder end to end on small phantoms: layout, meta, pairing, replay, bad cases."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aem_synth.build import BuildOptions, build
from aem_synth.build.tasks import synthesis_input
from aem_synth.cli import main
from aem_synth.errors import BuildError
from aem_synth.store.cache import read_case
from aem_synth.store.shards import ShardReader, list_samples, read_manifest
from aem_synth.store.verify import verify_store

REAL_KEYS = {
    "kind",
    "sample_id",
    "case_id",
    "split",
    "layout",
    "crop_box",
    "full_shape",
    "spacing",
    "original_shape",
    "original_affine",
    "canonical_affine",
    "ornt",
    "present",
    "stats",
    "calibration",
}
SYNTH_KEYS = {
    "kind",
    "sample_id",
    "anatomy",
    "donor",
    "crop_box",
    "full_shape",
    "spacing",
    "present",
    "params",
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 small phantom cases (48x48x32, BraTS 2020 layout)."""
    from aem_synth.phantom.generator import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_cases=6, layout="brats2020", seed=11, shape=(48, 48, 32))
    return root


def _options(root: Path, out: Path, **kw) -> BuildOptions:
    kw = {"multiplier": 2, "workers": 1, "shard_size": 4, "progress": False, **kw}
    return BuildOptions(root=root, out=out, **kw)


@pytest.fixture(scope="module")
def built(phantoms: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("build") / "shards"
    summary = build(_options(phantoms, out, keep_work=True))
    return out, summary


def _metas(root: Path, kind: str) -> dict[str, dict]:
    out = {}
    for ref in list_samples(root, kind):
        with ShardReader(ref.shard) as r:
            out[ref.sample_id] = r.meta(ref.sample_id)
    return out


def test_store_layout_and_summary(built) -> None:
    out, summary = built
    manifest = read_manifest(out)
    train = manifest["splits"]["train"]
    assert summary.real_samples == 6 and summary.skipped == ()
    assert summary.synthetic_samples == 2 * len(train)
    assert manifest["totals"]["samples"] == summary.samples
    files = {e["file"] for e in manifest["shards"]}
    assert {"real/train-00000.h5", "synthetic/aem-00000.h5"} <= files
    assert summary.bytes == sum((out / f).stat().st_size for f in files)
    for split, ids in manifest["splits"].items():
        assert (out / "splits" / f"{split}.txt").read_text().split() == ids
    assert not list(out.rglob(".*.tmp-*"))
    assert verify_store(out).ok
    assert "samples: " in summary.format()


def test_real_sample_meta(built) -> None:
    out, _ = built
    manifest = read_manifest(out)
    for sid, meta in _metas(out, "real").items():
        assert set(meta) == REAL_KEYS
        assert sid in manifest["splits"][meta["split"]]
        assert meta["present"] == [True] * 4
        assert np.asarray(meta["original_affine"]).shape == (4, 4)
        assert set(meta["calibration"]) >= {"plane", "dice_flip", "dice_plane"}


def test_synthetic_meta_and_pairing(built) -> None:
    out, _ = built
    manifest = read_manifest(out)
    train = set(manifest["splits"]["train"])
    metas = _metas(out, "synthetic")
    by_anatomy: dict[str, list[str]] = {}
    for meta in metas.values():
        assert set(meta) == SYNTH_KEYS
        assert meta["present"] == [True] * 4
        assert meta["params"]["mode"] == "signed" and meta["params"]["method"] == "aem"
        assert meta["anatomy"] != meta["donor"]
        assert {meta["anatomy"], meta["donor"]} <= train
        assert manifest["cases"][meta["donor"]]["has_tumour"]
        by_anatomy.setdefault(meta["anatomy"], []).append(meta["donor"])
    assert set(by_anatomy) == train
    assert all(len(d) == 2 and len(set(d)) == 2 for d in by_anatomy.values())


def test_synthetic_crop_is_anatomy_box(built) -> None:
    out, _ = built
    manifest = read_manifest(out)
    for ref in list_samples(out, "synthetic"):
        with ShardReader(ref.shard) as r:
            meta = r.meta(ref.sample_id)
            box = manifest["cases"][meta["anatomy"]]["box"]
            assert meta["crop_box"] == box
            assert r.shape(ref.sample_id) == tuple(b - a for a, b in box)
            assert set(np.unique(r.label(ref.sample_id)).tolist()) <= {0, 1, 2, 3}


def test_replaying_params_gives_same_arrays(built) -> None:
    from aem_synth.synthesis.sample import SynthesisParams, apply

    out, _ = built
    work = out / ".work"
    for ref in list_samples(out, "synthetic")[:3]:
        with ShardReader(ref.shard) as r:
            meta = r.meta(ref.sample_id)
            stored_img, stored_lab = r.image(ref.sample_id), r.label(ref.sample_id)
        a, b = read_case(work, meta["anatomy"]), read_case(work, meta["donor"])
        params = SynthesisParams.from_dict(meta["params"])
        image, label = apply(params, synthesis_input(a), synthesis_input(b))
        sl = tuple(slice(lo, hi) for lo, hi in meta["crop_box"])
        replay = image[(slice(None), *sl)].astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(replay, stored_img)
        np.testing.assert_array_equal(label[sl], stored_lab)


def _case_files(root: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sorted(root.rglob("*_flair.nii.gz"))}


@pytest.fixture(scope="module")
def damaged(phantoms: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the phantoms with a corrupt, an unlabelled and an incomplete case."""
    root = Path(shutil.copytree(phantoms, tmp_path_factory.mktemp("damaged") / "data"))
    cases = _case_files(root)
    corrupt, unlabelled, incomplete, *good = sorted(cases)
    (cases[corrupt] / f"{corrupt}_flair.nii.gz").write_bytes(b"not a nifti file")
    (cases[unlabelled] / f"{unlabelled}_seg.nii.gz").unlink()
    (cases[incomplete] / f"{incomplete}_t1ce.nii.gz").unlink()
    splits = root.parent / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("\n".join([corrupt, incomplete, good[0], good[1]]))
    (splits / "val.txt").write_text(good[2])
    (splits / "test.txt").write_text("")
    return root, splits, (corrupt, unlabelled, incomplete)


def test_bad_cases_are_skipped_and_reported(damaged, tmp_path: Path) -> None:
    root, splits, (corrupt, unlabelled, incomplete) = damaged
    out = tmp_path / "shards"
    summary = build(_options(root, out, multiplier=1, splits_dir=splits))
    skipped = dict(summary.skipped)
    assert set(skipped) == {corrupt, unlabelled}
    assert "cannot read" in skipped[corrupt] and "no segmentation" in skipped[unlabelled]
    assert dict(summary.excluded)[incomplete] == "incomplete (missing t1ce)"
    assert summary.synthetic_samples == 2 and summary.real_samples == 4
    metas = _metas(out, "real")
    assert metas[incomplete]["present"] == [True, True, False, True]
    assert all(
        incomplete not in (m["anatomy"], m["donor"]) for m in _metas(out, "synthetic").values()
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["case_id"] for s in manifest["skipped"]} == {corrupt, unlabelled}
    assert verify_store(out).ok


def test_strict_makes_a_bad_case_fatal(damaged, tmp_path: Path) -> None:
    root, splits, (corrupt, _, _) = damaged
    out = tmp_path / "shards"
    with pytest.raises(BuildError, match=rf"{corrupt}: .*--strict"):
        build(_options(root, out, multiplier=1, splits_dir=splits, strict=True))
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"multiplier": -1}, "multiplier must be >= 0, got -1"),
        ({"mode": "square"}, "mode must be 'signed' or 'abs'"),
        ({"method": "cutmix"}, "method must be 'aem' or 'mixup'"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"shard_size": 0}, "shard_size must be >= 1"),
        ({"codec": "zip"}, "codec must be one of"),
    ],
)
def test_options_are_validated(kw: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        BuildOptions(root=tmp_path, out=tmp_path / "o", **kw)


def test_cli_build_help_and_missing_root(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["build", "--help"])
    assert result.exit_code == 0
    for flag in ("--multiplier", "--scheduler", "--shard-size", "--allow-incomplete", "--strict"):
        assert flag in result.output
    result = runner.invoke(
        main, ["build", "--in", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "error:" in result.output


def test_embedded_cluster_leaves_the_callers_environment_alone() -> None:
    """Dask's nanny writes OMP_NUM_THREADS=1 etc. into the caller's environment; a later
    torch import in the same process (build, then train) would get one thread."""
    from aem_synth.build import local_cluster

    before = dict(os.environ)
    with local_cluster(1) as cluster:
        assert len(cluster.workers) == 1
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_two_identical_builds_write_identical_samples(
    phantoms: Path, built, tmp_path: Path
) -> None:
    """Same inputs, options and seed -> the same shard files, byte for byte (no timings in
    sample meta, file space allocated in a fixed order)."""
    out, _ = built
    again = tmp_path / "shards"
    build(_options(phantoms, again))
    shas = [{e["file"]: e["sha256"] for e in read_manifest(d)["shards"]} for d in (out, again)]
    assert shas[0] == shas[1]
    for kind in ("real", "synthetic"):
        assert _metas(again, kind) == _metas(out, kind)
        for ref in list_samples(again, kind):
            twin = out / ref.shard.relative_to(again)
            with ShardReader(ref.shard) as a, ShardReader(twin) as b:
                np.testing.assert_array_equal(a.image(ref.sample_id), b.image(ref.sample_id))
                np.testing.assert_array_equal(a.label(ref.sample_id), b.label(ref.sample_id))
    for meta in _metas(again, "real").values():
        assert "seconds" not in meta["calibration"] and "plane" in meta["calibration"]


def test_broken_link_case_is_skipped_naming_the_link(phantoms: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(phantoms, tmp_path / "data"))
    cases = _case_files(root)
    broken = sorted(cases)[0]
    link = cases[broken] / f"{broken}_t2.nii.gz"
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere.nii.gz")
    summary = build(_options(root, tmp_path / "shards", multiplier=0))
    assert "is a broken symbolic link" in dict(summary.skipped)[broken]
    assert summary.real_samples == len(cases) - 1


def test_no_usable_case_is_an_error_naming_each_case(phantoms: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(phantoms, tmp_path / "data"))
    cases = _case_files(root)
    for cid, folder in cases.items():
        (folder / f"{cid}_flair.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "shards"
    with pytest.raises(BuildError, match=r"no usable case.*6 case\(s\) left out") as err:
        build(_options(root, out, multiplier=0))
    assert all(f"{cid} (skipped: cannot read" in str(err.value) for cid in cases)
    assert not (out / "manifest.json").exists()


def test_impossible_pairing_names_the_left_out_cases(phantoms: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(phantoms, tmp_path / "data"))
    cases = _case_files(root)
    bad = sorted(cases)[:-1]
    for cid in bad:
        (cases[cid] / f"{cid}_t1.nii.gz").unlink()
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("\n".join(sorted(cases)))
    (splits / "val.txt").write_text("")
    (splits / "test.txt").write_text("")
    with pytest.raises(BuildError, match=r"cannot pair 1 training cases") as err:
        build(_options(root, tmp_path / "shards", splits_dir=splits))
    assert f"{bad[0]} (not used for synthesis: incomplete (missing t1))" in str(err.value)


def test_verify_calls_an_empty_store_unusable(tmp_path: Path) -> None:
    from aem_synth.store.shards import SCHEMA_VERSION, write_manifest

    write_manifest(tmp_path, {"schema_version": SCHEMA_VERSION, "splits": {}, "shards": []})
    report = verify_store(tmp_path)
    assert not report.ok and "holds no sample" in report.format()
