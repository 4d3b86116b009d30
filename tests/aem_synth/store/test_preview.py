"""render_preview / `aem-synth preview`: the Fig.-4-style montage of a synthetic sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aem_synth.build import BuildOptions, build
from aem_synth.cli import main
from aem_synth.errors import ShardError
from aem_synth.store.preview import load_preview, render_preview
from aem_synth.store.shards import list_samples


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 small phantom cases (48x48x32, BraTS 2020 layout)."""
    from aem_synth.phantom.generator import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_cases=5, layout="brats2020", seed=14, shape=(48, 48, 32))
    return root


@pytest.fixture(scope="module")
def store(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preview") / "shards"
    build(BuildOptions(root=phantoms, out=out, multiplier=1, workers=1, progress=False))
    return out


def test_preview_arrays_are_consistent(store: Path) -> None:
    sid = list_samples(store, "synthetic")[0].sample_id
    d = load_preview(store, sid)
    assert d.a.shape == d.b.shape == d.tumour.shape == d.fused.shape
    assert d.fused.shape[1:] == d.label.shape
    # The stored sample is A plus the replayed tumour part, up to float16 rounding.
    np.testing.assert_allclose(d.a + d.tumour, d.fused, atol=0.02)
    assert np.abs(d.tumour[:, :, :, d.z]).max() > 0
    assert d.anatomy != d.donor


def test_render_writes_png(store: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    sid = list_samples(store, "synthetic")[0].sample_id
    out = render_preview(store, sid, tmp_path / "fig.png")
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05


def test_cli_preview(store: Path, tmp_path: Path) -> None:
    sid = list_samples(store, "synthetic")[-1].sample_id
    runner = CliRunner()
    result = runner.invoke(
        main, ["preview", str(store), "--sample", sid, "--out", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 10_000
    result = runner.invoke(
        main, ["preview", str(store), "--sample", "nope", "--out", str(tmp_path / "q.png")]
    )
    assert result.exit_code == 2 and "no synthetic sample 'nope'" in result.output


def test_unknown_sample_raises(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="no synthetic sample 'aem-999999'"):
        render_preview(store, "aem-999999", tmp_path / "x.png")
