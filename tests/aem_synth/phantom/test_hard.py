"""The hard phantom variant: deterministic, different from simple, and varied where it matters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from aem_synth.phantom.anatomy import sample_phantom_params
from aem_synth.phantom.generator import make_phantom_case

SHAPE = (64, 64, 48)


@pytest.fixture(scope="module")
def hard_cases() -> list:
    return [make_phantom_case(seed, SHAPE, variant="hard") for seed in range(12)]


def test_same_seed_same_bytes_and_simple_unchanged() -> None:
    a = make_phantom_case(5, SHAPE, variant="hard")
    b = make_phantom_case(5, SHAPE, variant="hard")
    simple = make_phantom_case(5, SHAPE)
    for m in a.images:
        assert a.images[m].tobytes() == b.images[m].tobytes()
        assert not np.array_equal(a.images[m], simple.images[m])
    # The simple draw is untouched by the variant: same plane, noise seed and first tumour draw.
    rng = np.random.default_rng
    s, h = (
        sample_phantom_params(rng(5), SHAPE),
        sample_phantom_params(rng(5), SHAPE, variant="hard"),
    )
    assert s.plane == h.plane and s.noise_seed == h.noise_seed and s.hard is None
    assert h.variant == "hard" and h.hard is not None
    with pytest.raises(ValueError, match="variant must be one of"):
        make_phantom_case(5, SHAPE, variant="harder")


def test_tumour_variety(hard_cases: list) -> None:
    no_et = [c for c in hard_cases if not (c.label == 3).any()]
    assert no_et and len(no_et) < len(hard_cases)
    volumes = [int((c.label > 0).sum()) for c in hard_cases]
    assert max(volumes) > 4 * min(volumes)  # small to large
    multifocal = [c for c in hard_cases if c.params["hard"]["multifocal"]]
    assert multifocal
    for c in multifocal:
        _, n = ndimage.label(c.label > 0)
        assert n >= 2 or len(c.tumour["satellites"]) == 1


def test_sites_and_intensity_variation(hard_cases: list) -> None:
    sites = {c.params["hard"]["site"] for c in hard_cases}
    assert len(sites) >= 2
    # The oedema / white-matter FLAIR ratio varies across cases (no global threshold).
    ratios = []
    for c in hard_cases:
        flair = c.images["flair"]
        ed, wm = c.label == 2, c.tissue == 3
        if ed.any():
            ratios.append(float(np.median(flair[ed]) / np.median(flair[wm])))
    assert max(ratios) / min(ratios) > 1.3


def test_mass_effect_breaks_the_mirror_symmetry() -> None:
    """Healthy tissue next to a large tumour is displaced: the mirror image of the healthy
    hemisphere no longer matches the tumour hemisphere's healthy tissue."""
    from aem_synth.phantom.render import _mass_effect

    params = sample_phantom_params(np.random.default_rng(3), SHAPE, variant="hard")
    q = np.random.default_rng(0).normal(0, 20, (3, 500)).astype(np.float32)
    moved = _mass_effect(q, params)
    assert np.abs(moved - q).max() > 0.5
    simple = sample_phantom_params(np.random.default_rng(3), SHAPE)
    assert _mass_effect(q, simple) is q
