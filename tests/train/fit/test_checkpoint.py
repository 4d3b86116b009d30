"""Checkpoints: atomic save, weights_only load, metadata, shape-checked restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from aem_synth import __version__
from train.fit.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    load_weights,
    save_checkpoint,
)
from train.models import build_backbone


def _payload(model: nn.Module, **extra: object) -> dict[str, object]:
    return {
        "stage": "train",
        "backbone": "rfnet",
        "backbone_kwargs": dict(model.init_args),  # type: ignore[arg-type]
        "num_classes": model.num_classes,
        "config": {"name": "x", "data": {"crop": [16, 16, 16]}},
        "model": model.state_dict(),
        "step": 7,
        **extra,
    }


def test_save_is_atomic_and_loads_with_weights_only(tmp_path: Path) -> None:
    model = build_backbone("rfnet", num_classes=4, base_channels=4)
    path = save_checkpoint(
        tmp_path / "run" / "last.pt", _payload(model, rng={"x": torch.get_rng_state()})
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert raw["tool_version"] == __version__ and raw["stage"] == "train" and raw["step"] == 7
    data = load_checkpoint(path)
    assert all(torch.equal(data["model"][k], v) for k, v in model.state_dict().items())


def test_load_model_from_checkpoint_rebuilds_the_backbone(tmp_path: Path) -> None:
    model = build_backbone("rfnet", num_classes=4, base_channels=4)
    path = save_checkpoint(tmp_path / "final.pt", _payload(model))
    loaded, meta = load_model_from_checkpoint(path, "cpu")
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert meta["stage"] == "train" and meta["backbone"] == "rfnet" and meta["num_classes"] == 4
    assert meta["config"]["data"]["crop"] == [16, 16, 16] and "model" not in meta


def test_wrong_class_count_lists_parameter_names_and_shapes(tmp_path: Path) -> None:
    four = build_backbone("rfnet", num_classes=4, base_channels=4)
    three = build_backbone("rfnet", num_classes=3, base_channels=4)
    with pytest.raises(
        CheckpointError,
        match=r"a\.pt: .*shape mismatch \(checkpoint vs model\): .*head\.weight \(4, 4, 1, 1, 1\) vs \(3, 4, 1, 1, 1\)",
    ):
        load_weights(three, four.state_dict(), "a.pt")


def test_wrong_backbone_lists_names_only_in_one_side() -> None:
    rfnet = build_backbone("rfnet", num_classes=4, base_channels=4)
    other = nn.Sequential(nn.Conv3d(4, 4, 3))
    with pytest.raises(
        CheckpointError,
        match=r"only in checkpoint: 0\.bias \(4,\), 0\.weight \(4, 4, 3, 3, 3\); only in model: .* and \d+ more",
    ):
        load_weights(rfnet, other.state_dict(), "b.pt")
    wide = build_backbone("rfnet", num_classes=4, base_channels=8)
    with pytest.raises(CheckpointError, match=r"shape mismatch"):
        load_weights(rfnet, wide.state_dict(), "c.pt")


def test_unreadable_or_foreign_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"junk\.pt: cannot read checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(
        CheckpointError,
        match=r"foreign\.pt: not a checkpoint of this tool; missing keys \['format'",
    ):
        load_checkpoint(foreign)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected_on_load(tmp_path: Path, bad: float) -> None:
    model = build_backbone("rfnet", num_classes=4, base_channels=4)
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name][0] = bad
    payload = _payload(model)
    payload["model"] = state
    path = save_checkpoint(tmp_path / "final.pt", payload)
    with pytest.raises(CheckpointError, match=rf"hold NaN or Inf values \({name}\)"):
        load_model_from_checkpoint(path, "cpu")


def test_a_config_written_before_new_keys_existed_counts_as_their_defaults() -> None:
    import tomllib

    from train.config import config_from_dict, config_to_dict
    from train.fit.checkpoint import CheckpointError, check_same_config

    with open(Path(__file__).parents[3] / "pipelines" / "demo.toml", "rb") as fh:
        current = config_to_dict(config_from_dict(tomllib.load(fh)))
    older = {**current, "loss": {"class_weights": current["loss"]["class_weights"]}}
    check_same_config("last.pt", older, current)  # kl_weight / recon_weight: their defaults
    changed = {**current, "loss": {**current["loss"], "kl_weight": 0.5}}
    with pytest.raises(CheckpointError, match=r"loss.kl_weight: 0.5 -> 0.1"):
        check_same_config("last.pt", changed, current)
