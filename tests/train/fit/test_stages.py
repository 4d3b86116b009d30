"""Stages end to end on a tiny shard store: outputs, initialisation chain, done/force, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train.helpers import make_store, read_rows, tiny_config_file
from train.cli import main as train_cli
from train.config import Config
from train.config_files import load_config
from train.fit.checkpoint import CheckpointError, load_checkpoint
from train.fit.loop import NonFiniteLossError
from train.fit.stages import StageError, resolve_init, run_stage
from train.report.plots import VAL_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, store: Path) -> tuple[Config, Path]:
    """All three stages run once (shared by the tests that inspect their outputs)."""
    tmp = tmp_path_factory.mktemp("chain")
    path = tiny_config_file(tmp, store)
    cfg = load_config(path)
    for stage in ("pretrain", "train", "posttrain"):
        result = run_stage(cfg, stage, progress=False)
        assert result.status == "finished"
    return cfg, path


def test_each_stage_writes_its_outputs_with_one_row_per_step(chain: tuple[Config, Path]) -> None:
    cfg, _ = chain
    for stage in ("pretrain", "train", "posttrain"):
        out = cfg.stage_dir(stage)
        for name in ("last.pt", "final.pt", "config.toml", "metrics.csv", "loss_curve.png"):
            assert (out / name).is_file(), f"{stage}: {name} missing"
        rows = read_rows(out / "metrics.csv")
        total = cfg.stage_config(stage).total_steps
        assert [int(r["step"]) for r in rows] == list(range(1, total + 1))
        assert all(np.isfinite(float(r["loss"])) for r in rows)
        assert load_config(out / "config.toml") == cfg
        final = load_checkpoint(out / "final.pt")
        assert final["finished"] and final["stage"] == stage and final["step"] == total


def test_lr_follows_the_poly_schedule(chain: tuple[Config, Path]) -> None:
    cfg, _ = chain
    sc = cfg.stage.pretrain
    rows = read_rows(cfg.stage_dir("pretrain") / "metrics.csv")
    expected = [sc.lr * (1 - s / sc.total_steps) ** sc.poly_power for s in range(sc.total_steps)]
    np.testing.assert_allclose([float(r["lr"]) for r in rows], expected, rtol=1e-5)


def test_validation_is_logged_on_validated_epoch_ends(chain: tuple[Config, Path]) -> None:
    cfg, _ = chain
    rows = read_rows(cfg.stage_dir("posttrain") / "metrics.csv")
    filled = [int(r["step"]) for r in rows if r["val_score"]]
    assert filled == [cfg.stage.posttrain.total_steps]  # validate_every = 2 of 2 epochs
    values = {k: float(rows[-1][k]) for k in VAL_COLUMNS if k != "val_seconds"}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    means = [values["val_wt"], values["val_tc"], values["val_et"]]
    assert values["val_score"] == pytest.approx(float(np.mean(means)), abs=1e-5)
    assert {"seg", "kd", "kd_feat", "kd_pred"} <= set(rows[0])
    best = load_checkpoint(cfg.stage_dir("posttrain") / "best.pt")
    assert best["best_score"] == pytest.approx(values["val_score"], abs=1e-5)


def test_stages_chain_their_initialisation(chain: tuple[Config, Path]) -> None:
    cfg, _ = chain
    assert load_checkpoint(cfg.stage_dir("pretrain") / "final.pt")["init"] == "scratch"
    for stage, prev in (("train", "pretrain"), ("posttrain", "train")):
        init = load_checkpoint(cfg.stage_dir(stage) / "final.pt")["init"]
        assert init == str(cfg.stage_dir(prev) / "final.pt")


def test_posttrain_final_checkpoint_holds_the_teacher(chain: tuple[Config, Path]) -> None:
    cfg, _ = chain
    data = load_checkpoint(cfg.stage_dir("posttrain") / "final.pt")
    teacher, student = data["objective"]["teacher"], data["model"]
    assert teacher.keys() == student.keys()
    # kd_refresh_every = 1: the teacher was refreshed after the last epoch, so it equals the student.
    assert all(torch.equal(teacher[k], student[k]) for k in student)


def test_rerun_of_a_finished_stage_says_done_and_force_runs_again(
    chain: tuple[Config, Path],
) -> None:
    cfg, path = chain
    runner = CliRunner()
    args = ["run", "--stage", "train", "--config", str(path), "--no-progress"]
    res = runner.invoke(train_cli, args)
    assert res.exit_code == 0, res.output
    assert "already done" in res.output and "--force" in res.output
    before = (cfg.stage_dir("train") / "final.pt").stat().st_mtime_ns
    res = runner.invoke(train_cli, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert "finished after 2 steps" in res.output
    assert (cfg.stage_dir("train") / "final.pt").stat().st_mtime_ns != before
    assert len(read_rows(cfg.stage_dir("train") / "metrics.csv")) == 2


def test_missing_previous_checkpoint_names_path_and_command(tmp_path: Path, store: Path) -> None:
    path = tiny_config_file(tmp_path, store)
    cfg = load_config(path)
    expected = str(cfg.stage_dir("pretrain") / "final.pt")
    with pytest.raises(StageError, match=rf"{expected}.*train run --stage pretrain --config"):
        resolve_init(cfg, "train")
    res = CliRunner().invoke(train_cli, ["run", "--stage", "posttrain", "--config", str(path)])
    assert res.exit_code == 2
    assert "train run --stage train" in res.output
    assert resolve_init(load_config(path, ["stage.train.init=scratch"]), "train") is None
    with pytest.raises(StageError, match=r"nowhere\.pt.*stage\.train\.init"):
        resolve_init(load_config(path, ["stage.train.init=nowhere.pt"]), "train")


def test_non_finite_loss_stops_with_step_and_part_and_keeps_last_checkpoint(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import train.fit.losses

    real = train.fit.losses.rfnet_loss
    calls = {"n": 0}

    def flaky(out, target, **kw):
        loss, parts = real(out, target, **kw)
        calls["n"] += 1
        if calls["n"] == 3:  # the third training step
            return loss * float("nan"), {**parts, "aux": float("nan")}
        return loss, parts

    monkeypatch.setattr(train.fit.losses, "rfnet_loss", flaky)
    cfg = load_config(tiny_config_file(tmp_path, store), ["stage.pretrain.validate_every=0"])
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 1\).*aux = nan.*last\.pt"):
        run_stage(cfg, "pretrain", progress=False)
    out = cfg.stage_dir("pretrain")
    assert not (out / "final.pt").exists()
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert [int(r["step"]) for r in read_rows(out / "metrics.csv")] == [1, 2]


def test_validation_dice_equals_evaluate_on_the_best_checkpoint(
    chain: tuple[Config, Path], tmp_path: Path
) -> None:
    """best.pt scored by `train evaluate` on the val split gives the logged validation Dice."""
    from train.inference.evaluate import evaluate

    cfg, _ = chain
    stage_dir = cfg.stage_dir("pretrain")
    best = load_checkpoint(stage_dir / "best.pt")
    rows = [r for r in read_rows(stage_dir / "metrics.csv") if r["val_score"]]
    row = next(r for r in rows if float(r["val_score"]) == pytest.approx(best["best_score"]))
    result = evaluate(stage_dir / "best.pt", split="val", out_dir=tmp_path, progress=False)
    all_four = result.dice.values[result.dice.subsets.index((True, True, True, True))]
    for i, region in enumerate(("wt", "tc", "et")):
        assert float(row[f"val_{region}"]) == pytest.approx(result.dice.average[i], abs=1e-5)
        assert float(row[f"val_{region}_all"]) == pytest.approx(all_four[i], abs=1e-5)
    assert result.dice.n_cases == 1


def test_best_checkpoint_keeps_the_highest_validation_score(chain: tuple[Config, Path]) -> None:
    cfg, _ = chain
    stage_dir = cfg.stage_dir("pretrain")  # validated after each of its 2 epochs
    scores = [float(r["val_score"]) for r in read_rows(stage_dir / "metrics.csv") if r["val_score"]]
    assert len(scores) == cfg.stage.pretrain.epochs
    best = load_checkpoint(stage_dir / "best.pt")
    assert best["best_score"] == pytest.approx(max(scores), abs=1e-6)
    assert best["finished"] and "optimizer" not in best


def test_changed_config_stops_with_the_differing_keys(chain: tuple[Config, Path]) -> None:
    """A finished stage re-run with another config names the differing keys."""
    _, path = chain
    runner = CliRunner()
    args = ["run", "--stage", "train", "--config", str(path), "--no-progress"]
    res = runner.invoke(train_cli, [*args, "--set", "stage.train.lr=0.5"])
    assert res.exit_code == 2, res.output
    assert "written with a different config (stage.train.lr: 0.0002 -> 0.5)" in res.output
    assert "--force" in res.output and "Traceback" not in res.output
    same = runner.invoke(train_cli, [*args, "--set", "workers=3"])  # free to change
    assert same.exit_code == 0 and "already done" in same.output


def test_resume_under_another_model_config_is_one_clear_error(store: Path, tmp_path: Path) -> None:
    cfg = load_config(tiny_config_file(tmp_path, store), ["stage.pretrain.validate_every=0"])
    run_stage(cfg, "pretrain", progress=False)
    final = cfg.stage_dir("pretrain") / "final.pt"
    final.rename(cfg.stage_dir("pretrain") / "last.pt.bak")  # keep only a resumable last.pt
    bigger = load_config(
        tiny_config_file(tmp_path, store),
        ["stage.pretrain.validate_every=0", "model.base_channels=8"],
    )
    with pytest.raises(CheckpointError, match=r"model\.base_channels: 4 -> 8.*--force"):
        run_stage(bigger, "pretrain", progress=False)


def test_checkpoints_record_the_store_and_the_cases_trained_on(
    chain: tuple[Config, Path], store: Path
) -> None:
    cfg, _ = chain
    for stage in ("pretrain", "train", "posttrain"):
        for name in ("final.pt", "best.pt"):
            rec = load_checkpoint(cfg.stage_dir(stage) / name)["store"]
            assert rec["id"] == "tiny0001" and rec["path"] == str(store.resolve())
            assert rec["trained_on"] == ["real-train-0", "real-train-1", "real-train-2"]


def test_training_cases_accumulate_along_init_and_resume_refuses_a_rebuilt_store(
    tmp_path: Path,
) -> None:
    import json

    first = make_store(tmp_path / "a", n_real=2, n_synth=1, store_id="storeA")
    second = make_store(tmp_path / "b", n_real=3, n_synth=1, store_id="storeB")
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["splits"]["train"] = ["other-0", "other-1", "other-2"]
    (second / "manifest.json").write_text(json.dumps(manifest))
    fast = ["stage.pretrain.validate_every=0", "stage.train.validate_every=0"]
    cfg = load_config(tiny_config_file(tmp_path, first), fast)
    run_stage(cfg, "pretrain", progress=False)
    cfg_b = load_config(tiny_config_file(tmp_path, second), fast)
    run_stage(cfg_b, "train", progress=False)
    rec = load_checkpoint(cfg_b.stage_dir("train") / "final.pt")["store"]
    assert rec["id"] == "storeB"
    assert rec["trained_on"] == ["other-0", "other-1", "other-2", "real-train-0", "real-train-1"]
    # A killed train stage, then its store rebuilt under it: the resume stops.
    stage_dir = cfg_b.stage_dir("train")
    (stage_dir / "final.pt").unlink()
    assert (stage_dir / "last.pt").is_file()
    manifest["store_id"] = "storeC"
    (second / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError, match=r"last\.pt: this stage started on store storeB.*--force"
    ):
        run_stage(cfg_b, "train", progress=False)


def _damage_every_image_chunk(shard: Path) -> None:
    import h5py

    spots = []
    with h5py.File(shard, "r") as f:
        for sid in f["samples"]:
            ds = f[f"samples/{sid}/image"]
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                spots.append(info.byte_offset + info.size // 2)
    with open(shard, "r+b") as fh:
        for pos in spots:
            fh.seek(pos)
            byte = fh.read(1)
            fh.seek(pos)
            fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damaged_shard_stops_training_with_one_line(tmp_path: Path, damage: str) -> None:
    store = make_store(tmp_path / "store")
    shard = store / "synthetic" / "aem-00000.h5"
    if damage == "flipped":
        _damage_every_image_chunk(shard)
    else:
        shard.write_bytes(shard.read_bytes()[:-4096])
    path = tiny_config_file(tmp_path, store)
    args = ["run", "--stage", "pretrain", "--config", str(path), "--no-progress"]
    res = CliRunner().invoke(train_cli, args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(shard) in errors[0], res.output
    if damage == "flipped":
        assert "sample 'synthetic-train-" in errors[0]
    assert "Traceback" not in res.output


def test_dataloader_worker_errors_become_their_own_message() -> None:
    from torch._utils import ExceptionWrapper

    from aem_synth.errors import ShardError
    from train.cli import one_line

    try:
        raise ShardError("/s/a.h5: sample 'x': cannot read image (checksum)")
    except ShardError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ShardError) as info:
        wrapped.reraise()
    assert "Original Traceback" in str(info.value)
    assert one_line(info.value) == "/s/a.h5: sample 'x': cannot read image (checksum)"
    assert one_line(ValueError("plain")) == "plain"


def test_crop_larger_than_every_volume_is_refused_at_once(store: Path, tmp_path: Path) -> None:
    path = tiny_config_file(tmp_path, store)
    args = ["run", "--stage", "pretrain", "--config", str(path), "--no-progress"]
    res = CliRunner().invoke(train_cli, [*args, "--set", "data.crop=[200,200,24]"])
    assert res.exit_code == 2, res.output
    assert "crop 200x200x24 (data.crop) is larger than every stored volume along x, y" in res.output
    assert "largest of the 3 samples is 40x40x32" in res.output
    assert "data.crop=[40,40,24]" in res.output
    assert not (tmp_path / "runs" / "tiny" / "pretrain" / "last.pt").exists()


def test_resume_from_a_damaged_last_checkpoint_names_it(store: Path, tmp_path: Path) -> None:
    from train.fit.checkpoint import save_checkpoint

    cfg = load_config(tiny_config_file(tmp_path, store), ["stage.pretrain.validate_every=0"])
    run_stage(cfg, "pretrain", progress=False)
    out = cfg.stage_dir("pretrain")
    (out / "final.pt").unlink()
    last = out / "last.pt"
    data = load_checkpoint(last)
    dropped = sorted(data["model"])[0]
    kept = data["model"].pop(dropped)
    save_checkpoint(last, data)
    with pytest.raises(
        CheckpointError, match=rf"{last}: checkpoint does not fit the model.*{dropped}"
    ):
        run_stage(cfg, "pretrain", progress=False)
    data["model"][dropped] = kept
    data["optimizer"] = {"state": {}, "param_groups": []}
    save_checkpoint(last, data)
    with pytest.raises(CheckpointError, match=rf"{last}: cannot resume from it .*--force"):
        run_stage(cfg, "pretrain", progress=False)
