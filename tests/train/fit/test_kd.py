"""KD post-training pieces: masks, loss, teacher freezing and refresh schedule."""

from __future__ import annotations

import pytest
import torch

from train.data.subsets import ALL_SUBSETS
from train.fit.kd import (
    TEACHER_SUBSETS,
    KDObjective,
    draw_teacher_masks,
    drop_one_modality,
    kd_loss,
    make_teacher,
    refresh_teacher,
    should_refresh,
)
from train.fit.losses import rfnet_loss
from train.models import build_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone("rfnet", num_classes=4, base_channels=4)


def _batch(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 4, 16, 16, 16, generator=g),
        "label": torch.randint(0, 4, (b, 16, 16, 16), generator=g),
        "mask": torch.ones(b, 4, dtype=torch.bool),
    }


def test_teacher_subsets_are_the_eleven_with_two_or_more_modalities() -> None:
    assert len(TEACHER_SUBSETS) == 11
    assert set(TEACHER_SUBSETS) == {s for s in ALL_SUBSETS if sum(s) >= 2}


def test_student_mask_is_teacher_mask_minus_exactly_one_modality() -> None:
    g = torch.Generator().manual_seed(1)
    teacher = draw_teacher_masks(torch.ones(4000, 4, dtype=torch.bool), g)
    student = drop_one_modality(teacher, g)
    assert bool((teacher.sum(1) >= 2).all())
    assert bool((student & ~teacher).sum() == 0)  # student is a subset of the teacher
    assert torch.equal(teacher.sum(1) - student.sum(1), torch.ones(4000, dtype=torch.long))
    # every teacher subset and every possible dropped modality occurs
    assert {tuple(r) for r in teacher.tolist()} == set(TEACHER_SUBSETS)
    dropped = (teacher & ~student).float().argmax(1)
    full = teacher.sum(1) == 4
    assert set(dropped[full].tolist()) == {0, 1, 2, 3}


def test_teacher_masks_stay_within_present_modalities() -> None:
    g = torch.Generator().manual_seed(2)
    present = torch.tensor([[True, False, True, True]] * 500)
    masks = draw_teacher_masks(present, g)
    assert bool((masks & ~present).sum() == 0) and bool((masks.sum(1) >= 2).all())
    assert len({tuple(r) for r in masks.tolist()}) == 4  # the 4 subsets of {F, T1ce, T2} with >= 2
    with pytest.raises(ValueError, match=r">= 2 modalities.*\[False, False, True, False\]"):
        draw_teacher_masks(torch.tensor([[False, False, True, False]]), g)


def test_drop_one_rejects_single_modality_rows_and_is_seeded() -> None:
    with pytest.raises(ValueError, match=r"needs >= 2 modalities.*\[True, False, False, False\]"):
        drop_one_modality(torch.tensor([[True, False, False, False]]), torch.Generator())
    mask = torch.ones(64, 4, dtype=torch.bool)
    a = drop_one_modality(mask, torch.Generator().manual_seed(5))
    b = drop_one_modality(mask, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("epochs_done", "k", "expected"),
    [(0, 5, False), (4, 5, False), (5, 5, True), (7, 5, False), (10, 5, True), (3, 1, True)],
)
def test_refresh_happens_after_epochs_k_2k(epochs_done: int, k: int, expected: bool) -> None:
    assert should_refresh(epochs_done, k) is expected


def test_refresh_schedule_over_a_run_and_bad_k() -> None:
    assert [e for e in range(1, 21) if should_refresh(e, 5)] == [5, 10, 15, 20]
    with pytest.raises(ValueError, match=r"kd_refresh_every must be >= 1, got 0"):
        should_refresh(3, 0)


def test_kd_loss_is_zero_for_identical_inputs_and_positive_when_masks_differ() -> None:
    model = _model().eval()
    b = _batch()
    full = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        out_a = model(b["image"], full)
        out_b = model(b["image"], full)
        fewer = torch.tensor([[True, True, True, False], [False, True, True, True]])
        out_c = model(b["image"] * fewer[:, :, None, None, None], fewer)
    zero, parts = kd_loss(out_a, out_b)
    assert float(zero) == 0.0 and set(parts) == {"kd_feat", "kd_pred"}
    diff, parts = kd_loss(out_a, out_c)
    assert float(parts["kd_feat"]) > 0 and float(parts["kd_pred"]) > 0
    assert float(diff) == pytest.approx(float(parts["kd_feat"] + parts["kd_pred"]))


def test_kd_loss_rejects_mismatched_outputs() -> None:
    model = _model().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool))
        small = model(torch.randn(1, 4, 24, 24, 24), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"features\[0\] shapes differ"):
        kd_loss(out, small)


def test_teacher_is_frozen_and_unchanged_by_student_training_until_refresh() -> None:
    student = _model()
    objective = KDObjective(make_teacher(student), rfnet_loss, weight=1.0, refresh_every=2)
    teacher = objective.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        loss, parts = objective(student.train(), _batch(seed=step), g)
        assert {"seg", "kd", "kd_feat", "kd_pred"} <= set(parts) and float(parts["kd"]) > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not objective.on_epoch_end(1, student)  # k = 2: no refresh after epoch 1
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert objective.on_epoch_end(2, student)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_refresh_teacher_copies_weights_and_keeps_it_frozen() -> None:
    student, other = _model(0), _model(1)
    teacher = make_teacher(other)
    refresh_teacher(teacher, student)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(teacher.parameters()), next(student.parameters()))
