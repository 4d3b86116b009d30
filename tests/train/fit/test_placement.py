"""Model placement: CPU models run their convolutions channels-last with the same results."""

from __future__ import annotations

import torch

from train.fit.distributed import place_model
from train.models import build_backbone


def test_cpu_placement_makes_conv_weights_channels_last_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    reference = build_backbone("rfnet", num_classes=4, base_channels=4).eval()
    torch.manual_seed(0)
    placed = place_model(build_backbone("rfnet", num_classes=4, base_channels=4), "cpu").eval()
    convs = [p for p in placed.parameters() if p.ndim == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    for a, b in zip(reference.state_dict().values(), placed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    image = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    with torch.no_grad():
        expected, got = reference(image, mask), placed(image, mask)
    # Summation order differs between the layouts: fp32 round-off, nothing more.
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-3, atol=1e-4)
    # A checkpoint of the placed model loads into a plain one and back, values unchanged.
    fresh = build_backbone("rfnet", num_classes=4, base_channels=4)
    fresh.load_state_dict(placed.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), reference.state_dict().values(), strict=True)
    )
