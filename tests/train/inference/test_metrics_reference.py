"""Dice and HD95 cross-checked against MONAI (an independent, widely used implementation).

Conventions that differ, by design (stated in every evaluation output):

* HD95: ours is the 95th percentile of the *pooled* symmetric surface distances
  (the BraTS / medpy definition); MONAI's ``compute_hausdorff_distance(percentile=95)``
  takes the larger of the two *directed* 95th percentiles.  The surface distances
  themselves are identical; the pooled percentile is never larger than MONAI's.
* Empty masks: MONAI returns NaN (Dice) or inf/NaN (HD95); ours scores both
  empty as Dice 1 / HD95 0 and one empty as Dice 0 / HD95 373.13 mm, as the
  BraTS evaluation does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage

from train.inference.metrics import (
    DICE_BOTH_EMPTY,
    DICE_ONE_EMPTY,
    HD95_BOTH_EMPTY_MM,
    HD95_EMPTY_MM,
    dice,
    hd95,
    surface_distances,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:monai")

SPACINGS = [(1.0, 1.0, 1.0), (0.9, 1.2, 3.0), (2.0, 0.5, 1.5)]


def _blobs(seed: int, shape: tuple[int, int, int] = (28, 24, 20)) -> np.ndarray:
    """A random label-like mask: smoothed noise thresholded, a few blobs of irregular shape."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=2.0)
    return field > np.quantile(field, 0.85)


def _as_monai(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask[None, None].astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_dice_matches_monai(seed: int) -> None:
    pred, gt = _blobs(seed), _blobs(seed + 100)
    ref = float(compute_dice(_as_monai(pred), _as_monai(gt), include_background=True))
    assert dice(pred, gt) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", range(4))
def test_surface_distances_and_hd95_match_monai(seed: int, spacing: tuple[float, ...]) -> None:
    pred, gt = _blobs(seed), _blobs(seed + 50)
    ours_pg, ours_gp = surface_distances(pred, gt, spacing)
    edges_p, edges_g = get_mask_edges(pred, gt, crop=True)
    ref_pg = np.asarray(get_surface_distance(edges_p, edges_g, spacing=spacing))
    ref_gp = np.asarray(get_surface_distance(edges_g, edges_p, spacing=spacing))
    np.testing.assert_allclose(np.sort(ours_pg), np.sort(ref_pg), rtol=1e-6)
    np.testing.assert_allclose(np.sort(ours_gp), np.sort(ref_gp), rtol=1e-6)
    pooled = float(np.percentile(np.concatenate([ref_pg, ref_gp]), 95))
    assert hd95(pred, gt, spacing) == pytest.approx(pooled, rel=1e-6)
    monai_hd95 = float(
        compute_hausdorff_distance(
            _as_monai(pred), _as_monai(gt), include_background=True, percentile=95, spacing=spacing
        )
    )
    assert max(np.percentile(ref_pg, 95), np.percentile(ref_gp, 95)) == pytest.approx(
        monai_hd95, rel=1e-5
    )  # MONAI works in float32
    assert hd95(pred, gt, spacing) <= monai_hd95 * (1 + 1e-5)


def test_empty_mask_conventions_where_monai_has_none() -> None:
    empty, blob = np.zeros((16, 16, 16), dtype=bool), _blobs(1, (16, 16, 16))
    both = compute_dice(_as_monai(empty), _as_monai(empty), include_background=True)
    assert torch.isnan(both).all()  # MONAI: undefined
    assert dice(empty, empty) == DICE_BOTH_EMPTY == 1.0
    assert dice(blob, empty) == dice(empty, blob) == DICE_ONE_EMPTY == 0.0
    assert hd95(empty, empty) == HD95_BOTH_EMPTY_MM == 0.0
    assert hd95(blob, empty, (1.0, 1.0, 3.0)) == hd95(empty, blob) == HD95_EMPTY_MM
