"""Sliding-window inference: exact reconstruction through windows and padding; encoder reuse."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from train.data.subsets import ALL_SUBSETS
from train.inference.sliding_window import (
    WindowOptions,
    auto_subset_batch,
    gaussian_importance,
    padded_shape,
    predict_subsets,
    resolve_device,
    resolve_window,
    trained_window,
    window_starts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W = torch.tensor(
    [[0.5, -1.0, 0.3, 0.2], [1.0, 0.4, -0.7, 0.1], [-0.2, 0.9, 0.6, -1.1], [0.3, 0.2, 1.2, 0.8]]
)


@dataclass
class _Out:
    logits: torch.Tensor


class PointwiseModel(torch.nn.Module):
    """Logits are a known voxel-wise function of the input and the mask.

    ``logits[c] = sum_m mask[m] * W[c, m] * x[m]``; being voxel-wise, whole-volume inference must reproduce it exactly,
    whatever the windows, overlap, weighting and padding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encode_calls = 0
        self.decode_calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        self.shapes.append(tuple(image.shape))
        return image * 1.0

    def decode(self, enc: torch.Tensor, mask: torch.Tensor) -> _Out:
        self.decode_calls += 1
        masked = enc * mask[:, :, None, None, None].to(enc.dtype)
        return _Out(torch.einsum("cm,bmxyz->bcxyz", W, masked))


def expected_probs(image: np.ndarray, mask: tuple[bool, ...]) -> np.ndarray:
    x = torch.from_numpy(image) * torch.tensor(mask, dtype=torch.float32)[:, None, None, None]
    return torch.softmax(torch.einsum("cm,mxyz->cxyz", W, x), dim=0).numpy()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 37, 29, 21)).astype(np.float32)


def test_window_starts_tile_axis_and_end_at_size() -> None:
    assert window_starts(16, 16, 0.5) == [0]
    s = window_starts(40, 16, 0.5)
    assert s[0] == 0 and s[-1] == 24
    assert all(b - a <= 8 for a, b in itertools.pairwise(s))
    with pytest.raises(ValueError, match="smaller than the window 16; pad first"):
        window_starts(10, 16, 0.5)


def test_padded_shape_at_least_window_and_multiple_of_8() -> None:
    assert padded_shape((37, 29, 21), (16, 16, 32)) == (40, 32, 32)
    assert padded_shape((80, 81, 8), (80, 80, 80)) == (80, 88, 80)


def test_gaussian_importance_positive_peak_one() -> None:
    g = gaussian_importance((16, 16, 8))
    assert g.shape == (16, 16, 8) and float(g.max()) == pytest.approx(1.0)
    assert float(g.min()) > 0


@pytest.mark.parametrize("gaussian", [False, True])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_pointwise_model_reproduced_exactly(
    image: np.ndarray, overlap: float, gaussian: bool
) -> None:
    model = PointwiseModel()
    subsets = [ALL_SUBSETS[0], ALL_SUBSETS[9], ALL_SUBSETS[14]]
    out = predict_subsets(
        model,
        image,
        subsets,
        window=(16, 16, 16),
        overlap=overlap,
        gaussian=gaussian,
        batch_size=3,
        device="cpu",
    )
    assert set(out) == set(subsets)
    for s in subsets:
        assert out[s].shape == (4, 37, 29, 21) and out[s].dtype == np.float32
        np.testing.assert_allclose(out[s], expected_probs(image, s), atol=2e-6)
    assert all(sh[2:] == (16, 16, 16) and sh[0] <= 3 for sh in model.shapes)


def test_reuse_encoder_identical_and_encodes_once_per_batch(image: np.ndarray) -> None:
    reuse, again = PointwiseModel(), PointwiseModel()
    kw: dict[str, Any] = dict(window=(16, 16, 16), overlap=0.5, batch_size=2, device="cpu")
    a = predict_subsets(reuse, image, ALL_SUBSETS, reuse_encoder=True, **kw)
    b = predict_subsets(again, image, ALL_SUBSETS, reuse_encoder=False, **kw)
    for s in ALL_SUBSETS:
        np.testing.assert_array_equal(a[s], b[s])
    assert again.encode_calls == 15 * reuse.encode_calls
    assert reuse.decode_calls == again.decode_calls == 15 * reuse.encode_calls


def test_small_volume_padded_to_window(image: np.ndarray) -> None:
    model = PointwiseModel()
    small = image[:, :5, :7, :3]
    out = predict_subsets(model, small, [ALL_SUBSETS[14]], window=(16, 16, 16), device="cpu")
    assert model.shapes == [(1, 4, 16, 16, 16)]
    np.testing.assert_allclose(
        out[ALL_SUBSETS[14]], expected_probs(small, ALL_SUBSETS[14]), atol=2e-6
    )


def test_probabilities_sum_to_one_with_rfnet_like_model(image: np.ndarray) -> None:
    rfnet = pytest.importorskip("train.models.rfnet")
    torch.manual_seed(0)
    model = rfnet.RFNet(num_classes=4, base_channels=4)
    out = predict_subsets(model, image, ALL_SUBSETS[:2], window=(16, 16, 16), device="cpu")
    for p in out.values():
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)


def test_bad_arguments_are_rejected(image: np.ndarray) -> None:
    m = PointwiseModel()
    with pytest.raises(ValueError, match=r"divisible by 8, got \(20, 16, 16\)"):
        predict_subsets(m, image, [ALL_SUBSETS[0]], window=(20, 16, 16))
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\), got 1.0"):
        WindowOptions(overlap=1.0)
    with pytest.raises(
        ValueError, match=r"image must have shape \(4, X, Y, Z\), got \(3, 4, 4, 4\)"
    ):
        predict_subsets(m, image[:3, :4, :4, :4], [ALL_SUBSETS[0]], window=(8, 8, 8))
    with pytest.raises(ValueError, match="at least one True"):
        predict_subsets(m, image, [(False, False, False, False)], window=(8, 8, 8))
    with pytest.raises(ValueError, match="non-empty and distinct"):
        predict_subsets(m, image, [ALL_SUBSETS[0], ALL_SUBSETS[0]], window=(8, 8, 8))


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_subset_batching_matches_one_subset_at_a_time(image: np.ndarray) -> None:
    rfnet = pytest.importorskip("train.models.rfnet")
    torch.manual_seed(0)
    model = rfnet.RFNet(num_classes=4, base_channels=4)
    kw: dict[str, Any] = {"window": (16, 16, 16), "device": "cpu"}
    one = predict_subsets(model, image[:, :20, :20, :16], ALL_SUBSETS, subset_batch=1, **kw)
    many = predict_subsets(model, image[:, :20, :20, :16], ALL_SUBSETS, subset_batch=6, **kw)
    for s in ALL_SUBSETS:
        np.testing.assert_allclose(many[s], one[s], atol=1e-5)


def test_window_defaults_to_the_training_crop_of_the_checkpoint() -> None:
    meta = {"config": {"data": {"crop": [32, 32, 36]}}}
    assert trained_window(meta) == (32, 32, 40)  # rounded up to a multiple of 8
    assert resolve_window(None, meta) == ((32, 32, 40), None)
    assert resolve_window(None, {}) == ((80, 80, 80), None)
    assert resolve_window(48, {}) == ((48, 48, 48), None)
    size, note = resolve_window(80, meta)
    assert size == (80, 80, 80)
    assert note is not None and "differs from the training crop 32x32x40" in note
    assert resolve_window([32, 32, 40], meta) == ((32, 32, 40), None)


def test_automatic_subsets_per_call_follow_the_voxel_budget() -> None:
    assert auto_subset_batch((32, 32, 32), 2) == 5  # measured 1.4x faster on 2 cores
    assert auto_subset_batch((80, 80, 80), 2) == 1  # measured 1.4x slower with 5
    assert auto_subset_batch((8, 8, 8), 1) == 15  # never more than the 15 subsets
    assert WindowOptions((32, 32, 32), batch_size=2).subsets_per_call == 5
    assert WindowOptions((32, 32, 32), batch_size=2, subset_batch=3).subsets_per_call == 3
    with pytest.raises(ValueError, match="subset_batch must be >= 0"):
        WindowOptions((32, 32, 32), subset_batch=-1)
