"""`train predict`: real patients with missing modalities -> NIfTI on the input grid."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import nibabel.nifti1
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aem_synth.errors import CaseError
from tests.train.helpers import save_tiny_checkpoint
from train.inference.predict import (
    FolderPrediction,
    describe_mask,
    predict,
    predict_case,
    predict_folder,
)
from train.inference.sliding_window import WindowOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REAL_CASE = "Brats18_2013_2_1"
AFFINE = np.array([[-1.0, 0, 0, 31], [0, -1.0, 0, 31], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SMALL_WINDOW = WindowOptions((16, 16, 16), 0.0, batch_size=4)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from train.models import build_backbone

    torch.manual_seed(0)
    return build_backbone("rfnet", num_classes=4, base_channels=4).eval()


@pytest.fixture(scope="module")
def checkpoint(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:

    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    return save_tiny_checkpoint(path, model, {})


def write_case(root: Path, case_id: str, modalities: tuple[str, ...], shape=(32, 28, 24)) -> Path:
    """A small BraTS-2020-layout case: a bright ellipsoid 'brain' per modality, int16 NIfTI."""
    d = root / case_id
    d.mkdir(parents=True)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1)[:, None, None, None] / 2
    r = (((grid - centre) / (centre * 0.8)) ** 2).sum(0)
    for i, m in enumerate(modalities):
        data = np.where(r < 1, 100 + 20 * i + 50 * (r < 0.1), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(data, AFFINE), d / f"{case_id}_{m}.nii.gz")
    return d


def test_describe_mask() -> None:
    assert describe_mask((True, False, True, False)) == "FLAIR ● T1 ○ T1ce ● T2 ○ -> FLAIR+T1ce"


def test_small_case_output_grid_labels_and_brain(model: torch.nn.Module, tmp_path: Path) -> None:
    case = write_case(tmp_path, "BraTS20_Training_001", ("flair", "t1ce"))
    out = tmp_path / "pred" / "seg.nii.gz"
    res = predict_case(model, case, out, window=SMALL_WINDOW, device="cpu")
    ref = nib.nifti1.load(case / "BraTS20_Training_001_flair.nii.gz")
    img = nib.nifti1.load(out)
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    data = np.asarray(img.dataobj)
    assert set(np.unique(data)) <= {0, 1, 2, 4}
    assert not data[np.asarray(ref.dataobj) == 0].any()  # outside the brain: background
    assert res.mask == (True, False, True, False) and res.layout == "brats2020"
    assert sum(res.label_counts.values()) == data.size


def test_real_case_with_t1_and_t2_removed(
    brats_samples: Path, checkpoint: Path, tmp_path: Path
) -> None:
    src = brats_samples / REAL_CASE
    case = tmp_path / REAL_CASE
    case.mkdir()
    for f in src.iterdir():
        if not f.name.endswith(("_t1.nii.gz", "_t2.nii.gz")):
            shutil.copy(f, case / f.name)
    out = tmp_path / "out.nii.gz"
    res = predict(checkpoint, out, case=case, window=80, overlap=0.1, batch_size=1, device="cpu")
    ref = nib.nifti1.load(src / f"{REAL_CASE}_flair.nii.gz")
    img = nib.nifti1.load(out)
    assert img.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(img.affine, ref.affine)
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 4}
    assert res.mask == (True, False, True, False)  # type: ignore[union-attr]


def test_bad_inputs_raise_case_errors(model: torch.nn.Module, tmp_path: Path) -> None:
    empty = tmp_path / "BraTS20_Training_002"
    empty.mkdir()
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), AFFINE), empty / f"{empty.name}_seg.nii.gz"
    )
    with pytest.raises(CaseError, match="BraTS20_Training_002: no modality file"):
        predict_case(model, empty, tmp_path / "a.nii.gz", window=SMALL_WINDOW, device="cpu")

    corrupt = write_case(tmp_path, "BraTS20_Training_003", ("flair", "t2"))
    (corrupt / "BraTS20_Training_003_t2.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CaseError, match=r"BraTS20_Training_003: .*cannot read .*_t2\.nii\.gz"):
        predict_case(model, corrupt, tmp_path / "b.nii.gz", window=SMALL_WINDOW, device="cpu")

    mismatch = write_case(tmp_path, "BraTS20_Training_004", ("flair",))
    other = write_case(tmp_path / "x", "BraTS20_Training_004", ("t1",), shape=(30, 28, 24))
    shutil.move(other / "BraTS20_Training_004_t1.nii.gz", mismatch)
    with pytest.raises(
        CaseError, match=r"BraTS20_Training_004: shape mismatch: .*_t1\.nii\.gz has \(30, 28, 24\)"
    ):
        predict_case(model, mismatch, tmp_path / "c.nii.gz", window=SMALL_WINDOW, device="cpu")


def test_folder_skips_bad_case(model: torch.nn.Module, tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_case(root, "BraTS20_Training_010", ("t2",))
    write_case(root, "BraTS20_Training_011", ("flair", "t1", "t1ce", "t2"))
    bad = write_case(root, "BraTS20_Training_012", ("flair",))
    (bad / "BraTS20_Training_012_flair.nii.gz").write_bytes(b"garbage")
    outcome = predict_folder(
        model, root, tmp_path / "out", window=SMALL_WINDOW, device="cpu", progress=False
    )
    assert [r.case_id for r in outcome.results] == ["BraTS20_Training_010", "BraTS20_Training_011"]
    assert [f.case for f in outcome.failures] == ["BraTS20_Training_012"]
    assert (tmp_path / "out" / "BraTS20_Training_010_seg.nii.gz").is_file()
    assert outcome.results[0].mask == (False, False, False, True)


def test_cli_predict_case_and_folder(checkpoint: Path, tmp_path: Path) -> None:
    from train.cli import main

    case = write_case(tmp_path / "in", "BraTS20_Training_020", ("flair", "t1ce"))
    out = tmp_path / "seg.nii.gz"
    args = ["--window", "16", "--overlap", "0", "--device", "cpu"]
    ok = CliRunner().invoke(
        main,
        ["predict", "--checkpoint", str(checkpoint), "--case", str(case), "--out", str(out), *args],
    )
    assert ok.exit_code == 0, ok.output
    assert "FLAIR ● T1 ○ T1ce ● T2 ○ -> FLAIR+T1ce" in ok.output and out.is_file()

    folder = CliRunner().invoke(
        main,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--in",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "outdir"),
            *args,
        ],
    )
    assert folder.exit_code == 0, folder.output
    assert "1 case(s) predicted, 0 skipped" in folder.output

    missing = CliRunner().invoke(
        main,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--case",
            str(tmp_path / "nope"),
            "--out",
            str(out),
            *args,
        ],
    )
    assert missing.exit_code != 0 and "case folder does not exist" in missing.output
    both = CliRunner().invoke(main, ["predict", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert both.exit_code != 0 and "exactly one of" in both.output


def test_predict_returns_folder_outcome(checkpoint: Path, tmp_path: Path) -> None:
    write_case(tmp_path / "in", "BraTS20_Training_030", ("t1",))
    outcome = predict(
        checkpoint, tmp_path / "o", root=tmp_path / "in", window=16, device="cpu", progress=False
    )
    assert isinstance(outcome, FolderPrediction) and len(outcome.results) == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("a_folder", r"is a folder; give a file name ending in \.nii\.gz"),
        ("seg.txt", r"the name must end in one of \.nii\.gz, \.nii, \.mha"),
        ("afile/seg.nii.gz", r"lies under .*afile, which is a file"),
    ],
)
def test_bad_output_paths_fail_before_inference(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, message: str
) -> None:
    import train.inference.loading

    case = write_case(tmp_path / "in", "BraTS20_Training_031", ("flair",))
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "afile").write_text("x")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output path was checked")

    from train.cli import main

    monkeypatch.setattr(train.inference.loading, "load_for_inference", no_model)
    args = ["predict", "--checkpoint", str(checkpoint), "--case", str(case)]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / target)])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output) and "Traceback" not in result.output


@pytest.mark.parametrize("seg", ["garbage", "unknown-labels", "wrong-shape"])
def test_prediction_ignores_the_segmentation_file(
    model: torch.nn.Module, tmp_path: Path, seg: str
) -> None:
    case = write_case(tmp_path / "in", "BraTS20_Training_032", ("flair", "t2"))
    target = case / "BraTS20_Training_032_seg.nii.gz"
    if seg == "garbage":
        target.write_bytes(b"not a nifti file")
    else:
        shape = (32, 28, 24) if seg == "unknown-labels" else (8, 8, 8)
        nib.save(nib.Nifti1Image(np.full(shape, 7, dtype=np.uint8), AFFINE), target)
    res = predict_case(
        model, case, tmp_path / "o.nii.gz", window=WindowOptions((16, 16, 16)), device="cpu"
    )
    assert res.out_path.is_file() and set(res.label_counts) <= {0, 1, 2, 4}


def test_zscored_case_with_negative_background(model: torch.nn.Module, tmp_path: Path) -> None:
    """Brain voxels below 0 in every modality are predicted as brain, and the background
    found is reported."""
    case = write_case(tmp_path, "BraTS20_Training_002", ("flair", "t2"))
    for f in case.iterdir():
        img = nib.nifti1.load(f)
        data = np.asarray(img.dataobj).astype(np.float32)
        # The outer shell of the brain is below zero in every modality, as after a z-score.
        nib.save(nib.Nifti1Image(np.where(data > 0, data - 110, -3.6), AFFINE), f)
    out = tmp_path / "seg.nii.gz"
    res = predict_case(model, case, out, window=SMALL_WINDOW, device="cpu")
    assert res.background == pytest.approx({"flair": -3.6, "t2": -3.6})
    ref = np.asarray(nib.nifti1.load(case / "BraTS20_Training_002_flair.nii.gz").dataobj)
    data = np.asarray(nib.nifti1.load(out).dataobj)
    assert (ref[ref != np.float32(-3.6)] < 0).any()
    assert not data[ref == np.float32(-3.6)].any()
    # The untrained model labels some voxels of the negative shell: they were not masked away.
    shell = (ref < 0) & (ref != np.float32(-3.6))
    assert data[shell].any()


@pytest.mark.parametrize("layout", ["msd", "nnunet", "brats-ped"])
def test_predict_writes_back_in_each_layouts_conventions(
    model: torch.nn.Module, tmp_path: Path, layout: str
) -> None:
    """4-D MSD inputs give 3-D label maps; names and label values follow the layout."""
    from aem_synth.phantom.generator import write_phantom_dataset
    from tests.aem_synth.dataset.layout_writers import (
        PED_VALUES,
        write_brats2023_family,
        write_msd,
        write_nnunet,
    )

    src = tmp_path / "src"
    write_phantom_dataset(src, n_cases=2, layout="brats2020", seed=4, shape=(40, 36, 32))
    root = tmp_path / "data"
    if layout == "msd":
        write_msd(src, root / "Task01_BrainTumour")
        allowed, suffix = {0, 1, 2, 3}, ".nii.gz"
    elif layout == "nnunet":
        write_nnunet(src, root / "Dataset010_Brain")
        allowed, suffix = {0, 1, 2, 3}, ".nii.gz"
    else:
        write_brats2023_family(src, root, "PED", PED_VALUES)
        allowed, suffix = {0, 1, 2, 4}, "_seg.nii.gz"
    out = tmp_path / "pred"
    outcome = predict_folder(model, root, out, window=SMALL_WINDOW, device="cpu", progress=False)
    assert not outcome.failures and len(outcome.results) == 2
    for res in outcome.results:
        assert res.layout == layout and res.out_path.name == f"{res.case_id}{suffix}"
        img = nib.nifti1.load(res.out_path)
        assert img.shape == (40, 36, 32)
        assert set(np.unique(np.asarray(img.dataobj))) <= allowed
        source = nib.nifti1.load(next(src.glob("*/*_flair.nii.gz")))  # same grid for all
        assert np.allclose(img.affine, source.affine)
