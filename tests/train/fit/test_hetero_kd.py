"""KD for U-HVED and RobustSeg: the distilled tensors depend on the mask, so the KD term is
zero for equal masks and non-zero, with gradients into the student, when the student has
one modality fewer (the public reference code's term is identically zero)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from train.fit.kd import KDObjective, kd_loss, make_teacher
from train.fit.losses import rfnet_loss
from train.models import build_backbone
from train.models.base import Backbone, ModelOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("uhved", "robustseg")
TEACHER = torch.tensor([[True, True, True, False], [True, False, True, True]])
STUDENT = torch.tensor([[True, False, True, False], [True, False, False, True]])  # one fewer each


def _student(name: str) -> Backbone:
    torch.manual_seed(0)
    return build_backbone(name, num_classes=4, base_channels=4)


def _image() -> torch.Tensor:
    return torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))


def _run(model: nn.Module, mask: torch.Tensor, seed: int = 0) -> ModelOutput:
    return model(
        _image() * mask[:, :, None, None, None], mask, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("name", NAMES)
def test_kd_term_is_zero_for_equal_masks(name: str) -> None:
    student = _student(name)
    teacher = make_teacher(student)
    with torch.no_grad():
        out_t = _run(teacher, TEACHER)
        out_s = _run(student.eval(), TEACHER)
    kd, parts = kd_loss(out_t, out_s)
    assert float(kd) == 0.0 and float(parts["kd_feat"]) == 0.0 and float(parts["kd_pred"]) == 0.0
    # In training mode the features are still identical; only U-HVED's predictions carry the
    # latent sampling noise (its segmentation decodes a posterior sample while training).
    with torch.no_grad():
        out_train = _run(student.train(), TEACHER)
    _, parts = kd_loss(out_t, out_train)
    assert float(parts["kd_feat"]) == 0.0
    assert (float(parts["kd_pred"]) > 0.0) == (name == "uhved")


@pytest.mark.parametrize("name", NAMES)
def test_kd_term_is_positive_with_gradients_when_the_student_has_one_modality_fewer(
    name: str,
) -> None:
    student = _student(name).train()
    teacher = make_teacher(student)
    assert isinstance(teacher, Backbone)
    with torch.no_grad():
        out_t = _run(teacher, TEACHER)
        enc_t = teacher.encode(_image())
    out_s = _run(student, STUDENT)
    # The encoders' outputs do not depend on the mask: distilling them would teach nothing.
    with torch.no_grad():
        enc_s = student.encode(_image())
    assert all(torch.equal(a, b) for a, b in zip(enc_t.levels, enc_s.levels, strict=True))
    kd, parts = kd_loss(out_t, out_s)
    assert float(parts["kd_feat"]) > 0 and float(parts["kd_pred"]) > 0
    kd.backward()
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert any(
        g is not None and float(g.abs().sum()) > 0 for n, g in grads.items() if "encoders.0" in n
    )
    # No gradient reaches an encoder whose modality the student never sees (T1 is absent in both rows).
    t1 = [g for n, g in grads.items() if n.startswith("encoders.1.")]
    assert t1 and all(g is None or float(g.abs().sum()) == 0 for g in t1)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_kd_objective_step_logs_kd_and_backbone_terms(name: str) -> None:
    student = _student(name).train()
    seg_loss = functools.partial(rfnet_loss, aux_weights={"kl": 0.1, "recon": 0.1})
    objective = KDObjective(make_teacher(student), seg_loss, weight=1.0, refresh_every=5)
    g = torch.Generator().manual_seed(3)
    batch = {
        "image": _image(),
        "label": torch.randint(0, 4, (2, 16, 16, 16), generator=torch.Generator().manual_seed(2)),
        "mask": torch.ones(2, 4, dtype=torch.bool),
    }
    loss, parts = objective(student, batch, g)
    assert {"seg", "kd", "kd_feat", "kd_pred", "kl", "recon"} <= set(parts)
    assert float(parts["kd"]) > 0 and bool(torch.isfinite(loss))
    loss.backward()
    # The same generator state replays the same masks and the same training noise.
    again, _ = objective(student, batch, torch.Generator().manual_seed(3))
    assert torch.equal(loss.detach(), again.detach())
