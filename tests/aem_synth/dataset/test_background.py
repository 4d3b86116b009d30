"""Background detection: z-scored inputs with a non-zero outside keep their whole brain."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nibabel.nifti1
import numpy as np
import pytest

from aem_synth.dataset.background import describe_background, detect_background
from aem_synth.dataset.discover import discover, discover_case
from aem_synth.dataset.inspection import format_table, inspect_case
from aem_synth.dataset.load import load_case
from aem_synth.dataset.preprocess import brain_mask, preprocess_case
from aem_synth.types import MODALITIES

BACKGROUND = -3.6


def zscored_copy(
    src: Path, dst: Path, background: float = BACKGROUND, keep: tuple[str, ...] = MODALITIES
) -> Path:
    """The case ``src`` z-scored inside its brain (float32), outside set to ``background``;
    only the modalities ``keep`` (and the segmentation) are copied."""
    dst.mkdir(parents=True)
    names = (*(f"_{m}.nii.gz" for m in keep), "_seg.nii.gz")
    for f in sorted(p for p in src.glob("*.nii.gz") if p.name.endswith(names)):
        img = nib.nifti1.load(f)
        data = np.asarray(img.dataobj)
        if "_seg" not in f.name:
            brain = data > 0
            values = data[brain].astype(np.float64)
            out = np.full(data.shape, background, dtype=np.float32)
            out[brain] = (values - values.mean()) / values.std()
            data = out
        nib.save(nib.Nifti1Image(data, img.affine), dst / f.name)
    return dst


def test_detect_background_constant_zero_and_noisy() -> None:
    rng = np.random.default_rng(0)
    vol = np.full((10, 9, 8), BACKGROUND, dtype=np.float32)
    vol[3:7, 3:6, 2:6] = rng.normal(size=(4, 3, 4))
    assert detect_background(vol) == pytest.approx(BACKGROUND)
    assert detect_background(np.where(vol == BACKGROUND, 0, vol)) == 0.0
    noisy = rng.normal(size=(10, 9, 8)).astype(np.float32)
    assert detect_background(noisy) is None
    with pytest.raises(ValueError, match="3-D"):
        detect_background(noisy[0])


def test_describe_background() -> None:
    assert describe_background({"flair": 0.0, "t1": 0.0}) == "0"
    assert describe_background({"flair": -3.6, "t1": None}) == "flair -3.6, t1 none"


def test_zscored_case_keeps_its_whole_brain(phantom_2020: Path, tmp_path: Path) -> None:
    record = discover(phantom_2020)[0]
    original = load_case(record)
    present = (True, False, True, False)
    truth = brain_mask(original.image, present)
    keep = ("flair", "t1ce")
    copy = zscored_copy(Path(record.directory), tmp_path / record.directory.name, keep=keep)
    loaded = load_case(discover_case(copy))
    assert loaded.present == present
    assert loaded.background == pytest.approx((BACKGROUND, None, BACKGROUND, None))
    # "Any present modality > 0" would lose these brain voxels.
    all_negative = (loaded.image[[0, 2]] < 0).all(axis=0) & truth
    assert all_negative.sum() > 0.01 * truth.sum()
    np.testing.assert_array_equal(brain_mask(loaded.image, loaded.present), truth)
    pre = preprocess_case(loaded)
    np.testing.assert_array_equal(pre.brain_mask, truth[tuple(slice(*b) for b in pre.crop_box)])
    assert (pre.image[:, ~pre.brain_mask] == 0).all()
    for m in keep:  # statistics over the true brain: standardised values
        assert pre.stats[m]["mean"] == pytest.approx(0.0, abs=1e-5)
        assert pre.stats[m]["std"] == pytest.approx(1.0, abs=1e-4)


def test_inspect_reports_the_background(phantom_2020: Path, tmp_path: Path) -> None:
    record = discover(phantom_2020)[0]
    plain = inspect_case(record)
    assert plain.background == {m: 0.0 for m in MODALITIES}
    copy = zscored_copy(Path(record.directory), tmp_path / record.directory.name)
    row = inspect_case(discover_case(copy))
    assert row.background == pytest.approx({m: BACKGROUND for m in MODALITIES})
    assert row.to_dict()["background"]["flair"] == pytest.approx(BACKGROUND)
    table = format_table([plain, row])
    assert "background" in table.splitlines()[0]
    assert "flair -3.6, t1 -3.6, t1ce -3.6, t2 -3.6" in table
