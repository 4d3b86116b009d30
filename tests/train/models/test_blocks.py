"""PointwiseConv3d: the GEMM form of a 1x1x1 convolution is the same layer as ``nn.Conv3d``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.models.blocks import ConvNormAct, PointwiseConv3d


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv3d_values_and_gradients(batch: int, bias: bool) -> None:
    torch.manual_seed(0)
    ref = nn.Conv3d(12, 5, kernel_size=1, bias=bias).double()
    pw = PointwiseConv3d(12, 5, bias=bias).double()
    pw.load_state_dict(ref.state_dict())  # same keys and shapes
    x = torch.randn(batch, 12, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), pw(x2)
    assert y.shape == (batch, 5, 6, 5, 4)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pw.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        assert pw.bias is not None and ref.bias is not None
        torch.testing.assert_close(pw.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)


def test_non_contiguous_input() -> None:
    torch.manual_seed(1)
    pw = PointwiseConv3d(4, 3)
    ref = nn.Conv3d(4, 3, 1)
    ref.load_state_dict(pw.state_dict())
    x = torch.randn(2, 8, 4, 5, 3)[:, ::2]  # every other channel: a strided view
    assert not x.is_contiguous()
    torch.testing.assert_close(pw(x), ref(x), rtol=1e-5, atol=1e-6)


def test_conv_norm_act_uses_the_gemm_form_only_for_1x1x1_stride_1() -> None:
    assert isinstance(ConvNormAct(8, 4, kernel_size=1)[0], PointwiseConv3d)
    three = ConvNormAct(8, 4, kernel_size=3)[0]
    strided = ConvNormAct(8, 4, kernel_size=1, stride=2)[0]
    assert type(three) is nn.Conv3d and type(strided) is nn.Conv3d


def test_wrong_channel_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected 4 input channels, got 3"):
        PointwiseConv3d(4, 2)(torch.zeros(1, 3, 2, 2, 2))
