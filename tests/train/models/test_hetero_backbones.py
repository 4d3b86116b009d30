"""U-HVED and RobustSeg: shapes for every subset, mask handling, losses, reuse, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.data.subsets import ALL_SUBSETS
from train.fit.checkpoint import load_model_from_checkpoint, save_checkpoint
from train.fit.distributed import place_model
from train.fit.losses import rfnet_loss
from train.models import BACKBONES, build_backbone, count_parameters
from train.models.base import Backbone, ModelOutput
from train.models.hetero_blocks import kl_to_standard_normal, product_of_gaussians
from train.models.robustseg import RobustSeg
from train.models.uhved import UHVED

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("uhved", "robustseg")
SMALL = 4  # base channels of the fast tests
SIZE = 16
WEIGHTS = {"kl": 0.1, "recon": 0.1}
MASKS = torch.tensor(ALL_SUBSETS, dtype=torch.bool)  # (15, 4), the table's row order


def _model(name: str, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return build_backbone(name, num_classes=4, base_channels=SMALL)


def _image(batch: int, seed: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.randn(batch, 4, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return x if mask is None else x * mask[:, :, None, None, None]


def _label(batch: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (batch, SIZE, SIZE, SIZE), generator=g)


def _outputs(out: ModelOutput) -> list[torch.Tensor]:
    return [out.logits, *out.features, *out.aux_losses.values()]


def test_registered_and_rebuilt_from_init_args() -> None:
    assert BACKBONES["uhved"] is UHVED and BACKBONES["robustseg"] is RobustSeg
    for name in NAMES:
        model = build_backbone(name, num_classes=3, base_channels=SMALL)
        assert model.name == name and model.num_classes == 3
        rebuilt = build_backbone(name, **model.init_args)
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    with pytest.raises(ValueError, match="even number >= 2, got 5"):
        UHVED(base_channels=5)
    with pytest.raises(ValueError, match=r"'uhved' does not accept argument\(s\) \['depth'\]"):
        build_backbone("uhved", depth=3)


def test_parameter_counts_against_the_published_networks() -> None:
    # U-HVED: exactly the trainable variables of the released checkpoint (b = 8, K = 4).
    assert count_parameters(UHVED(num_classes=4, base_channels=8)) == 1_250_552
    # RobustSeg: 37,472,216 published at K = 4; -6,944 affine IN parameters, +4,128 for the
    # Gaussian appearance heads (see the module docstring).
    assert count_parameters(RobustSeg(num_classes=4, base_channels=16)) == 37_472_216 - 2_816


@pytest.mark.parametrize("name", NAMES)
def test_training_shapes_and_losses_for_all_fifteen_subsets(name: str) -> None:
    model = _model(name).train()
    image = _image(15, mask=MASKS)
    out = model(image, MASKS, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (15, 4, SIZE, SIZE, SIZE)
    assert out.aux_logits is None and out.deep_logits == [] and out.region_maps == []
    assert [f.shape for f in out.features] == [
        (15, SMALL * 2**lvl, SIZE // 2**lvl, SIZE // 2**lvl, SIZE // 2**lvl)
        for lvl in reversed(range(4))
    ]
    assert set(out.aux_losses) == {"kl", "recon"}
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in out.aux_losses.values())
    loss, parts = rfnet_loss(out, _label(15), modality_mask=MASKS, aux_weights=WEIGHTS)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert parts["kl"] > 0 and parts["recon"] > 0
    expected = parts["fused"] + 0.1 * parts["kl"] + 0.1 * parts["recon"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # Every parameter takes part (DDP without find_unused_parameters needs it).
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_for_every_subset_match_single_samples(name: str) -> None:
    # float64: batched and single-sample convolutions differ only by rounding.
    model = _model(name).eval().double()
    image = _image(15).double()
    with torch.no_grad():
        batched = model(image, MASKS)
        assert batched.aux_losses == {}
        for i in (0, 4, 10, 14):
            single = model(image[i : i + 1], MASKS[i : i + 1])
            for a, b in zip(_outputs(single), _outputs(batched), strict=True):
                torch.testing.assert_close(a, b[i : i + 1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_absent_modalities_cannot_influence_the_output(name: str, train_mode: bool) -> None:
    model = _model(name).train(train_mode)
    image = _image(15)  # absent channels hold data: only the mask may exclude them
    perturbed = torch.where(MASKS[:, :, None, None, None], image, 50.0 * torch.randn_like(image))
    assert not torch.equal(image, perturbed)
    with torch.no_grad():
        a = model(image, MASKS, generator=torch.Generator().manual_seed(7))
        b = model(perturbed, MASKS, generator=torch.Generator().manual_seed(7))
    assert set(a.aux_losses) == ({"kl", "recon"} if train_mode else set())
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_present_modality_influences_the_output(name: str) -> None:
    model = _model(name).eval()
    mask = torch.tensor([[True, False, True, False]])
    image = _image(1)
    changed = image.clone()
    changed[:, 2] += 1.0
    with torch.no_grad():
        assert not torch.equal(model(image, mask).logits, model(changed, mask).logits)


@pytest.mark.parametrize("name", NAMES)
def test_encoder_reuse_equals_forward_and_batched_subsets(name: str) -> None:
    model = _model(name).eval()
    image = _image(2)
    with torch.no_grad():
        enc = model.encode(image)
        snapshot = [lvl.clone() for lvl in enc.levels]
        assert [lvl.shape[:3] for lvl in enc.levels] == [(2, 4, SMALL * 2**lvl) for lvl in range(4)]
        rows = [MASKS[i].expand(2, 4) for i in (0, 6, 14)]
        batched = model.decode(enc.repeat_batch(len(rows)), torch.cat(rows))
        for i, mask in enumerate(rows):
            reused, direct = model.decode(enc, mask), model(image, mask)
            for x, y in zip(_outputs(reused), _outputs(direct), strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
            torch.testing.assert_close(
                batched.logits[2 * i : 2 * i + 2], reused.logits, rtol=0, atol=1e-5
            )
    for before, after in zip(snapshot, enc.levels, strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("name", NAMES)
def test_training_noise_comes_from_the_generator(name: str) -> None:
    model = _model(name).train()
    mask = torch.tensor([[True, True, False, True]])
    image = _image(1, mask=mask)
    with torch.no_grad():
        torch.manual_seed(123)  # the global RNG must not matter when a generator is given
        a = model(image, mask, generator=torch.Generator().manual_seed(5))
        torch.manual_seed(456)
        b = model(image, mask, generator=torch.Generator().manual_seed(5))
        c = model(image, mask, generator=torch.Generator().manual_seed(6))
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.aux_losses["recon"], c.aux_losses["recon"])
    # The mask-dependent features never depend on the noise.
    for x, y in zip(a.features, c.features, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = _model(name, seed=3).eval()
    path = save_checkpoint(
        tmp_path / "final.pt",
        {
            "stage": "train",
            "backbone": name,
            "backbone_kwargs": model.init_args,
            "num_classes": 4,
            "model": model.state_dict(),
            "config": {},
        },
    )
    loaded, meta = load_model_from_checkpoint(path)
    assert isinstance(loaded, type(model)) and meta["backbone"] == name
    assert not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    image, mask = _image(1), torch.tensor([[False, True, True, False]])
    # Loading places the model (channels-last convolutions on CPU), which changes the
    # kernels and so the fp32 round-off: compare with the model placed the same way.
    place_model(model, "cpu")
    with torch.no_grad():
        assert torch.equal(model(image, mask).logits, loaded(image, mask).logits)


def test_uhved_fuses_the_present_posteriors_with_the_prior() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.randn(2, 4, 3, 2, 2, 2, generator=g),
        torch.randn(2, 4, 3, 2, 2, 2, generator=g),
    )
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    mean, lv = product_of_gaussians(mu, logvar, mask)
    t0, t2 = 1 / (logvar[0, 0].exp() + 1e-7), 1 / (logvar[0, 2].exp() + 1e-7)
    torch.testing.assert_close(mean[0], (mu[0, 0] * t0 + mu[0, 2] * t2) / (1 + t0 + t2))
    torch.testing.assert_close(lv[0], torch.log(1 / (1 + t0 + t2) + 1e-7))
    t3 = 1 / (logvar[1, 3].exp() + 1e-7)
    torch.testing.assert_close(mean[1], mu[1, 3] * t3 / (1 + t3))
    # Absent experts are excluded even when non-finite; the prior caps the variance at 1.
    bad = logvar.clone()
    bad[0, 1] = float("nan")
    assert torch.equal(product_of_gaussians(mu, bad, mask)[0], mean)
    assert bool((lv <= 1e-6).all())
    # KL to N(0, 1) is 0 exactly at the prior and positive elsewhere.
    assert float(kl_to_standard_normal(torch.zeros(3), torch.zeros(3)).abs().max()) == 0.0
    assert bool((kl_to_standard_normal(mean, lv) > 0).all())


def test_uhved_eval_decodes_the_posterior_means() -> None:
    torch.manual_seed(0)
    model = UHVED(num_classes=4, base_channels=SMALL).eval()
    image, mask = _image(1), torch.tensor([[True, True, False, False]])
    with torch.no_grad():
        enc = model.encode(image)
        means = [mu for mu, _ in model.posteriors(enc, mask)]
        assert torch.equal(model.decode(enc, mask).logits, model.seg_decoder(means))
        features = model.decode(enc, mask).features
    # features: cat(mean, log-variance) per level, coarsest first.
    assert torch.equal(features[0][:, : means[-1].shape[1]], means[-1])
