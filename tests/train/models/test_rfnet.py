"""RFNet: shapes, masking invariants, encode/decode reuse, input validation."""

from __future__ import annotations

import itertools

import pytest
import torch

from train.fit.losses import rfnet_loss
from train.models import count_parameters
from train.models.base import EncoderOutput, ModelOutput
from train.models.rfnet import RFNet

SMALL = 4  # base channels for fast tests; the published network uses 16

ALL_MASKS = [list(bits) for bits in itertools.product([False, True], repeat=4) if any(bits)]


def _model(num_classes: int = 4, seed: int = 0, base: int = SMALL) -> RFNet:
    torch.manual_seed(seed)
    return RFNet(num_classes=num_classes, base_channels=base)


def _image(shape: tuple[int, ...] = (1, 4, 32, 32, 32), seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _mask(*rows: list[bool]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _mask_dependent(out: ModelOutput) -> list[torch.Tensor]:
    return [out.logits, *out.deep_logits, *out.region_maps, *out.features]


def test_training_output_shapes() -> None:
    model = _model().train()
    out = model(_image(), _mask([True, False, True, True]))
    assert out.logits.shape == (1, 4, 32, 32, 32)
    assert out.aux_logits is not None and out.aux_logits.shape == (1, 4, 4, 32, 32, 32)
    assert [d.shape[2:] for d in out.deep_logits] == [(4, 4, 4), (8, 8, 8), (16, 16, 16)]
    assert all(d.shape[:2] == (1, 4) for d in out.deep_logits)
    assert [r.shape[2:] for r in out.region_maps] == [(4,) * 3, (8,) * 3, (16,) * 3, (32,) * 3]
    channels = [SMALL * 8, SMALL * 4, SMALL * 2, SMALL]
    assert [f.shape[1] for f in out.features] == channels
    assert [f.shape[2:] for f in out.features] == [r.shape[2:] for r in out.region_maps]
    for maps in out.region_maps:
        torch.testing.assert_close(maps.sum(dim=1), torch.ones_like(maps[:, 0]))
    assert out.intermediate_predictions == [*out.deep_logits, out.logits]
    assert len(out.distillation_targets()) == len(out.features) + len(out.deep_logits) + 1


def test_encoder_output_layout() -> None:
    model = _model().eval()
    with torch.no_grad():
        enc = model.encode(_image())
    assert enc.batch_size == 1
    assert [lvl.shape for lvl in enc.levels] == [
        (1, 4, SMALL * 2**lvl, 32 // 2**lvl, 32 // 2**lvl, 32 // 2**lvl) for lvl in range(4)
    ]
    per_mod = enc.per_modality
    assert len(per_mod) == 4 and all(len(levels) == 4 for levels in per_mod)
    assert torch.equal(per_mod[2][1], enc.levels[1][:, 2])


def test_eval_mode_has_no_aux_logits() -> None:
    model = _model().eval()
    with torch.no_grad():
        out = model(_image(), _mask([True] * 4))
    assert out.aux_logits is None


@pytest.mark.parametrize("train_mode", [False, True])
def test_absent_modality_does_not_influence_output(train_mode: bool) -> None:
    model = _model().train(train_mode)
    mask = _mask([True, False, True, False])
    image = _image()
    perturbed = image.clone()
    perturbed[:, 1] = torch.randn(perturbed[:, 1].shape) * 50.0
    perturbed[:, 3] = 7.0
    with torch.no_grad():
        a, b = model(image, mask), model(perturbed, mask)
    for x, y in zip(_mask_dependent(a), _mask_dependent(b), strict=True):
        assert torch.equal(x, y)
    if train_mode:
        assert a.aux_logits is not None and b.aux_logits is not None
        assert torch.equal(a.aux_logits[:, [0, 2]], b.aux_logits[:, [0, 2]])


def test_present_modality_does_influence_output() -> None:
    model = _model().eval()
    mask = _mask([True, False, True, False])
    image = _image()
    perturbed = image.clone()
    perturbed[:, 2] += 1.0
    with torch.no_grad():
        assert not torch.equal(model(image, mask).logits, model(perturbed, mask).logits)


def test_encode_decode_reuse_equals_forward() -> None:
    model = _model().eval()
    image = _image()
    with torch.no_grad():
        enc = model.encode(image)
        snapshot = [lvl.clone() for lvl in enc.levels]
        for row in ([True, True, False, False], [False, False, False, True], [True] * 4):
            mask = _mask(row)
            reused = model.decode(enc, mask)
            direct = model(image, mask)
            for x, y in zip(_mask_dependent(reused), _mask_dependent(direct), strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    for before, after in zip(snapshot, enc.levels, strict=True):
        assert torch.equal(before, after)


def test_all_fifteen_masks_in_one_batch_match_single_samples() -> None:
    # float64: batch and single-sample convolutions differ only by rounding.
    model = _model().eval().double()
    image = _image((15, 4, 16, 16, 16)).double()
    masks = torch.tensor(ALL_MASKS, dtype=torch.bool)
    with torch.no_grad():
        batch_out = model(image, masks)
        assert batch_out.logits.shape == (15, 4, 16, 16, 16)
        assert torch.isfinite(batch_out.logits).all()
        for i in (0, 6, 14):
            single = model(image[i : i + 1], masks[i : i + 1])
            torch.testing.assert_close(
                single.logits, batch_out.logits[i : i + 1], rtol=0, atol=1e-10
            )


def test_every_mask_gives_a_distinct_prediction() -> None:
    model = _model().eval()
    image = _image((1, 4, 16, 16, 16))
    with torch.no_grad():
        enc = model.encode(image)
        logits = [model.decode(enc, _mask(row)).logits for row in ALL_MASKS]
    assert len(logits) == 15
    for x, y in itertools.combinations(logits, 2):
        assert not torch.equal(x, y)


def test_all_absent_mask_is_rejected() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"no available modality for batch sample\(s\) \[1\]"):
        model(_image((2, 4, 16, 16, 16)), _mask([True] * 4, [False] * 4))


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((1, 4, 30, 32, 32), r"\(30, 32, 32\).*multiple of 8"),
        ((1, 4, 8, 16, 16), r"\(8, 16, 16\).*at least 16"),
        ((1, 3, 32, 32, 32), r"\(B, 4, X, Y, Z\), got \(1, 3, 32, 32, 32\)"),
        ((4, 32, 32, 32), r"got \(4, 32, 32, 32\)"),
    ],
)
def test_bad_image_shape_is_rejected(shape: tuple[int, ...], pattern: str) -> None:
    model = _model()
    with pytest.raises(ValueError, match=pattern):
        model(torch.zeros(shape), _mask([True] * 4))
    with pytest.raises(ValueError, match=pattern):
        model.encode(torch.zeros(shape))


def test_bad_mask_is_rejected() -> None:
    model = _model()
    image = _image((1, 4, 16, 16, 16))
    with pytest.raises(ValueError, match=r"dtype torch.bool, got torch.int64"):
        model(image, torch.ones(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"shape \(1, 4\), got \(1, 3\)"):
        model(image, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating-point"):
        model(image.to(torch.int32), _mask([True] * 4))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of 4, got 6"):
        RFNet(base_channels=6)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        RFNet(num_classes=1, base_channels=4)


def test_full_size_parameter_count() -> None:
    model = RFNet(num_classes=4)
    total = count_parameters(model)
    deep_heads = count_parameters(model.fusion_decoder.deep_heads)
    assert deep_heads == (128 + 64 + 32 + 3) * 4
    # The published RFNet has about 8.98 M parameters at 4 classes.
    assert 8.975e6 < total - deep_heads < 8.985e6
    assert model.init_args == {"num_classes": 4, "num_modalities": 4, "base_channels": 16}


def test_every_parameter_receives_a_gradient() -> None:
    model = _model().train()
    image = _image((2, 4, 16, 16, 16))
    target = torch.randint(0, 4, (2, 16, 16, 16), generator=torch.Generator().manual_seed(3))
    out = model(image, _mask([True, False, True, True], [False, True, False, False]))
    loss, _ = rfnet_loss(out, target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_region_maps_are_trained_only_by_their_own_loss() -> None:
    model = _model().train()
    out = model(_image((1, 4, 16, 16, 16)), _mask([True] * 4))
    out.logits.sum().backward()
    prm_grads = [p.grad for p in model.fusion_decoder.region_maps.parameters()]
    assert all(g is None or not g.any() for g in prm_grads)


def test_same_seed_same_weights_and_outputs() -> None:
    a, b = _model(seed=5).eval(), _model(seed=5).eval()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    image, mask = _image((1, 4, 16, 16, 16)), _mask([True, True, False, True])
    with torch.no_grad():
        assert torch.equal(a(image, mask).logits, b(image, mask).logits)


def test_bf16_autocast_forward_and_loss() -> None:
    model = _model().train()
    target = torch.randint(0, 4, (1, 16, 16, 16), generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_image((1, 4, 16, 16, 16)), _mask([False, True, True, False]))
        loss, parts = rfnet_loss(out, target)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert all(v == v for v in parts.values())  # no NaN


def test_encoder_output_is_a_plain_record() -> None:
    levels = [torch.zeros(2, 4, 3, 2, 2, 2)]
    enc = EncoderOutput(levels=levels)
    assert enc.batch_size == 2
    assert len(enc.per_modality) == 4


def _loss_and_grads(
    model: RFNet, image: torch.Tensor, mask: torch.Tensor, full_encode: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    model.zero_grad(set_to_none=True)
    out = model.decode(model.encode(image), mask) if full_encode else model(image, mask)
    target = torch.randint(0, 4, (2, 16, 16, 16), generator=torch.Generator().manual_seed(9))
    loss, _ = rfnet_loss(out, target, modality_mask=mask)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "rows",
    [
        ([True, False, False, False], [False, False, True, False]),  # T1, T2 absent from both
        ([True, True, False, True], [True, False, False, False]),
        ([True] * 4, [True] * 4),
    ],
)
def test_training_forward_skips_absent_modalities_with_the_same_loss_and_gradients(
    rows: tuple[list[bool], list[bool]],
) -> None:
    model = _model().train()
    mask = _mask(*rows)
    image = _image((2, 4, 16, 16, 16)) * mask[:, :, None, None, None]
    out = model(image, mask)
    assert out.aux_mask is not None and torch.equal(out.aux_mask, mask)
    assert out.aux_logits is not None and out.aux_logits[~mask].eq(0).all()
    loss, grads = _loss_and_grads(model, image, mask, full_encode=False)
    full_loss, full_grads = _loss_and_grads(model, image, mask, full_encode=True)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(full_grads)
    for name, grad in grads.items():
        reference = full_grads[name]
        # Same gradient or none in both, never a missing one: DDP needs every parameter used.
        assert grad is not None and reference is not None, name
        torch.testing.assert_close(grad, reference, rtol=1e-3, atol=1e-5)
    for m in range(4):
        if not mask[:, m].any():  # encoded on an empty batch: a zero gradient, as before
            encoder_grads = [p.grad for p in model.encoders[m].parameters()]
            assert all(g is not None and not g.any() for g in encoder_grads)
