"""Losses: weighted CE, soft Dice, their sum and the RFNet total."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.fit.losses import (
    downsample_target,
    rfnet_loss,
    segmentation_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)
from train.models.base import ModelOutput

K = 4


def _target(shape: tuple[int, ...] = (2, 8, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, shape, generator=torch.Generator().manual_seed(seed))


def _perfect_logits(target: torch.Tensor, margin: float = 50.0) -> torch.Tensor:
    return margin * F.one_hot(target, K).permute(0, 4, 1, 2, 3).float()


def _random_logits(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loss_fn", [weighted_cross_entropy, soft_dice_loss, segmentation_loss])
def test_perfect_prediction_beats_random(loss_fn) -> None:
    target = _target()
    perfect = loss_fn(_perfect_logits(target), target)
    random = loss_fn(_random_logits((2, K, 8, 8, 8)), target)
    assert perfect < random
    assert perfect.dtype == torch.float32 and perfect.ndim == 0


def test_dice_of_perfect_one_hot_is_zero() -> None:
    target = _target()
    assert soft_dice_loss(_perfect_logits(target), target) < 1e-6


def test_dice_ignores_classes_absent_from_target_and_prediction() -> None:
    target = torch.zeros(1, 8, 8, 8, dtype=torch.int64)
    target[:, 2:4, 2:4, 2:4] = 3
    assert soft_dice_loss(_perfect_logits(target), target) < 1e-6


def test_dice_is_bounded() -> None:
    target = _target()
    value = soft_dice_loss(-_perfect_logits(target), target)
    assert 0.0 <= float(value) <= 1.0
    assert value > 0.9


def test_weighted_cross_entropy_uses_one_minus_class_frequency() -> None:
    target = _target((1, 4, 4, 4))
    logits = _random_logits((1, K, 4, 4, 4))
    counts = torch.bincount(target.flatten(), minlength=K).float()
    weights = 1.0 - counts / target.numel()
    expected = (weights[target] * F.cross_entropy(logits, target, reduction="none")).mean()
    torch.testing.assert_close(weighted_cross_entropy(logits, target), expected)


def test_weighted_cross_entropy_of_single_class_sample_is_zero() -> None:
    target = torch.ones(1, 4, 4, 4, dtype=torch.int64)
    assert weighted_cross_entropy(_random_logits((1, K, 4, 4, 4)), target) == 0.0


def test_gradient_flows_to_logits() -> None:
    target = _target()
    logits = _random_logits((2, K, 8, 8, 8)).requires_grad_()
    segmentation_loss(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_coarse_logits_use_strided_target() -> None:
    target = _target((1, 8, 8, 8))
    coarse = _random_logits((1, K, 4, 4, 4))
    strided = target[:, ::2, ::2, ::2]
    torch.testing.assert_close(
        segmentation_loss(coarse, target), segmentation_loss(coarse, strided)
    )
    assert downsample_target(target, (8, 8, 8)) is target
    assert downsample_target(target, (2, 4, 8)).shape == (1, 2, 4, 8)


def test_bad_inputs_are_rejected() -> None:
    target = _target((1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"cannot downsample target of spatial size \(8, 8, 8\)"):
        segmentation_loss(_random_logits((1, K, 3, 8, 8)), target)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\].*found range \[0, 4\]"):
        segmentation_loss(_random_logits((1, K, 8, 8, 8)), target.clamp(max=3) + (target == 3))
    with pytest.raises(ValueError, match=r"dtype torch\.int64, got torch\.uint8"):
        soft_dice_loss(_random_logits((1, K, 8, 8, 8)), target.to(torch.uint8))
    with pytest.raises(ValueError, match=r"target shape \(2, 8, 8, 8\) does not match"):
        weighted_cross_entropy(_random_logits((1, K, 8, 8, 8)), _target((2, 8, 8, 8)))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K, X, Y, Z\)"):
        weighted_cross_entropy(_random_logits((K, 8, 8, 8)), target)


def test_bf16_logits_give_float32_loss() -> None:
    target = _target()
    logits = _random_logits((2, K, 8, 8, 8))
    low = segmentation_loss(logits.to(torch.bfloat16), target)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, segmentation_loss(logits, target), rtol=2e-2, atol=2e-2)


def _output(target: torch.Tensor, perfect: bool, with_aux: bool = True) -> ModelOutput:
    def logits_at(step: int) -> torch.Tensor:
        t = target[:, ::step, ::step, ::step]
        return _perfect_logits(t) if perfect else _random_logits((t.shape[0], K, *t.shape[1:]))

    aux = torch.stack([logits_at(1)] * 3, dim=1) if with_aux else None
    return ModelOutput(
        logits=logits_at(1),
        aux_logits=aux,
        deep_logits=[logits_at(4), logits_at(2)],
        region_maps=[torch.softmax(logits_at(s), dim=1) for s in (4, 2, 1)],
        features=[],
    )


def test_rfnet_loss_sums_its_parts() -> None:
    target = _target((2, 8, 8, 8))
    loss, parts = rfnet_loss(_output(target, perfect=False), target)
    assert set(parts) == {"fused", "aux", "deep", "region", "total"}
    assert parts["total"] == pytest.approx(
        parts["fused"] + parts["aux"] + parts["deep"] + parts["region"], rel=1e-6
    )
    assert float(loss) == pytest.approx(parts["total"])
    assert all(parts[k] > 0 for k in ("fused", "aux", "deep", "region"))


def test_rfnet_loss_of_perfect_output_is_lower() -> None:
    target = _target((2, 8, 8, 8))
    good, good_parts = rfnet_loss(_output(target, perfect=True), target)
    bad, _ = rfnet_loss(_output(target, perfect=False), target)
    assert good < bad
    assert good_parts["region"] < 0.1


def test_rfnet_loss_without_aux_and_fused_weight() -> None:
    target = _target((1, 8, 8, 8))
    out = _output(target, perfect=False, with_aux=False)
    _, parts = rfnet_loss(out, target)
    assert parts["aux"] == 0.0
    _, unfused = rfnet_loss(out, target, fused_weight=0.0)
    assert unfused["total"] == pytest.approx(parts["total"] - parts["fused"], rel=1e-6)
    bare, bare_parts = rfnet_loss(ModelOutput(logits=out.logits), target)
    assert bare_parts["deep"] == bare_parts["region"] == 0.0
    assert float(bare) == pytest.approx(parts["fused"])


def test_rfnet_loss_modality_mask_restricts_aux_terms() -> None:
    target = _target((2, 8, 8, 8))
    out = _output(target, perfect=False)
    mask = torch.tensor([[True, False, True], [True, False, False]])
    _, parts = rfnet_loss(out, target, modality_mask=mask)
    assert out.aux_logits is not None
    changed = out.aux_logits.clone()
    changed[:, 1] = 100.0
    changed[1, 2] = -100.0
    altered = ModelOutput(
        logits=out.logits,
        aux_logits=changed,
        deep_logits=out.deep_logits,
        region_maps=out.region_maps,
    )
    _, altered_parts = rfnet_loss(altered, target, modality_mask=mask)
    assert altered_parts["aux"] == pytest.approx(parts["aux"], rel=1e-6)
    with pytest.raises(ValueError, match=r"modality_mask shape \(2, 4\) does not match"):
        rfnet_loss(out, target, modality_mask=torch.ones(2, 4, dtype=torch.bool))


def test_class_weighting_none_is_plain_cross_entropy() -> None:
    target, logits = _target(), _random_logits((2, K, 8, 8, 8))
    expected = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, "none"), expected)


def test_class_weighting_sqrt_has_unit_mean_weight_and_favours_rare_classes() -> None:
    target = torch.zeros((1, 8, 8, 8), dtype=torch.int64)
    target[0, :2, :2, :2] = 3  # 8 of 512 voxels
    zero = torch.zeros((1, K, 8, 8, 8))  # uniform prediction: every voxel's NLL is log K
    nll = torch.log(torch.tensor(float(K)))
    torch.testing.assert_close(weighted_cross_entropy(zero, target, "sqrt"), nll)
    logits = zero.clone()
    logits[:, 3] = 2.0  # right on the 8 ET voxels, wrong on the 504 background ones
    plain = weighted_cross_entropy(logits, target, "none")
    assert weighted_cross_entropy(logits, target, "sqrt") < plain


def test_unknown_class_weighting_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"class weighting must be one of \['rfnet', 'none', 'sqrt'\]"
    ):
        weighted_cross_entropy(_random_logits((1, K, 4, 4, 4)), _target((1, 4, 4, 4)), "inverse")


def test_rfnet_loss_passes_the_weighting_to_every_term() -> None:
    target = _target()
    out = _output(target, perfect=False)
    _, rfnet = rfnet_loss(out, target)
    _, plain = rfnet_loss(out, target, class_weights="none")
    for part in ("fused", "aux", "deep", "region"):
        assert plain[part] != pytest.approx(rfnet[part])


def _reference_term(logits: torch.Tensor, target: torch.Tensor, weighting: str) -> torch.Tensor:
    """Weighted CE + soft Dice written out plainly (one-hot by ``F.one_hot``, NLL by gather)."""
    steps = [f // s for f, s in zip(target.shape[1:], logits.shape[2:], strict=True)]
    target = target[:, :: steps[0], :: steps[1], :: steps[2]]
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    counts = F.one_hot(target.flatten(1), K).sum(dim=1).float()
    if weighting == "none":
        ce = nll.mean()
    elif weighting == "rfnet":
        w = 1.0 - counts / target[0].numel()
        ce = (w.gather(1, target.flatten(1)).view_as(target) * nll).mean()
    else:
        freq = counts.sum(0) / target.numel()
        w = torch.where(freq > 0, freq.clamp_min(1e-12).rsqrt(), torch.zeros_like(freq))
        ce = ((w / (w * freq).sum())[target] * nll).mean()
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, K).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    dice = (2.0 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return ce + 1.0 - dice.mean()


def _reference_total(
    out: ModelOutput, target: torch.Tensor, mask: torch.Tensor, w: str
) -> torch.Tensor:
    total = _reference_term(out.logits, target, w)
    assert out.aux_logits is not None
    for m in range(out.aux_logits.shape[1]):
        if mask[:, m].any():
            total = total + _reference_term(out.aux_logits[mask[:, m], m], target[mask[:, m]], w)
    for d in out.deep_logits:
        total = total + _reference_term(d, target, w)
    for r in out.region_maps:
        total = total + _reference_term(torch.log(r.clamp_min(1e-6)), target, w)
    return total


@pytest.mark.parametrize("weighting", ["rfnet", "none", "sqrt"])
def test_rfnet_loss_matches_the_plain_formulas(weighting: str) -> None:
    """The loss shares one-hot classes, counts and weights between its terms; same values."""
    target = _target((3, 8, 8, 8), seed=4)
    target[0] = 2  # a single-class sample
    out = _output(target, perfect=False)
    mask = torch.tensor([[True, False, True], [True, True, False], [True, False, False]])
    leaves = [out.logits, out.aux_logits, *out.deep_logits, *out.region_maps]
    for t in leaves:
        assert t is not None
        t.requires_grad_(True)
    loss, _ = rfnet_loss(out, target, modality_mask=mask, class_weights=weighting)
    grads = torch.autograd.grad(loss, leaves)  # type: ignore[arg-type]
    expected = _reference_total(out, target, mask, weighting)
    expected_grads = torch.autograd.grad(expected, leaves)  # type: ignore[arg-type]
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)
