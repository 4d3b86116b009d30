"""PointwiseConv3d: the GEMM form of a 1x1x1 convolution is the same layer as ``nn.Conv3d``;
PaddedConv3d: its CPU path (channels-last, single-sample slabs, width packing) is too;
upsample2: channels-last on CPU, the same values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.models.blocks import ConvNormAct, PaddedConv3d, PointwiseConv3d, upsample2

CL = torch.channels_last_3d


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
    assert type(three) is PaddedConv3d and three.padding_mode == "reflect"
    assert type(strided) is PaddedConv3d and strided.padding_mode == "zeros"


def test_wrong_channel_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected 4 input channels, got 3"):
        PointwiseConv3d(4, 2)(torch.zeros(1, 3, 2, 2, 2))


def _pair(c_in: int, c_out: int, stride: int, dtype: torch.dtype) -> tuple[nn.Conv3d, PaddedConv3d]:
    torch.manual_seed(2)
    ref = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, padding_mode="reflect").to(dtype)
    conv = PaddedConv3d(c_in, c_out, 3, stride=stride, padding=1, padding_mode="reflect")
    conv.load_state_dict(ref.state_dict())  # same keys and shapes
    return ref, conv.to(dtype).to(memory_format=CL)  # type: ignore[call-overload]


# (batch, in, out, stride, spatial): packed widths (8 -> 4 at >= 32), single samples split in
# depth (even and odd output depths), strided entries, non-cubic sizes to catch swapped axes
CASES = [
    (1, 8, 4, 1, (6, 5, 32)),
    (2, 8, 4, 1, (3, 4, 34)),
    (1, 4, 4, 1, (7, 6, 8)),
    (1, 1, 4, 1, (4, 6, 5)),
    (1, 4, 8, 2, (8, 6, 10)),
    (3, 4, 8, 2, (6, 4, 4)),
    (1, 16, 2, 1, (2, 3, 36)),
]


@pytest.mark.parametrize(("batch", "c_in", "c_out", "stride", "spatial"), CASES)
def test_padded_conv_cpu_path_is_the_same_convolution(
    batch: int, c_in: int, c_out: int, stride: int, spatial: tuple[int, int, int]
) -> None:
    """Float64 (PyTorch's reference kernels): the split and packed forms are exact."""
    ref, conv = _pair(c_in, c_out, stride, torch.float64)
    x = torch.randn(batch, c_in, *spatial, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), conv(x2)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-12, atol=1e-12)
    assert conv.bias is not None and ref.bias is not None
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-10, atol=1e-10)


def test_padded_conv_chooses_its_forms() -> None:
    _, pack = _pair(8, 4, 1, torch.float32)
    assert pack._packs_width(34) and not pack._packs_width(33) and not pack._packs_width(18)
    _, same = _pair(4, 4, 1, torch.float32)
    _, strided = _pair(8, 2, 2, torch.float32)
    assert not same._packs_width(66) and not strided._packs_width(66)
    one = torch.zeros(1, 4, 10, 3, 3)  # padded: output depth 8 -> two slabs of 4 (+2)
    slabs = same._depth_halves(one)
    assert slabs is not None and slabs.shape == (2, 4, 6, 3, 3)
    assert same._depth_halves(torch.zeros(1, 4, 9, 3, 3)) is None  # odd output depth


@pytest.mark.parametrize("batch", [1, 2])
def test_padded_conv_float32_outputs_match_channels_last_conv3d(batch: int) -> None:
    """On oneDNN every output voxel is computed as by a plain channels-last convolution."""
    ref, conv = _pair(8, 4, 1, torch.float32)
    ref.to(memory_format=CL)  # type: ignore[call-overload]
    x = torch.randn(batch, 8, 8, 6, 32)
    y_ref, y = ref(x), conv(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    assert y.is_contiguous(memory_format=CL)


def test_padded_conv_without_channels_last_weight() -> None:
    """A contiguous weight: ``nn.Conv3d`` itself, except that one sample still runs as two slabs."""
    torch.manual_seed(3)
    ref = nn.Conv3d(8, 4, 3, padding=1, padding_mode="reflect")
    conv = PaddedConv3d(8, 4, 3, padding=1, padding_mode="reflect")
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 4, 4, 32)
    assert torch.equal(conv(x), ref(x))
    one = conv(x[:1])
    assert one.is_contiguous()
    torch.testing.assert_close(one, ref(x)[:1], rtol=1e-6, atol=1e-6)


def test_upsample2_is_trilinear_in_either_layout() -> None:
    x = torch.randn(2, 8, 4, 3, 5, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(
        x, scale_factor=2.0, mode="trilinear", align_corners=False
    )
    got = upsample2(x)
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
