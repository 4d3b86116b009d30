"""Knowledge-distillation post-training (DESIGN §7), as the method describes it.

A frozen teacher (``eval`` mode, no gradients) sees a modality set ``S`` with
``|S| >= 2``, drawn per sample among the 11 such subsets; the student (the
model being trained, initialised from the same weights) sees ``S`` minus one
randomly chosen modality.  The KD loss is the MSE between the teacher's and
the student's *mask-dependent* fused features at every level (``ModelOutput.features``:
RFNet's fused decoder features, U-HVED's fused posterior means and log-variances,
RobustSeg's fused content codes) plus the MSE between their intermediate and final
predictions; the total loss is
``L_post = L_seg + kd_weight * L_kd``.  After every ``k``-th epoch the
teacher is replaced by the current student.

Masks are ``bool`` tensors ``(B, 4)`` in ``MODALITIES`` order (FLAIR, T1,
T1ce, T2); images are ``float32`` ``(B, 4, X, Y, Z)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.data.subsets import ALL_SUBSETS
from train.fit.objectives import SegLoss, forward_kwargs

__all__ = [
    "TEACHER_SUBSETS",
    "KDObjective",
    "draw_teacher_masks",
    "drop_one_modality",
    "kd_loss",
    "make_teacher",
    "refresh_teacher",
    "should_refresh",
    "unwrap",
]

TEACHER_SUBSETS: tuple[tuple[bool, bool, bool, bool], ...] = tuple(
    s for s in ALL_SUBSETS if sum(s) >= 2
)


class _Outputs(Protocol):  # read-only members: ModelOutput is a frozen dataclass
    @property
    def logits(self) -> Tensor: ...

    @property
    def deep_logits(self) -> Sequence[Tensor]: ...

    @property
    def features(self) -> Sequence[Tensor]: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def draw_teacher_masks(present: Tensor, generator: torch.Generator) -> Tensor:
    """Draw one teacher modality set ``S`` per sample, uniformly among the subsets with
    ``|S| >= 2`` that use only modalities the sample has.

    Parameters
    ----------
    present : Tensor
        ``bool`` ``(B, 4)``: modalities each sample has (all ``True`` for complete cases).
    generator : torch.Generator
        CPU generator; one uniform draw per sample.

    Returns
    -------
    Tensor
        ``bool`` ``(B, 4)`` on the device of ``present``.

    Raises
    ------
    ValueError
        A sample has fewer than two modalities.
    """
    have = present.to(device="cpu", dtype=torch.bool)
    table = torch.tensor(TEACHER_SUBSETS, dtype=torch.bool)
    allowed = (table[None] & ~have[:, None]).sum(-1) == 0  # (B, 11): subset within present
    counts = allowed.sum(1)
    if bool((counts == 0).any()):
        bad = [r.tolist() for r in have[counts == 0]]
        raise ValueError(f"KD needs samples with >= 2 modalities; these have fewer: {bad}")
    pick = torch.floor(torch.rand(have.shape[0], generator=generator) * counts).long()
    rank = torch.cumsum(allowed.long(), dim=1) - 1
    choice = (allowed & (rank == pick[:, None])).float().argmax(dim=1)
    return table[choice].to(present.device)


def drop_one_modality(mask: Tensor, generator: torch.Generator) -> Tensor:
    """Remove exactly one present modality per sample, chosen uniformly.

    Parameters
    ----------
    mask : Tensor
        ``bool`` ``(B, 4)`` (or ``(4,)``) with at least two ``True`` per row.
    generator : torch.Generator
        CPU generator; one uniform draw per row.

    Returns
    -------
    Tensor
        A new ``bool`` mask of the same shape, with one ``True`` per row turned off.

    Raises
    ------
    ValueError
        A row has fewer than two modalities (the student would get none).
    """
    rows = mask.reshape(-1, mask.shape[-1]).to(device="cpu", dtype=torch.bool)
    counts = rows.sum(dim=1)
    if bool((counts < 2).any()):
        bad = [r.tolist() for r in rows[counts < 2]]
        raise ValueError(f"KD teacher mask needs >= 2 modalities per sample to drop one, got {bad}")
    u = torch.rand(rows.shape[0], generator=generator)
    pick = torch.floor(u * counts).long()  # index among the present modalities of each row
    rank = torch.cumsum(rows.long(), dim=1) - 1
    drop = rows & (rank == pick[:, None])
    return (rows & ~drop).reshape(mask.shape).to(mask.device)


def _mse_terms(teacher: Sequence[Tensor], student: Sequence[Tensor], what: str) -> Tensor:
    if len(teacher) != len(student):
        raise ValueError(f"KD: teacher has {len(teacher)} {what} but student has {len(student)}")
    total = torch.zeros((), device=student[0].device) if student else torch.zeros(())
    for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
        if t.shape != s.shape:
            raise ValueError(
                f"KD: {what}[{i}] shapes differ: teacher {tuple(t.shape)}, student {tuple(s.shape)}"
            )
        total = total + F.mse_loss(s.float(), t.detach().float())
    return total


def kd_loss(teacher_out: _Outputs, student_out: _Outputs) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE between teacher and student fused features (every level) and predictions.

    ``L_kd = sum_l MSE(F_l^s, F_l^t) + sum_j MSE(P_j^s, P_j^t) + MSE(logits^s, logits^t)``
    where ``F_l`` are the mask-dependent fused decoder features of level
    ``l`` and ``P_j`` the deep-supervision (intermediate) logits.  Teacher
    tensors are detached.

    Returns
    -------
    (Tensor, dict)
        The scalar loss and its parts ``{"kd_feat", "kd_pred"}`` (detached).
    """
    feat = _mse_terms(teacher_out.features, student_out.features, "features")
    preds_t = [*teacher_out.deep_logits, teacher_out.logits]
    preds_s = [*student_out.deep_logits, student_out.logits]
    pred = _mse_terms(preds_t, preds_s, "predictions")
    return feat + pred, {"kd_feat": feat.detach(), "kd_pred": pred.detach()}


def should_refresh(epochs_done: int, every: int) -> bool:
    """True when the teacher is replaced after ``epochs_done`` completed epochs (k, 2k, ...)."""
    if every < 1:
        raise ValueError(f"kd_refresh_every must be >= 1, got {every}")
    return epochs_done > 0 and epochs_done % every == 0


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student: ``eval`` mode, ``requires_grad=False`` everywhere."""
    return _freeze(copy.deepcopy(unwrap(student)))


def refresh_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Copy the student's current weights into the teacher, which stays frozen."""
    with torch.no_grad():
        teacher.load_state_dict(unwrap(student).state_dict())
    _freeze(teacher)


class KDObjective:
    """Posttrain objective: student segmentation loss plus weighted KD loss against the teacher.

    Parameters
    ----------
    teacher : nn.Module
        Frozen copy of the initial student (see :func:`make_teacher`).
    seg_loss : callable
        ``seg_loss(output, target) -> (loss, parts)``.
    weight : float
        ``kd_weight``.
    refresh_every : int
        ``k``: the teacher becomes the student after epochs k, 2k, ...
    """

    def __init__(
        self, teacher: nn.Module, seg_loss: SegLoss, weight: float, refresh_every: int
    ) -> None:
        self.teacher = _freeze(teacher)
        self.seg_loss = seg_loss
        self.weight = weight
        self.refresh_every = refresh_every

    def __call__(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one batch; ``batch['image']`` must hold all four modalities."""
        image, label = batch["image"], batch["label"]
        mask_t = draw_teacher_masks(batch["mask"], generator)
        mask_s = drop_one_modality(mask_t, generator)
        with torch.no_grad():
            out_t = self.teacher(image * mask_t[:, :, None, None, None], mask_t)
        out_s = model(
            image * mask_s[:, :, None, None, None], mask_s, **forward_kwargs(model, generator)
        )
        seg, parts = self.seg_loss(out_s, label, modality_mask=mask_s)
        kd, kd_parts = kd_loss(out_t, out_s)
        seg_parts = {k: v for k, v in parts.items() if k != "total"}
        return seg + self.weight * kd, {
            **seg_parts,
            "seg": seg.detach(),
            "kd": kd.detach(),
            **kd_parts,
        }

    def on_epoch_end(self, epochs_done: int, model: nn.Module) -> bool:
        """Refresh the teacher when ``epochs_done`` is a multiple of ``refresh_every``."""
        if should_refresh(epochs_done, self.refresh_every):
            refresh_teacher(self.teacher, model)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        _freeze(self.teacher)
