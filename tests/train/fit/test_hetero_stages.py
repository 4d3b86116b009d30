"""U-HVED and RobustSeg through pretrain -> train -> posttrain, `train evaluate` and
`train predict` on the tiny shard store: one optimiser step per stage on CPU (evaluation
runs the same 15-subset sliding window as the validation during training)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.train.helpers import make_store, read_rows, tiny_config_file
from tests.train.inference.test_predict import write_case
from train.config_files import load_config
from train.fit.checkpoint import load_checkpoint
from train.fit.stages import run_stage
from train.inference.evaluate import evaluate
from train.inference.predict import predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONE_STEP = [
    f"stage.{s}.{k}=1"
    for s in ("pretrain", "train", "posttrain")
    for k in ("epochs", "iters_per_epoch")
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), n_real=2, n_synth=2)


@pytest.mark.parametrize("backbone", ["uhved", "robustseg"])
def test_three_stages_evaluate_and_predict(backbone: str, store: Path, tmp_path: Path) -> None:
    overrides = [
        f"model.backbone={backbone}",
        *ONE_STEP,
        *(f"stage.{s}.validate_every=0" for s in ("pretrain", "train", "posttrain")),
        "stage.posttrain.kd_refresh_every=1",
    ]
    cfg = load_config(tiny_config_file(tmp_path, store), overrides)
    for stage in ("pretrain", "train", "posttrain"):
        result = run_stage(cfg, stage, progress=False)
        assert result.status == "finished" and result.steps == 1
        rows = read_rows(cfg.stage_dir(stage) / "metrics.csv")
        assert len(rows) == 1
        row = {k: v for k, v in rows[0].items() if v != ""}
        assert {"loss", "fused", "kl", "recon"} <= set(row)
        assert all(np.isfinite(float(row[k])) for k in ("loss", "fused", "kl", "recon"))
        final = load_checkpoint(cfg.stage_dir(stage) / "final.pt")
        assert final["backbone"] == backbone and final["backbone_kwargs"]["base_channels"] == 4
    post = read_rows(cfg.stage_dir("posttrain") / "metrics.csv")[0]
    assert float(post["kd"]) > 0 and float(post["kd_feat"]) > 0

    checkpoint = cfg.stage_dir("posttrain") / "final.pt"
    res = evaluate(checkpoint, split="val", out_dir=tmp_path / "eval", device="cpu", progress=False)
    assert res.dice.values.shape == (15, 3) and (tmp_path / "eval" / "dice.md").is_file()
    assert bool(np.isfinite(res.dice.values).all())

    case = write_case(tmp_path / "cases", "BraTS20_Training_001", ("flair", "t2"))
    out = tmp_path / "pred" / "seg.nii.gz"
    pred = predict(checkpoint, out, case=case, overlap=0.0, device="cpu", progress=False)
    assert pred.mask == (True, False, False, True)  # type: ignore[union-attr]
    data = np.asarray(nib.load(out).dataobj)  # type: ignore[attr-defined]
    assert data.shape == (32, 28, 24) and set(np.unique(data)) <= {0, 1, 2, 4}
