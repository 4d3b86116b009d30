"""The backbones' own loss terms in the segmentation objective; RFNet's loss unchanged."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from train.config import ConfigError
from train.config_files import load_config
from train.fit.losses import rfnet_loss
from train.fit.objectives import SegObjective, forward_kwargs
from train.models import build_backbone
from train.models.base import ModelOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    return {
        "image": torch.randn(2, 4, 16, 16, 16, generator=g) * mask[:, :, None, None, None],
        "label": torch.randint(0, 4, (2, 16, 16, 16), generator=g),
        "mask": mask,
    }


def _rfnet_output() -> tuple[ModelOutput, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_backbone("rfnet", num_classes=4, base_channels=4).train()
    b = _batch()
    return model(b["image"], b["mask"]), b


def test_rfnet_loss_and_parts_do_not_change_with_backbone_weights() -> None:
    out, b = _rfnet_output()
    assert out.aux_losses == {}
    plain, parts = rfnet_loss(out, b["label"], modality_mask=b["mask"])
    weighted, parts_w = rfnet_loss(
        out, b["label"], modality_mask=b["mask"], aux_weights={"kl": 5.0, "recon": 3.0}
    )
    assert list(parts) == ["fused", "aux", "deep", "region", "total"]
    assert parts == parts_w and torch.equal(plain, weighted)


def test_backbone_terms_are_weighted_into_the_total_and_logged_unweighted() -> None:
    out, b = _rfnet_output()
    base, _ = rfnet_loss(out, b["label"], modality_mask=b["mask"])
    terms = {"kl": torch.tensor(2.0), "recon": torch.tensor(0.5)}
    total, parts = rfnet_loss(
        replace(out, aux_losses=terms),
        b["label"],
        modality_mask=b["mask"],
        aux_weights={"kl": 0.1, "recon": 0.2},
    )
    assert parts["kl"] == 2.0 and parts["recon"] == 0.5
    assert float(total.detach()) == pytest.approx(float(base.detach()) + 0.2 + 0.1, rel=1e-6)
    with pytest.raises(ValueError, match=r"loss term\(s\) \['recon'\] have no weight"):
        rfnet_loss(replace(out, aux_losses=terms), b["label"], aux_weights={"kl": 0.1})


def test_sampling_backbones_get_the_loop_generator() -> None:
    g = torch.Generator()
    rfnet = build_backbone("rfnet", num_classes=4, base_channels=4)
    uhved = build_backbone("uhved", num_classes=4, base_channels=4)

    class Wrapper(nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    assert forward_kwargs(rfnet, g) == {} and forward_kwargs(Wrapper(rfnet), g) == {}
    assert forward_kwargs(uhved, g) == {"generator": g}
    assert forward_kwargs(Wrapper(uhved), g) == {"generator": g}


@pytest.mark.parametrize("name", ["uhved", "robustseg"])
def test_seg_objective_is_reproducible_from_the_loop_generator(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=4, base_channels=4).train()
    objective = SegObjective(functools.partial(rfnet_loss, aux_weights={"kl": 0.1, "recon": 0.1}))
    g = torch.Generator().manual_seed(11)
    first, parts = objective(model, _batch(), g)
    second, _ = objective(model, _batch(), g)  # the generator moved on: other noise
    replay, _ = objective(model, _batch(), torch.Generator().manual_seed(11))
    assert {"fused", "kl", "recon"} <= set(parts) and "total" not in parts
    assert torch.equal(first.detach(), replay.detach())
    assert not torch.equal(first.detach(), second.detach())


def test_loss_weights_are_config_keys_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\nshards = "s"\n')
    cfg = load_config(path)
    assert cfg.loss.aux_weights() == {"kl": 0.1, "recon": 0.1}
    assert load_config(path, ["loss.kl_weight=0.5"]).loss.aux_weights()["kl"] == 0.5
    with pytest.raises(ConfigError, match=r"loss.recon_weight must be >= 0, got -1.0"):
        load_config(path, ["loss.recon_weight=-1"])
