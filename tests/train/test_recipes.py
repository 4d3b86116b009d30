"""Default config and checkpoint resolution (train run / train evaluate without options)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.train.helpers import make_store
from train.cli import main as train_cli
from train.config import ConfigError
from train.config_files import load_config
from train.recipes import dataset_of_store, latest_checkpoint, resolve_config


def _with_manifest(store: Path, **changes: object) -> Path:
    path = store / "manifest.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("recipes") / "shards")


@pytest.fixture()
def in_folder(tmp_path: Path) -> Iterator[Path]:
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"options": {"dataset": "brats2018"}}, "brats2018"),
        ({"options": {"dataset": None}, "dataset": {"layouts": ["brats2015"]}}, "brats2015"),
        ({"options": {}, "cases": ["BraTS20_Training_001", "BraTS20_Training_002"]}, "brats2020"),
        ({"options": {}, "cases": ["Brats18_2013_2_1"]}, "brats2018"),
        ({"options": {}, "cases": ["BraTS2021_00000", "x"]}, None),
    ],
)
def test_dataset_of_store_reads_the_manifest(
    tmp_path: Path, changes: dict[str, object], expected: str | None
) -> None:
    store = _with_manifest(make_store(tmp_path / "s", 1, 0, 1), **changes)
    assert dataset_of_store(store)[0] == expected


def test_resolve_config_without_a_file_takes_the_paper_recipe(tmp_path: Path) -> None:
    store = _with_manifest(make_store(tmp_path / "s", 1, 0, 1), options={"dataset": "brats2020"})
    resolved = resolve_config(None, ["seed=5"], shards=store)
    paper = resolve_config(Path("pipelines/brats2020.toml"), [f"shards={json.dumps(str(store))}"])
    cfg = resolved.config
    assert resolved.source == "pipelines/brats2020.toml"
    assert cfg.shards == str(store) and cfg.runs_dir == "runs" and cfg.seed == 5
    assert cfg.stage == paper.config.stage and cfg.model == paper.config.model
    assert cfg.loss.class_weights == "rfnet"


def test_resolve_config_falls_back_to_the_generic_recipe(tmp_path: Path) -> None:
    store = _with_manifest(make_store(tmp_path / "s", 1, 0, 1), options={}, cases=["case_a"])
    resolved = resolve_config(None, shards=store)
    assert resolved.source == "pipelines/generic.toml"
    assert resolved.config.name == "aem" and resolved.config.loss.class_weights == "sqrt"
    assert "not recognised" in resolved.reason


def test_resolve_config_without_a_store_names_what_to_do(in_folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"shards/manifest.json not found: give --config"):
        resolve_config(None)


def test_latest_checkpoint_prefers_the_last_stage_and_best(tmp_path: Path) -> None:
    cfg = load_config("pipelines/generic.toml", [f"runs_dir={json.dumps(str(tmp_path))}"])
    with pytest.raises(ConfigError, match="no checkpoint under"):
        latest_checkpoint(cfg)
    for stage, name in (("pretrain", "best.pt"), ("train", "final.pt"), ("train", "best.pt")):
        cfg.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        (cfg.stage_dir(stage) / name).write_bytes(b"")
    assert latest_checkpoint(cfg) == cfg.stage_dir("train") / "best.pt"
    (cfg.stage_dir("posttrain")).mkdir()
    (cfg.stage_dir("posttrain") / "final.pt").write_bytes(b"")
    assert latest_checkpoint(cfg) == cfg.stage_dir("posttrain") / "final.pt"


@pytest.mark.usefixtures("one_torch_thread")
def test_train_run_and_evaluate_need_no_options_next_to_shards(
    store: Path, in_folder: Path
) -> None:
    """`train run --stage pretrain` beside shards/ runs the paper recipe; evaluate finds best.pt."""
    import shutil

    shutil.copytree(store, in_folder / "shards")
    _with_manifest(in_folder / "shards", options={"dataset": "brats2020"})
    small = [  # test-only: a few steps of a small model instead of 300 x 150 at base 16
        "stage.pretrain.epochs=1",
        "stage.pretrain.iters_per_epoch=2",
        "stage.pretrain.validate_every=1",
        "model.base_channels=4",
        "data.crop=[16,16,16]",
        "workers=0",
    ]
    args = ["run", "--stage", "pretrain", "--no-progress"]
    for s in small:
        args += ["--set", s]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 0, result.output
    assert "config: pipelines/brats2020.toml" in result.output
    written = load_config(in_folder / "runs" / "brats2020" / "pretrain" / "config.toml")
    assert written.name == "brats2020" and written.shards == "shards"
    assert written.stage.train.epochs == 300 and written.stage.pretrain.lr == 2e-4
    assert (in_folder / "runs" / "brats2020" / "pretrain" / "best.pt").is_file()
    ev = CliRunner().invoke(train_cli, ["evaluate", "--split", "val", "--device", "cpu"])
    assert ev.exit_code == 0, ev.output
    assert "checkpoint: runs/brats2020/pretrain/best.pt" in ev.output
    assert "| **Average** |" in ev.output
