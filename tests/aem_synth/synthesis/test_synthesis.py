"""Sampling separated from applying: parameters, replay, AEM and mixup samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from aem_synth.errors import CaseError
from aem_synth.synthesis.mirror import MirrorPlane
from aem_synth.synthesis.mixup import mixup
from aem_synth.synthesis.pairing import Pair, plan_pairs
from aem_synth.synthesis.sample import SynthesisInput, SynthesisParams, apply, sample_params

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


# --- The box-restricted path against a straightforward full-grid reference ---------------

GRID = (34, 30, 20)


def _reference_tumour_part(
    image: np.ndarray, label: np.ndarray, brain: np.ndarray, plane: MirrorPlane, mode: str
) -> np.ndarray:
    """T_B on the full grid, written plainly from the documented rule (no boxes)."""
    from aem_synth.synthesis.aem import HEALTHY_FRACTION, MIN_REFERENCE_VOXELS
    from aem_synth.synthesis.mirror import reflect_points

    def sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(
            volume, coords, order=1, mode="grid-constant", cval=0.0, prefilter=False,
            output=np.float32,
        )  # fmt: skip

    tumour = label > 0
    out = np.zeros(image.shape, np.float32)
    if not tumour.any():
        return out
    points = np.argwhere(tumour)
    coords = reflect_points(points, plane, label.shape, (1.0, 1.0, 1.0)).T
    healthy = brain & ~tumour
    unhealthy = sample(healthy.astype(np.float32), coords) < HEALTHY_FRACTION
    mirrored = np.stack([sample(image[c], coords) for c in range(4)])
    if unhealthy.any():
        near = points[unhealthy]
        lo = np.maximum(near.min(axis=0) - 15, 0)
        hi = np.minimum(near.max(axis=0) + 16, label.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if np.count_nonzero(healthy[sl]) >= MIN_REFERENCE_VOXELS:
            ref = np.median(image[(slice(None), *sl)][:, healthy[sl]], axis=1)
        elif healthy.any():
            ref = np.median(image[:, healthy], axis=1)
        else:
            ref = np.zeros(4)
        mirrored[:, unhealthy] = ref.astype(np.float32)[:, None]
    diff = image[:, tumour] - mirrored
    out[:, tumour] = np.abs(diff) if mode == "abs" else diff
    return out


def _reference_apply(
    params: SynthesisParams, a: SynthesisInput, b: SynthesisInput
) -> tuple[np.ndarray, np.ndarray]:
    from aem_synth.synthesis.fusion import FUSION_TABLE
    from aem_synth.synthesis.mirror import reflect

    t_b = _reference_tumour_part(b.image, b.label, b.brain_mask, params.donor_plane, params.mode)
    label_b = b.label
    if params.mirror_to_other_side and (label_b > 0).any():
        idx = np.argwhere(label_b > 0)
        box = tuple((int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))
        t_b = reflect(t_b, params.donor_plane, order=1, support=box)  # type: ignore[arg-type]
        label_b = reflect(label_b, params.donor_plane, order=0, support=box)  # type: ignore[arg-type]
        t_b[:, label_b == 0] = 0.0
    image = a.image + t_b
    image[:, ~a.brain_mask] = 0.0
    label = FUSION_TABLE[a.label, np.where(a.brain_mask, label_b, 0)]
    return image, label


def _grid_case(
    case_id: str, seed: int, centre: tuple[float, float, float], radius: float, scale: float
) -> SynthesisInput:
    """A case on GRID; ``scale`` > ~0.5 makes the brain touch the grid's faces."""
    grids = np.meshgrid(*[np.arange(d) for d in GRID], indexing="ij")
    r = sum(((g - (d - 1) / 2) / (scale * d)) ** 2 for g, d in zip(grids, GRID, strict=True))
    brain = np.asarray(r <= 1.0)
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=(4, *GRID)), (0, 1.5, 1.5, 1.5))
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    label = np.select([dist <= 0.3 * radius, dist <= 0.6 * radius, dist <= radius], [3, 1, 2], 0)
    label = (label * brain).astype(np.uint8)
    image = np.where(brain, image + 2.0 * (label > 0), 0.0).astype(np.float32)
    return SynthesisInput(case_id, image, label, brain, (1.0, 1.0, 1.0))


def _cropped(case: SynthesisInput) -> SynthesisInput:
    idx = np.argwhere(case.brain_mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return SynthesisInput(
        case.case_id,
        case.image[(slice(None), *sl)].copy(),
        case.label[sl].copy(),
        case.brain_mask[sl].copy(),
        case.spacing,
        origin=tuple(int(a) for a in lo),  # type: ignore[arg-type]
        grid=GRID,
    )


DONORS = {
    "lateral": ((24, 12, 9), 5.0, 0.42),
    "midline": ((16.5, 15, 10), 6.0, 0.42),  # its mirror is tumour: healthy-reference rule
    "grid-edge": ((31, 15, 10), 6.0, 0.8),  # brain and tumour touch the grid's x faces
    "none": ((0, 0, 0), 0.0, 0.42),
}
REF_PLANES = [MirrorPlane(), MirrorPlane(1.5, -4.0, 3.0), MirrorPlane(-3.2, 5.5, -2.5)]


@pytest.mark.parametrize("donor_kind", sorted(DONORS))
@pytest.mark.parametrize("plane", REF_PLANES, ids=["flip", "tilted", "shifted"])
def test_box_path_equals_full_grid_reference(donor_kind: str, plane: MirrorPlane) -> None:
    centre, radius, scale = DONORS[donor_kind]
    a = _grid_case("A", 7, (10, 6, 8), 5.0, 0.40)  # A's tumour partly outside its brain
    b = _grid_case("B", 8, centre, radius, scale)
    a_crop, b_crop = _cropped(a), _cropped(b)
    for mode in ("signed", "abs"):
        for mirror in (False, True):
            params = SynthesisParams("A", "B", plane, mode=mode, mirror_to_other_side=mirror)
            ref_image, ref_label = _reference_apply(params, a, b)
            image, label = apply(params, a, b)
            assert image.tobytes() == ref_image.tobytes() and label.tobytes() == ref_label.tobytes()
            sl = tuple(slice(lo, hi) for lo, hi in a_crop.box)
            image, label = apply(params, a_crop, b_crop, box=a_crop.box)
            assert image.tobytes() == ref_image[(slice(None), *sl)].tobytes()
            assert label.tobytes() == ref_label[sl].tobytes()
            image, label = apply(params, a_crop, b_crop)  # whole grid from crops
            assert image.tobytes() == ref_image.tobytes() and label.tobytes() == ref_label.tobytes()


def test_mixup_on_box_equals_box_of_full_mixup() -> None:
    a = _grid_case("A", 7, (10, 6, 8), 5.0, 0.40)
    b = _grid_case("B", 8, (24, 12, 9), 5.0, 0.45)
    params = SynthesisParams("A", "B", PLANE_B, method="mixup", mixup_lambda=0.35)
    full_image, full_label = apply(params, a, b)
    a_crop = _cropped(a)
    image, label = apply(params, a_crop, _cropped(b), box=a_crop.box)
    sl = tuple(slice(lo, hi) for lo, hi in a_crop.box)
    assert image.tobytes() == full_image[(slice(None), *sl)].tobytes()
    assert label.tobytes() == full_label[sl].tobytes()


def test_crop_and_box_errors_name_the_case() -> None:
    with pytest.raises(
        CaseError, match=r"A: crop \(30, 26, 18\) at origin \(1, 0, 0\) does not fit"
    ):
        SynthesisInput("A", A.image, A.label, A.brain_mask, origin=(1, 0, 0), grid=SHAPE)
    with pytest.raises(CaseError, match=r"B: image .* must be \(4, x, y, z\)"):
        SynthesisInput("B", B.image, B.label[:-1], B.brain_mask)
    params = sample_params(Pair("A", "B", 0, 1), PLANE_B)
    with pytest.raises(CaseError, match=r"A: apply: box .* is not a non-empty box of the grid"):
        apply(params, A, B, box=((0, 40), (0, 5), (0, 5)))
