"""Every backbone has its ablation recipes (baseline, + AEM, + AEM + KD) at its published width."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config_files import load_config
from train.models import BACKBONES

ABLATIONS = Path(__file__).resolve().parents[2] / "pipelines" / "ablations"
WIDTHS = {"rfnet": 16, "uhved": 8, "robustseg": 16}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_ablation_recipes(backbone: str) -> None:
    prefix = "" if backbone == "rfnet" else f"{backbone}_"
    recipes = {
        arm: load_config(ABLATIONS / f"{prefix}{arm}.toml") for arm in ("baseline", "aem", "aem_kd")
    }
    for arm, cfg in recipes.items():
        assert cfg.model.backbone == backbone, arm
        assert cfg.model.base_channels == WIDTHS[backbone], arm
        assert cfg.loss.class_weights == "rfnet" and cfg.loss.aux_weights() == {
            "kl": 0.1,
            "recon": 0.1,
        }
    assert recipes["baseline"].stage.train.init == "scratch"
    assert recipes["aem"].stage.pretrain.init == "scratch"
    assert recipes["aem_kd"].stage.posttrain.kd_refresh_every == 5
    assert len({cfg.name for cfg in recipes.values()}) == 3
