"""`train evaluate`: 15-subset evaluation of real test shards, outputs and CLI."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aem_synth.store.shards import SCHEMA_VERSION, Sample, write_manifest, write_shard
from tests.train.helpers import save_tiny_checkpoint
from train.data.subsets import ALL_SUBSETS
from train.inference.evaluate import EvaluationOptions, evaluate, evaluate_model
from train.inference.metrics import HD95_EMPTY_MM
from train.inference.sliding_window import WindowOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (24, 24, 16)
SMALL = EvaluationOptions(window=WindowOptions((16, 16, 16), 0.5, batch_size=4), device="cpu")


def _case(rng: np.random.Generator, with_et: bool) -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros(SHAPE, np.uint8)
    c = [int(rng.integers(8, 14)), int(rng.integers(8, 14)), int(rng.integers(6, 10))]
    label[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 2
    label[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 1 : c[2] + 1] = 3 if with_et else 1
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 1:-1] = True
    # Every modality carries the label as intensity (label + 1 inside the brain).
    image = np.where(brain, label.astype(np.float32) + 1.0, 0.0)[None].repeat(4, axis=0)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(3)
    samples = []
    for i, et in enumerate([True, False]):
        image, label = _case(rng, et)
        meta = {"case_id": f"case{i}", "spacing": [1.0, 1.0, 2.0], "present": [True] * 4}
        samples.append(Sample(f"case{i}", image, label, meta))
    info = write_shard(
        root / "real" / "test-00000.h5", samples, root=root, kind="real", split="test"
    )
    write_manifest(root, {"schema_version": SCHEMA_VERSION, "shards": [info.to_dict()]})
    return root


@dataclass
class _Out:
    logits: torch.Tensor


class OracleModel(torch.nn.Module):
    """Reads the label back from the mean of the present channels (intensity = label + 1)."""

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def decode(self, enc: torch.Tensor, mask: torch.Tensor) -> _Out:
        m = mask[:, :, None, None, None].to(enc.dtype)
        v = (enc * m).sum(1) / m.sum(1)
        k = torch.arange(4, dtype=enc.dtype)[None, :, None, None, None]
        return _Out(-10.0 * (v[:, None] - 1.0 - k) ** 2 + 10.0 * (v[:, None] == 0) * (k == 0))


def test_oracle_model_scores_perfectly_on_every_subset(store: Path, tmp_path: Path) -> None:
    res = evaluate_model(OracleModel(), store, "test", tmp_path / "ev", SMALL, progress=False)
    assert len(res.records) == 2 * 15
    np.testing.assert_allclose(res.dice.values, 1.0)
    np.testing.assert_allclose(res.hd95.values, 0.0)
    assert res.dice.n_cases == 2 and res.dice.subsets == ALL_SUBSETS
    for name in (
        "dice.md",
        "dice.csv",
        "hd95.md",
        "hd95.csv",
        "per_case.csv",
        "results.json",
        "figure.png",
    ):
        assert (tmp_path / "ev" / name).is_file(), name
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert doc["conventions"]["hd95_one_empty_mm"] == HD95_EMPTY_MM
    assert doc["options"]["window"] == [16, 16, 16] and len(doc["options"]["subsets"]) == 15
    assert "et_postprocess" not in doc
    assert "one empty -> Dice 0.0, HD95 373.13 mm" in res.markdown
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_case.csv")))
    assert len(rows) == 30 and {r["case_id"] for r in rows} == {"case0", "case1"}


class NoEtModel(OracleModel):
    """Oracle except ET predicted where FLAIR says NCR (wrong), never where it is ET."""

    def decode(self, enc: torch.Tensor, mask: torch.Tensor) -> _Out:
        out = super().decode(enc, mask).logits
        return _Out(out[:, [0, 3, 2, 1]])


def test_et_postprocess_reported_separately(store: Path, tmp_path: Path) -> None:
    opts = EvaluationOptions(window=SMALL.window, et_postprocess=10_000, device="cpu")
    res = evaluate_model(NoEtModel(), store, "test", tmp_path / "pp", opts, progress=False)
    assert res.dice_pp is not None and res.records_pp is not None
    # case1 has NCR in truth and ET in the prediction: raw ET Dice 0 with HD95 at the maximum;
    # after post-processing ET is gone (both empty: Dice 1) and TC is unchanged.
    raw = {r["case_id"]: r for r in res.records if r["subset"] == "FLAIR+T1+T1ce+T2"}
    pp = {r["case_id"]: r for r in res.records_pp if r["subset"] == "FLAIR+T1+T1ce+T2"}
    assert raw["case1"]["dice_ET"] == 0.0 and raw["case1"]["hd95_ET"] == HD95_EMPTY_MM
    assert pp["case1"]["dice_ET"] == 1.0 and pp["case1"]["hd95_ET"] == 0.0
    assert pp["case1"]["dice_TC"] == raw["case1"]["dice_TC"]
    for name in ("dice_etpp.md", "hd95_etpp.csv", "per_case_etpp.csv"):
        assert (tmp_path / "pp" / name).is_file()
    assert "after ET post-processing (ET < 10000 voxels -> NCR/NET)" in res.markdown
    assert (
        json.loads((tmp_path / "pp" / "results.json").read_text())["et_postprocess"]["min_voxels"]
        == 10_000
    )


def test_prediction_outside_brain_of_present_modalities_is_background(store: Path) -> None:
    class Everywhere(OracleModel):
        def decode(self, enc: torch.Tensor, mask: torch.Tensor) -> _Out:
            logits = torch.zeros((enc.shape[0], 4, *enc.shape[2:]))
            logits[:, 2] = 1.0  # ED everywhere, also outside the brain
            return _Out(logits)

    res = evaluate_model(Everywhere(), store, "test", None, SMALL, progress=False)
    # Prediction = the brain (20x20x14), truth = the 8x8x6 WT box inside it.
    brain, tumour = 20 * 20 * 14, 8 * 8 * 6
    for r in res.records:
        assert r["dice_WT"] == pytest.approx(2 * tumour / (brain + tumour))


def test_missing_split_and_wrong_class_count(store: Path) -> None:
    with pytest.raises(ValueError, match="no real samples in split 'val'"):
        evaluate_model(OracleModel(), store, "val", None, SMALL, progress=False)

    class TwoClass(OracleModel):
        def decode(self, enc: torch.Tensor, mask: torch.Tensor) -> _Out:
            return _Out(super().decode(enc, mask).logits[:, :2])

    with pytest.raises(ValueError, match=r"needs 4 classes .* the model returned 2"):
        evaluate_model(TwoClass(), store, "test", None, SMALL, progress=False)


@pytest.fixture(scope="module")
def checkpoint(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("rfnet", num_classes=4, base_channels=4)
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    return save_tiny_checkpoint(path, model, {"shards": str(store)})


def test_evaluate_checkpoint_uses_its_shards(checkpoint: Path, tmp_path: Path) -> None:
    res = evaluate(checkpoint, out_dir=tmp_path / "e", window=16, device="cpu", progress=False)
    assert res.dice.values.shape == (15, 3)
    assert ((res.dice.values >= 0) & (res.dice.values <= 1)).all()
    doc = json.loads((tmp_path / "e" / "results.json").read_text())
    assert doc["checkpoint"]["backbone"] == "rfnet" and doc["split"] == "test"


def test_cli_evaluate_prints_table(checkpoint: Path, store: Path, tmp_path: Path) -> None:
    from train.cli import main

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--shards",
            str(store),
            "--out",
            str(out),
            "--window",
            "16",
            "--overlap",
            "0.25",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("●") + result.output.count("○") == 2 * 15 * 4
    assert "**Average**" in result.output and (out / "dice.md").is_file()
    bad = CliRunner().invoke(
        main, ["evaluate", "--checkpoint", str(checkpoint), "--shards", str(tmp_path / "none")]
    )
    assert bad.exit_code != 0 and "no manifest.json" in bad.output


def test_evaluation_refuses_cases_the_checkpoint_was_trained_on(store: Path) -> None:
    import json

    from aem_synth.errors import ShardError
    from train.data.provenance import check_evaluation_store

    manifest = json.loads((store / "manifest.json").read_text())
    test_ids = sorted(
        {sid for e in manifest["shards"] if e["split"] == "test" for sid in e["samples"]}
    )
    patched = {**manifest, "store_id": "new", "splits": {"test": test_ids, "train": []}}
    (store / "manifest.json").write_text(json.dumps(patched))
    try:
        leaky = {"store": {"id": "old", "path": "/x", "trained_on": [test_ids[0], "zz"]}}
        with pytest.raises(
            ShardError, match=rf"split 'test' holds 1 case\(s\) .*\({test_ids[0]}\)"
        ):
            check_evaluation_store(leaky, store, "test")
        other = {"store": {"id": "old", "path": "/x", "trained_on": ["zz"]}}
        (note,) = check_evaluation_store(other, store, "test")
        assert "evaluating on store new" in note and "trained on store old (/x)" in note
        same = {"store": {"id": "new", "path": "/x", "trained_on": ["zz"]}}
        assert check_evaluation_store(same, store, "test") == []
        assert check_evaluation_store({}, store, "test") == []
    finally:
        (store / "manifest.json").write_text(json.dumps(manifest))


def test_store_lines_and_checkpoints_trained_before_ids_covered_checksums(store: Path) -> None:
    import json

    from train.data.provenance import check_evaluation_store, describe_stores

    manifest = json.loads((store / "manifest.json").read_text())
    # A store rebuilt with the options and splits of the one a checkpoint was trained on,
    # when that one's id covered only those (its id is the new store's build_id).
    patched = {**manifest, "store_id": "content", "build_id": "legacy"}
    (store / "manifest.json").write_text(json.dumps(patched))
    try:
        legacy = {"store": {"id": "legacy", "path": "/old", "trained_on": []}}
        assert check_evaluation_store(legacy, store, "test") == []
        assert describe_stores(legacy, store) == [
            f"store: content ({store.resolve()})",
            "trained on store: legacy (/old): the same store",
        ]
        other = {"store": {"id": "other", "path": "/old", "trained_on": []}}
        assert describe_stores(other, store)[1] == "trained on store: other (/old): another store"
        assert describe_stores({}, store)[1] == "trained on store: not recorded in the checkpoint"
    finally:
        (store / "manifest.json").write_text(json.dumps(manifest))
