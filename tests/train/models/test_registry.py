"""Backbone registry and the Backbone interface."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from train.models import BACKBONES, build_backbone, count_parameters
from train.models.base import Backbone, EncoderOutput, ModelOutput
from train.models.rfnet import RFNet


def test_rfnet_is_registered() -> None:
    assert BACKBONES["rfnet"] is RFNet
    model = build_backbone("rfnet", num_classes=5, base_channels=4)
    assert isinstance(model, RFNet) and isinstance(model, Backbone)
    assert model.num_classes == 5 and model.num_modalities == 4
    assert model.name == "rfnet"


def test_init_args_rebuild_an_identically_shaped_model() -> None:
    model = build_backbone("rfnet", num_classes=3, base_channels=8)
    rebuilt = build_backbone(model.name, **model.init_args)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_unknown_backbone_lists_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'unet'; registered backbones: rfnet"):
        build_backbone("unet")


def test_unknown_argument_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'rfnet' does not accept argument\(s\) \['depth'\]"):
        build_backbone("rfnet", depth=5)


def test_count_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    assert count_parameters(model) == 3 * 2 + 2 + 2 + 1
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 3
    assert count_parameters(model) == 11


class _TinyBackbone(Backbone):
    """Minimal backbone: one shared 1x1 conv per modality, masked mean fusion."""

    name = "tiny"

    def __init__(self, num_classes: int = 2, num_modalities: int = 4) -> None:
        super().__init__(num_classes, num_modalities)
        self.conv = nn.Conv3d(1, num_classes, 1)

    def encode(self, image: Tensor) -> EncoderOutput:
        feats = self.conv(image.flatten(0, 1).unsqueeze(1)).unflatten(0, image.shape[:2])
        return EncoderOutput(levels=[feats])

    def decode(self, enc: EncoderOutput, mask: Tensor) -> ModelOutput:
        weights = mask.float()[:, :, None, None, None, None]
        fused = (enc.levels[0] * weights).sum(1) / weights.sum(1)
        return ModelOutput(logits=fused, features=[fused])


def test_custom_backbone_through_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKBONES, "tiny", _TinyBackbone)
    model = build_backbone("tiny", num_classes=3)
    image = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    out = model(image, mask)
    assert out.logits.shape == (2, 3, 16, 16, 16)
    assert out.aux_logits is None and out.deep_logits == [] and out.region_maps == []
    torch.testing.assert_close(out.logits, model.decode(model.encode(image), mask).logits)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(1, 4, 12, 16, 16), mask[:1])


def test_factory_must_return_a_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKBONES, "linear", lambda: nn.Linear(1, 1))
    with pytest.raises(ValueError, match="returned Linear, not a Backbone"):
        build_backbone("linear")


def test_backbone_is_abstract() -> None:
    with pytest.raises(TypeError):
        Backbone(num_classes=2)  # type: ignore[abstract]
