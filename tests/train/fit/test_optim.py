"""Learning-rate schedule: linear warm-up, then poly decay."""

from __future__ import annotations

import numpy as np
import pytest

from train.fit.optim import poly_lr


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
