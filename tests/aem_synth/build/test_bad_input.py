"""Every bad input of issue 2 gets a clear error or a reported problem."""

from __future__ import annotations

import gzip
import re
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from aem_synth.build.tasks import CaseFailure, prepare_case, source_key
from aem_synth.cli import main as aem_cli
from aem_synth.dataset.discover import discover, discover_case
from aem_synth.dataset.load import gunzip, load_case, load_volume
from aem_synth.dataset.preprocess import EMPTY_BRAIN, preprocess_case
from aem_synth.errors import CaseError, DatasetError, OutputPathError
from aem_synth.paths import prepare_output_dir
from aem_synth.types import MODALITIES

SHAPE = (6, 5, 4)
TOKENS = ("flair", "t1", "t1ce", "t2")


def image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, size=shape).astype(np.float32)


def write_case(
    root: Path, case_id: str = "Brats18_x", *, tokens: tuple[str, ...] = TOKENS, seg: bool = True
) -> Path:
    case = root / case_id
    case.mkdir(parents=True)
    for i, tok in enumerate(tokens):
        nib.save(nib.Nifti1Image(image(i), np.eye(4)), case / f"{case_id}_{tok}.nii.gz")
    if seg:
        labels = np.zeros(SHAPE, dtype=np.uint8)
        labels[2:4, 2:4, 1:3] = 2
        labels[2, 2, 2] = 4
        nib.save(nib.Nifti1Image(labels, np.eye(4)), case / f"{case_id}_seg.nii.gz")
    return case


def replace(case: Path, token: str, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = case / f"{case.name}_{token}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset root does not exist: .*nowhere"):
        discover(tmp_path / "nowhere")


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f.txt").touch()
    with pytest.raises(DatasetError, match=r"not a folder: .*f.txt"):
        discover(tmp_path / "f.txt")


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"dataset root is empty: {tmp_path}"):
        discover(tmp_path)


def test_root_without_recognisable_case(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "scan.nii.gz").touch()
    with pytest.raises(DatasetError, match=r"no BraTS case found under"):
        discover(tmp_path)


def test_unknown_layout(tmp_path: Path) -> None:
    write_case(tmp_path)
    with pytest.raises(
        DatasetError, match=r"unknown layout 'brats2030'; valid layouts: brats-ped, brats2015"
    ):
        discover(tmp_path, layout="brats2030")


def test_missing_modality_file_is_reported_and_loadable(tmp_path: Path) -> None:
    write_case(tmp_path, tokens=("flair", "t1", "t2"))
    (rec,) = discover(tmp_path)
    assert rec.problems == ("incomplete: missing t1ce (Brats18_x_t1ce.nii.gz)",)
    case = load_case(rec)
    assert case.present == (True, True, False, True)
    assert not case.image[MODALITIES.index("t1ce")].any()


def test_no_modality_at_all(tmp_path: Path) -> None:
    write_case(tmp_path, tokens=())
    (rec,) = discover(tmp_path)
    assert len(rec.problems) == 4
    with pytest.raises(CaseError, match=r"Brats18_x: no modality file in"):
        load_case(rec)


def test_unlabelled_when_label_required(tmp_path: Path) -> None:
    case = write_case(tmp_path, seg=False)
    assert load_case(discover_case(case)).label is None
    with pytest.raises(CaseError, match=r"Brats18_x: unlabelled: no segmentation file"):
        load_case(discover_case(case), require_label=True)


def test_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    replace(case, "t2", image(9, (6, 5, 5)))
    with pytest.raises(
        CaseError,
        match=r"Brats18_x: shape mismatch: Brats18_x_t2.nii.gz has \(6, 5, 5\) "
        r"but Brats18_x_flair.nii.gz has \(6, 5, 4\)",
    ):
        load_case(discover_case(case))


def test_seg_shape_mismatch(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    replace(case, "seg", np.zeros((6, 5, 3), dtype=np.uint8))
    with pytest.raises(CaseError, match=r"shape mismatch: Brats18_x_seg.nii.gz has \(6, 5, 3\)"):
        load_case(discover_case(case))


def test_affine_mismatch_names_both_files_and_size(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    replace(case, "t1ce", image(2), shifted)
    with pytest.raises(
        CaseError,
        match=r"affine mismatch: Brats18_x_t1ce.nii.gz differs from Brats18_x_flair.nii.gz by 0.5 mm",
    ):
        load_case(discover_case(case))


def test_affine_within_tolerance_is_accepted(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    nudged = np.eye(4)
    nudged[1, 3] = 2e-4
    replace(case, "t1", image(1), nudged)
    assert load_case(discover_case(case)).present == (True,) * 4


def test_4d_with_trailing_singleton_is_accepted(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    replace(case, "flair", image(0)[..., None])
    replace(case, "seg", np.zeros((*SHAPE, 1), dtype=np.uint8))
    loaded = load_case(discover_case(case))
    assert loaded.image.shape == (4, *SHAPE)
    np.testing.assert_array_equal(loaded.image[0], image(0))
    assert loaded.geometry.original_shape == SHAPE


def test_true_4d_is_rejected(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    path = replace(case, "flair", image(0, (*SHAPE, 2)))
    with pytest.raises(
        CaseError, match=rf"{path}: expected a 3-D volume, got shape \(6, 5, 4, 2\)"
    ):
        load_case(discover_case(case))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_intensities_name_the_file(tmp_path: Path, bad: float) -> None:
    case = write_case(tmp_path)
    data = image(3)
    data[1, 1, 1] = bad
    path = replace(case, "t2", data)
    with pytest.raises(CaseError, match=rf"Brats18_x: {path}: 1 NaN/Inf intensities"):
        load_case(discover_case(case))
    with pytest.raises(CaseError, match="NaN/Inf"):
        load_volume(path)


def test_all_zero_modality(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    path = replace(case, "t1", np.zeros(SHAPE, dtype=np.int16))
    with pytest.raises(CaseError, match=rf"Brats18_x: {path}: t1 is all zero"):
        load_case(discover_case(case))


@pytest.mark.parametrize("keep", [0.2, 0.7])
def test_truncated_gzip_names_the_file(tmp_path: Path, keep: float) -> None:
    case = write_case(tmp_path)
    # Large enough that a cut at 70% keeps the header and breaks the voxel data.
    big = np.random.default_rng(0).uniform(1, 2, size=(40, 40, 40)).astype(np.float32)
    path = replace(case, "t1ce", big)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    with pytest.raises(CaseError, match=rf"Brats18_x: cannot read {re.escape(str(path))}"):
        load_case(discover_case(case))


def test_garbage_gzip_names_the_file(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    path = case / "Brats18_x_flair.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 this is not a gzip stream" * 4)
    with pytest.raises(CaseError, match=rf"cannot read {re.escape(str(path))}"):
        load_case(discover_case(case))


def test_corrupt_deflate_block_names_the_file(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    big = np.random.default_rng(1).uniform(1, 2, size=(40, 40, 40)).astype(np.float32)
    path = replace(case, "t2", big)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeroed bytes inside the stream
    path.write_bytes(bytes(data))
    with pytest.raises(CaseError, match=rf"Brats18_x: cannot read {re.escape(str(path))}"):
        load_case(discover_case(case))


def test_gunzip_equals_the_standard_library_and_raises_its_errors() -> None:
    payload = np.random.default_rng(2).integers(0, 50, 200_000, dtype=np.int16).tobytes()
    two_members = gzip.compress(payload) + gzip.compress(payload[:1000])
    assert gunzip(two_members) == gzip.decompress(two_members)
    broken = bytearray(gzip.compress(payload))
    broken[len(broken) // 2 : len(broken) // 2 + 64] = bytes(64)
    with pytest.raises((zlib.error, OSError, EOFError)):
        gunzip(bytes(broken))
    with pytest.raises(EOFError):
        gunzip(gzip.compress(payload)[:-100])


def test_gzip_of_non_nifti_names_the_file(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    path = case / "Brats18_x_seg.nii.gz"
    path.write_bytes(gzip.compress(b"hello" * 100))
    with pytest.raises(CaseError, match=rf"cannot read {re.escape(str(path))}"):
        load_case(discover_case(case))


def test_unknown_label_values_are_listed(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    seg = np.zeros(SHAPE, dtype=np.int16)
    seg[0, 0, 0], seg[1, 1, 1], seg[2, 2, 2] = 3, 4, 6
    path = replace(case, "seg", seg)
    with pytest.raises(
        CaseError, match=rf"Brats18_x: {path}: unknown label values \[3, 6\] for layout brats2020"
    ):
        load_case(discover_case(case))


def test_duplicate_case_ids_name_both_folders(tmp_path: Path) -> None:
    write_case(tmp_path / "HGG")
    write_case(tmp_path / "copy")
    with pytest.raises(
        DatasetError,
        match=rf"duplicate case ids: 'Brats18_x' in {tmp_path}/HGG/Brats18_x and {tmp_path}/copy/Brats18_x",
    ):
        discover(tmp_path)


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "afile"
    f.write_text("not a folder")
    return f


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda t: _file(t), r"output folder \(--out\) .*afile is a file, not a folder"),
        (lambda t: _file(t) / "sub", r"lies under .*afile, which is a file"),
    ],
    ids=["out-is-a-file", "out-under-a-file"],
)
@pytest.mark.parametrize("command", ["build", "phantom"])
def test_output_folder_problems_are_clear_errors_before_any_work(
    tmp_path: Path, make_out: Callable[[Path], Path], message: str, command: str
) -> None:
    out = make_out(tmp_path)
    args = {
        "build": ["build", "--in", str(tmp_path), "--out", str(out)],
        "phantom": ["phantom", "--out", str(out), "--cases", "1", "--shape", "48,48,32"],
    }[command]
    result = CliRunner().invoke(aem_cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    expected = message if command == "build" else message.replace(r" \(--out\)", "")
    assert re.search(expected, result.output), result.output


def test_unwritable_output_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root (as in CI) may write anywhere, so the refusal is simulated where it happens.
    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputPathError, match=r"shards is not writable \(Permission denied\)"):
        prepare_output_dir(tmp_path / "shards")


def test_empty_brain_is_a_reported_case_failure(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    for token in TOKENS:  # each modality equals its own (border) background everywhere
        replace(case, token, np.full(SHAPE, 7.0, dtype=np.float32))
    record = discover_case(case)
    failure = prepare_case(record, str(tmp_path / "work"), source_key(record))
    assert isinstance(failure, CaseFailure)
    assert failure.case_id == "Brats18_x"
    assert failure.reason == EMPTY_BRAIN
    with pytest.raises(CaseError, match=f"Brats18_x: {re.escape(EMPTY_BRAIN)}"):
        preprocess_case(load_case(record))
