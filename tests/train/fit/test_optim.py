"""Learning-rate schedule: linear warm-up, then poly decay; the optimiser: fused Adam on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import StageConfig
from train.fit.optim import build_optimizer, load_optimizer_state, poly_lr


def test_without_warmup_it_is_the_paper_poly_schedule() -> None:
    got = [poly_lr(1e-2, s, 10, 0.9) for s in range(10)]
    np.testing.assert_allclose(got, [1e-2 * (1 - s / 10) ** 0.9 for s in range(10)])


def test_warmup_rises_linearly_then_decays_from_the_base_rate() -> None:
    got = [poly_lr(1e-2, s, 10, 0.9, warmup=4) for s in range(10)]
    np.testing.assert_allclose(got[:4], [2.5e-3, 5e-3, 7.5e-3, 1e-2])
    np.testing.assert_allclose(got[4:], [1e-2 * (1 - k / 6) ** 0.9 for k in range(6)])
    assert np.all(np.diff(got[4:]) < 0)  # step 3 ends the warm-up at the base rate


@pytest.mark.parametrize(("step", "warmup"), [(-1, 0), (10, 0), (0, 10), (0, -1)])
def test_out_of_range_arguments_are_rejected(step: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="poly schedule"):
        poly_lr(1e-2, step, 10, 0.9, warmup=warmup)


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((4, 3), (5,), (2, 2))]


def test_cpu_optimizer_is_fused_adam_with_the_same_updates() -> None:
    stage = StageConfig(lr=1e-2, weight_decay=1e-4)
    params, reference = _params(0), _params(0)
    optimizer = build_optimizer(params, stage)
    plain = torch.optim.Adam(reference, lr=1e-2, weight_decay=1e-4, amsgrad=True)
    assert optimizer.param_groups[0]["fused"] and optimizer.param_groups[0]["amsgrad"]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(params, reference, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        optimizer.step()
        plain.step()
    for p, q in zip(params, reference, strict=True):
        # the fused kernel orders a few operations differently: fp32 round-off
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_loading_a_state_keeps_the_optimizer_implementation() -> None:
    stage = StageConfig(lr=1e-2)
    saved_by = torch.optim.Adam(_params(0), lr=1e-2, amsgrad=True, foreach=True)
    for p in saved_by.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    saved_by.step()
    state = saved_by.state_dict()
    optimizer = build_optimizer(_params(0), stage)
    load_optimizer_state(optimizer, state)
    group = optimizer.param_groups[0]
    assert group["fused"] is True and group["foreach"] is None
    loaded = optimizer.state_dict()["state"]
    for k, v in state["state"].items():
        for name, value in v.items():
            torch.testing.assert_close(loaded[k][name], value)
