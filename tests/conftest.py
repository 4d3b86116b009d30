"""Shared fixtures: real BraTS samples (skipped when absent) and small phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMALL_SHAPE = (64, 64, 40)


def _samples_dir() -> Path | None:
    env = os.environ.get("AEM_BRATS_SAMPLES")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "brats_samples" for p in here.parents]
    for c in candidates:
        if c.is_dir() and any(c.iterdir()):
            return c
    return None


@pytest.fixture(scope="session")
def brats_samples() -> Path:
    """Folder of the three real BraTS cases (env AEM_BRATS_SAMPLES or ../shared)."""
    found = _samples_dir()
    if found is None:
        pytest.skip("real BraTS samples not found (set AEM_BRATS_SAMPLES or provide ../shared)")
    return found


def _phantom(tmp_path_factory: pytest.TempPathFactory, layout: str, n: int, seed: int) -> Path:
    from aem_synth.phantom.generator import write_phantom_dataset

    out = tmp_path_factory.mktemp(f"phantom_{layout}")
    write_phantom_dataset(out, n_cases=n, layout=layout, seed=seed, shape=SMALL_SHAPE)
    return out


@pytest.fixture(scope="session")
def phantom_2020(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small BraTS-2020-layout phantom cases (64x64x40)."""
    return _phantom(tmp_path_factory, "brats2020", 6, seed=1)


@pytest.fixture(scope="session")
def phantom_2023(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small BraTS-2023-layout phantom cases."""
    return _phantom(tmp_path_factory, "brats2023", 3, seed=2)


@pytest.fixture(scope="session")
def phantom_2015(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small BraTS-2015-layout (.mha) phantom cases."""
    return _phantom(tmp_path_factory, "brats2015", 3, seed=3)


@pytest.fixture(scope="session")
def phantom_store(phantom_2020: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished store built by ``aem-synth build`` from ``phantom_2020`` (AEM x1, shards of
    4): real train/val/test and synthetic shards.  Shared: copy it before changing it."""
    from aem_synth.build import BuildOptions, build

    out = tmp_path_factory.mktemp("phantom_store") / "shards"
    opts = BuildOptions(
        root=phantom_2020, out=out, multiplier=1, workers=1, shard_size=4, progress=False
    )
    build(opts)
    return out
