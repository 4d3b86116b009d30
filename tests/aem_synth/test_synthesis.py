"""Sampling separated from applying: parameters, replay, AEM and mixup samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from aem_synth.errors import CaseError
from aem_synth.mirror import MirrorPlane
from aem_synth.mixup import mixup
from aem_synth.pairing import Pair, plan_pairs
from aem_synth.synthesis import SynthesisInput, SynthesisParams, apply, sample_params

SHAPE = (30, 26, 18)


def _case(case_id: str, seed: int, centre: tuple[int, int, int]) -> SynthesisInput:
    grids = np.meshgrid(*[np.arange(d) for d in SHAPE], indexing="ij")
    r = sum(((g - (d - 1) / 2) / (0.42 * d)) ** 2 for g, d in zip(grids, SHAPE, strict=True))
    brain = np.asarray(r <= 1.0)
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=(4, *SHAPE)), (0, 1.5, 1.5, 1.5))
    dist = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    label = np.select([dist <= 2, dist <= 6, dist <= 16], [3, 1, 2], 0).astype(np.uint8)
    image = image + 2.0 * (label > 0)
    image = np.where(brain, image, 0.0).astype(np.float32)
    return SynthesisInput(case_id, image, label * brain, brain, (1.0, 1.0, 1.0))


A = _case("A", 1, (9, 13, 9))
B = _case("B", 2, (20, 10, 8))
PLANE_B = MirrorPlane(offset=0.5, yaw=2.0, roll=-1.0)


@pytest.mark.parametrize(("method", "diversity"), [("aem", False), ("aem", True), ("mixup", False)])
def test_replay_from_stored_params_is_identical(method: str, diversity: bool) -> None:
    pairs = [Pair("A", "B", i, s) for i, s in enumerate((3, 4, 5, 6))]
    for pair in pairs:
        params = sample_params(pair, PLANE_B, method=method, diversity=diversity)  # type: ignore[arg-type]
        image, label = apply(params, A, B)
        stored = json.dumps(params.to_dict())
        replayed = SynthesisParams.from_dict(json.loads(stored))
        assert replayed == params
        image2, label2 = apply(replayed, A, B)
        assert np.array_equal(image, image2) and np.array_equal(label, label2)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert np.all(image[:, ~(A.brain_mask | B.brain_mask)] == 0)


def test_sample_params_draws_only_from_pair_seed() -> None:
    pair = Pair("A", "B", 0, 123)
    p1 = sample_params(pair, PLANE_B, method="mixup", diversity=True)
    assert p1 == sample_params(pair, PLANE_B, method="mixup", diversity=True)
    assert p1.mixup_lambda is not None and 0.0 <= p1.mixup_lambda <= 1.0
    plain = sample_params(pair, PLANE_B)
    assert plain.mixup_lambda is None and plain.mirror_to_other_side is False
    assert plain.seed == 123 and plain.donor_plane == PLANE_B and plain.mode == "signed"
    flips = {
        sample_params(Pair("A", "B", 0, s), PLANE_B, diversity=True).mirror_to_other_side
        for s in range(20)
    }
    assert flips == {True, False}


def test_aem_sample_carries_donor_tumour_inside_anatomy_brain() -> None:
    params = sample_params(Pair("A", "B", 0, 9), PLANE_B, mode="abs")
    image, label = apply(params, A, B)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    assert np.all(label[B.label == 3] == 3) and np.all(label[A.label == 3] == 3)
    assert np.all(image[:, ~A.brain_mask] == 0)
    untouched = A.brain_mask & (B.label == 0)
    np.testing.assert_array_equal(image[:, untouched], A.image[:, untouched])


def test_apply_rejects_wrong_cases_and_grids() -> None:
    params = sample_params(Pair("A", "B", 0, 1), PLANE_B)
    with pytest.raises(CaseError, match="B: apply: given as anatomy but the parameters name"):
        apply(params, B, A)
    small = SynthesisInput("B", B.image[:, :-1], B.label[:-1], B.brain_mask[:-1])
    with pytest.raises(CaseError, match=r"A: grid .* does not match donor B grid"):
        apply(params, A, small)


def test_params_validation_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        SynthesisParams("A", "B", PLANE_B, mode="squared")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mixup_lambda must be set exactly for method 'mixup'"):
        SynthesisParams("A", "B", PLANE_B, method="mixup")
    data = sample_params(Pair("A", "B", 0, 1), PLANE_B).to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\], missing keys \['seed'\]"):
        SynthesisParams.from_dict({**{k: v for k, v in data.items() if k != "seed"}, "extra": 1})


def test_mixup_blend_and_label_rule() -> None:
    img, lab = mixup(A.image, A.label, B.image, B.label, 0.7)
    union = A.brain_mask | B.brain_mask
    np.testing.assert_allclose(img, 0.7 * A.image + 0.3 * B.image, atol=1e-6)
    assert np.all(img[:, ~union] == 0) and np.all(lab[~union] == 0)
    np.testing.assert_array_equal(lab, A.label)  # A dominates: its labels win
    _, lab_b = mixup(A.image, A.label, B.image, B.label, 0.2)
    np.testing.assert_array_equal(lab_b, B.label)
    _, tie = mixup(A.image, A.label, B.image, B.label, 0.5)
    _, fused = mixup(A.image, A.label, B.image, B.label, 0.9, label_rule="fusion")
    np.testing.assert_array_equal(tie, fused)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got 1\.5"):
        mixup(A.image, A.label, B.image, B.label, 1.5)


def test_same_pairing_for_mixup_and_aem() -> None:
    pairs = plan_pairs(["A", "B", "C"], ["A", "B", "C"], 2, seed=0)
    aem = [sample_params(p, PLANE_B) for p in pairs]
    mix = [sample_params(p, PLANE_B, method="mixup") for p in pairs]
    assert [(p.anatomy, p.donor, p.seed) for p in aem] == [
        (p.anatomy, p.donor, p.seed) for p in mix
    ]
