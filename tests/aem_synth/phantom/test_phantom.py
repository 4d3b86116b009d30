"""Phantom generator: determinism, layouts on disk, orientation, contrast and symmetry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import nibabel.nifti1
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from scipy import ndimage

from aem_synth.cli import main
from aem_synth.phantom.anatomy import PLANE_RANGES, TISSUES, plane_frame
from aem_synth.phantom.generator import (
    PLANE_CONVENTION,
    PhantomCase,
    brats_affine,
    make_phantom_case,
    parse_shape,
    write_phantom_dataset,
)
from aem_synth.types import MODALITIES

SHAPE = (64, 64, 40)
TINY = (48, 48, 32)
T = {name: code for code, name in enumerate(TISSUES)}
DISK_LABELS = {"brats2020": {0, 1, 2, 4}, "brats2023": {0, 1, 2, 3}, "brats2015": {0, 1, 2, 3, 4}}


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return make_phantom_case(5, SHAPE)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny cases per layout."""
    roots = {}
    for layout in DISK_LABELS:
        root = tmp_path_factory.mktemp(layout)
        write_phantom_dataset(root, n_cases=2, layout=layout, seed=11, shape=TINY)
        roots[layout] = root
    return roots


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mirror(volume: np.ndarray, plane: dict[str, float], order: int = 0) -> np.ndarray:
    """Reflect a canonical (X, Y, Z) volume across ``plane`` (1 mm voxels)."""
    centre, rot = plane_frame(plane, volume.shape)
    n = rot[:, 0]
    grid = np.indices(volume.shape, dtype=np.float64).reshape(3, -1)
    src = grid - 2.0 * (n @ (grid - centre[:, None])) * n[:, None]
    out = ndimage.map_coordinates(volume, src, order=order, mode="constant", cval=0)
    return out.reshape(volume.shape)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


# ---------------------------------------------------------------- parse_shape


def test_parse_shape_accepts_three_integers() -> None:
    assert parse_shape("240,240,155") == (240, 240, 155)
    assert parse_shape(" 48, 48 ,32") == (48, 48, 32)


@pytest.mark.parametrize("text", ["64,64", "64,64,40,1", "a,b,c", "64,64,-40", "64.5,64,40", ""])
def test_parse_shape_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="shape must be three comma-separated integers"):
        parse_shape(text)


def test_parse_shape_rejects_too_small_axis() -> None:
    with pytest.raises(ValueError, match=r"each >= 32 voxels, got \(16, 64, 64\)"):
        parse_shape("16,64,64")


# ---------------------------------------------------------------- arrays


def test_case_arrays_have_documented_types(case: PhantomCase) -> None:
    assert set(case.images) == set(MODALITIES)
    for image in case.images.values():
        assert image.shape == SHAPE and image.dtype == np.float32
        assert np.array_equal(image, np.rint(image))
        assert 0 <= image.min() and image.max() <= 3000
    assert case.label.dtype == np.uint8 and case.label.shape == SHAPE
    assert set(np.unique(case.label).tolist()) == {0, 1, 2, 3}
    assert case.brain_mask.dtype == np.bool_


def test_background_is_zero_and_brain_positive(case: PhantomCase) -> None:
    for name, image in case.images.items():
        assert np.all(image[~case.brain_mask] == 0), name
        assert np.all(image[case.brain_mask] > 0), name
    assert np.all(case.brain_mask[case.label > 0])
    inner = case.brain_mask[1:-1, 1:-1, 1:-1].sum()
    assert inner == case.brain_mask.sum(), "brain touches the volume border"
    fraction = case.brain_mask.mean()
    assert 0.1 < fraction < 0.25  # real BraTS: ~1.35 M of 8.93 M voxels (0.15)


def test_same_seed_same_arrays_different_seed_differs(case: PhantomCase) -> None:
    again = make_phantom_case(5, SHAPE)
    other = make_phantom_case(6, SHAPE)
    for m in MODALITIES:
        assert np.array_equal(case.images[m], again.images[m])
        assert not np.array_equal(case.images[m], other.images[m])
    assert np.array_equal(case.label, again.label)
    assert case.plane == again.plane != other.plane


def test_drawn_planes_within_ranges() -> None:
    for seed in range(6):
        plane = make_phantom_case(seed, TINY).plane
        for key, (lo, hi) in PLANE_RANGES.items():
            assert lo <= plane[key] <= hi, (seed, key, plane[key])


def test_forced_plane_changes_only_the_plane(case: PhantomCase) -> None:
    forced = make_phantom_case(5, SHAPE, plane={"offset": 2.5, "yaw": -3.0, "roll": 1.0})
    assert forced.plane == {"offset": 2.5, "yaw": -3.0, "roll": 1.0}
    assert forced.tumour["radii_mm"] == case.tumour["radii_mm"]
    assert forced.params["noise_seed"] == case.params["noise_seed"]


def test_plane_accepts_object_with_attributes() -> None:
    class Plane:
        offset, yaw, roll = 1.0, 2.0, -1.0

    assert make_phantom_case(0, TINY, plane=Plane()).plane == {
        "offset": 1.0,
        "yaw": 2.0,
        "roll": -1.0,
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"seed": 0, "shape": (64, 64)}, "shape must be 3 integers"),
        ({"seed": 0, "plane": {"offset": 1.0, "yaw": 0.0}}, r"missing \['roll'\]"),
        ({"seed": 0, "plane": {"offset": np.nan, "yaw": 0.0, "roll": 0.0}}, "must be finite"),
    ],
)
def test_make_phantom_case_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_phantom_case(**kwargs)


# ---------------------------------------------------------------- contrast


@pytest.mark.parametrize("seed", [0, 1])
def test_tissue_and_tumour_contrast_per_modality(seed: int) -> None:
    c = make_phantom_case(seed, SHAPE)

    def mean(modality: str, *tissues: str) -> float:
        sel = np.isin(c.tissue, [T[t] for t in tissues])
        assert sel.sum() >= 5, tissues
        return float(c.images[modality][sel].mean())

    et, ed, wm = c.label == 3, c.label == 2, c.tissue == T["white_matter"]
    core = c.label == 1
    t1ce, flair, t1, t2 = (c.images[m] for m in ("t1ce", "flair", "t1", "t2"))
    assert t1ce[et].mean() > t1ce[ed].mean() > t1ce[core].mean()
    assert flair[ed].mean() > flair[wm].mean() and t2[ed].mean() > t2[wm].mean()
    assert t1[core].mean() < t1[wm].mean() and t1ce[core].mean() < t1ce[wm].mean()
    assert mean("t1", "white_matter") > mean("t1", "grey_matter") > mean("t1", "csf")
    assert mean("t2", "csf") > mean("t2", "grey_matter") > mean("t2", "white_matter")
    assert mean("flair", "csf") < mean("flair", "white_matter")


# ---------------------------------------------------------------- symmetry


def test_tumour_stays_in_one_hemisphere(case: PhantomCase) -> None:
    centre, rot = plane_frame(case.plane, SHAPE)
    xs = (np.argwhere(case.label > 0) - centre) @ rot[:, 0]
    side = 1.0 if case.tumour["side"] == "right" else -1.0
    assert np.all(side * xs > 0)


def test_brain_is_symmetric_about_the_true_plane_not_the_array_centre() -> None:
    plane = {"offset": 4.0, "yaw": 4.0, "roll": -4.0}
    c = make_phantom_case(3, SHAPE, plane=plane)
    true_dice = _dice(c.brain_mask, _mirror(c.brain_mask, plane).astype(bool))
    flip_dice = _dice(c.brain_mask, c.brain_mask[::-1])
    assert true_dice > 0.97
    assert true_dice > flip_dice + 0.02


def test_truth_agrees_with_the_project_mirror_convention(case: PhantomCase) -> None:
    mirror = pytest.importorskip("aem_synth.synthesis.mirror")
    plane = mirror.MirrorPlane(**case.plane)
    theirs = mirror.reflect(case.brain_mask, plane, order=0).astype(bool)
    assert _dice(case.brain_mask, theirs) > 0.97
    assert _dice(theirs, _mirror(case.brain_mask, case.plane).astype(bool)) > 0.99


def test_healthy_tissue_mirrors_onto_itself(case: PhantomCase) -> None:
    tumour_zone = ndimage.binary_dilation(case.label > 0, iterations=3)
    tumour_zone |= _mirror(tumour_zone, case.plane).astype(bool)
    healthy = case.brain_mask & ~tumour_zone
    mirrored = _mirror(case.tissue, case.plane)
    agree = float((mirrored[healthy] == case.tissue[healthy]).mean())
    assert agree > 0.9
    flair = case.images["flair"]
    both = healthy & (_mirror(case.brain_mask, case.plane) > 0)
    rel = np.abs(flair - _mirror(flair, case.plane, order=1))[both] / flair[both]
    rel_flip = np.abs(flair - flair[::-1])[both] / flair[both]
    assert np.median(rel) < 0.1
    assert np.median(rel) < np.median(rel_flip)


# ---------------------------------------------------------------- on disk


def test_file_names_per_layout(datasets: dict[str, Path]) -> None:
    r20, r23, r15 = datasets["brats2020"], datasets["brats2023"], datasets["brats2015"]
    for suffix in ("flair", "t1", "t1ce", "t2", "seg"):
        assert (r20 / "BraTS20_Training_002" / f"BraTS20_Training_002_{suffix}.nii.gz").is_file()
    for suffix in ("t2f", "t1n", "t1c", "t2w", "seg"):
        assert (r23 / "BraTS-GLI-00001-000" / f"BraTS-GLI-00001-000-{suffix}.nii.gz").is_file()
    case_dir = r15 / "HGG" / "brats_2013_pat0001_1"
    mhas = sorted(p.relative_to(case_dir).as_posix() for p in case_dir.rglob("*.mha"))
    assert len(mhas) == 5
    for p in mhas:
        folder, name = p.split("/")
        assert name == f"{folder}.mha"
    stems = {p.split("/")[0].rsplit(".", 1)[0] for p in mhas}
    assert stems == {
        *(f"VSD.Brain.XX.O.MR_{m}" for m in ("Flair", "T1", "T1c", "T2")),
        "VSD.Brain_3more.XX.O.OT",
    }
    all_ids = [p.name.rsplit(".", 2)[-2] for r in (r15,) for p in r.rglob("*.mha")]
    assert len(set(all_ids)) == len(all_ids) == 10


@pytest.mark.parametrize("layout", list(DISK_LABELS))
def test_sidecars_describe_the_cases(datasets: dict[str, Path], layout: str) -> None:
    root = datasets[layout]
    summary = json.loads((root / "phantom.json").read_text())
    assert summary["layout"] == layout and summary["seed"] == 11
    assert summary["shape"] == list(TINY) and len(summary["cases"]) == 2
    assert summary["plane_convention"] == PLANE_CONVENTION
    for entry in summary["cases"]:
        truth = json.loads((root / entry["truth"]).read_text())
        assert (root / entry["truth"]).parent == root / entry["folder"]
        assert truth["case_id"] == entry["case_id"] and truth["seed"] == entry["seed"]
        for key, (lo, hi) in PLANE_RANGES.items():
            assert lo <= truth["plane"][key] <= hi
        assert set(truth["tumour"]) >= {"centre_voxel", "radii_mm", "side", "edema_ratio"}
        assert set(truth["label_values_on_disk"]) == DISK_LABELS[layout]


def _read_canonical_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.nifti1.load(path)
    return np.asarray(nib.as_closest_canonical(image).dataobj), image


@pytest.mark.parametrize("layout", ["brats2020", "brats2023"])
def test_nifti_is_lps_and_reorients_to_the_case(datasets: dict[str, Path], layout: str) -> None:
    root = datasets[layout]
    entry = json.loads((root / "phantom.json").read_text())["cases"][0]
    case = make_phantom_case(entry["seed"], TINY)
    folder = root / entry["folder"]
    suffix = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    for m in MODALITIES:
        name = (
            f"{entry['case_id']}_{m}"
            if layout == "brats2020"
            else f"{entry['case_id']}-{suffix[m]}"
        )
        data, image = _read_canonical_nifti(folder / f"{name}.nii.gz")
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert np.array_equal(image.affine, brats_affine(TINY))
        assert image.get_data_dtype() == np.int16
        assert np.array_equal(data, case.images[m])
    sep = "_" if layout == "brats2020" else "-"
    seg, image = _read_canonical_nifti(folder / f"{entry['case_id']}{sep}seg.nii.gz")
    assert image.get_data_dtype() == np.uint8
    assert set(np.unique(seg).tolist()) == DISK_LABELS[layout]
    et_value = 4 if layout == "brats2020" else 3
    internal = np.where(seg == et_value, 3, seg)
    assert np.array_equal(internal, case.label)


def test_mha_is_lps_and_reorients_to_the_case(datasets: dict[str, Path]) -> None:
    root = datasets["brats2015"]
    entry = json.loads((root / "phantom.json").read_text())["cases"][1]
    case = make_phantom_case(entry["seed"], TINY)
    folder = root / entry["folder"]
    for m, name in zip(MODALITIES, ("Flair", "T1", "T1c", "T2"), strict=True):
        (path,) = folder.glob(f"VSD.Brain.XX.O.MR_{name}.*/*.mha")
        image = sitk.ReadImage(str(path))
        ras = np.diag([-1.0, -1.0, 1.0]) @ np.reshape(image.GetDirection(), (3, 3))
        affine = np.eye(4)
        affine[:3, :3] = ras * np.asarray(image.GetSpacing())
        affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(image.GetOrigin())
        assert np.allclose(affine, brats_affine(TINY))
        disk = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        assert disk.dtype == np.int16
        ornt = nib.orientations.io_orientation(affine)
        assert np.array_equal(nib.orientations.apply_orientation(disk, ornt), case.images[m])
    (seg_path,) = folder.glob("VSD.Brain_3more.XX.O.OT.*/*.mha")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path))).transpose(2, 1, 0)[::-1, ::-1]
    assert set(np.unique(seg).tolist()) == DISK_LABELS["brats2015"]
    internal = np.array([0, 1, 2, 1, 3], dtype=np.uint8)[seg]
    assert np.array_equal(internal, case.label)


@pytest.mark.parametrize("layout", list(DISK_LABELS))
def test_same_seed_same_bytes_on_disk(
    tmp_path: Path, datasets: dict[str, Path], layout: str
) -> None:
    again = tmp_path / "again"
    write_phantom_dataset(again, n_cases=2, layout=layout, seed=11, shape=TINY)
    assert _tree_digest(again) == _tree_digest(datasets[layout])
    other = tmp_path / "other"
    write_phantom_dataset(other, n_cases=2, layout=layout, seed=12, shape=TINY)
    digest, reference = _tree_digest(other), _tree_digest(datasets[layout])
    assert digest.keys() == reference.keys()
    assert all(digest[k] != reference[k] for k in digest if k.endswith((".gz", ".mha")))


@pytest.mark.parametrize("layout", list(DISK_LABELS))
def test_discovery_and_loading_round_trip(datasets: dict[str, Path], layout: str) -> None:
    discover = pytest.importorskip("aem_synth.dataset.discover").discover
    load_case = pytest.importorskip("aem_synth.dataset.load").load_case
    root = datasets[layout]
    summary = json.loads((root / "phantom.json").read_text())
    records = {r.case_id: r for r in discover(root)}
    assert set(records) == {e["case_id"] for e in summary["cases"]}
    for entry in summary["cases"]:
        record = records[entry["case_id"]]
        assert record.layout == layout and record.complete and record.labelled
        loaded = load_case(record)
        case = make_phantom_case(entry["seed"], TINY)
        expected = np.stack([case.images[m] for m in MODALITIES])
        assert np.array_equal(loaded.image, expected)
        assert np.array_equal(loaded.label, case.label)


# ---------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "brats2099"}, "unknown phantom layout 'brats2099'; choose one of brats2020"),
        ({"n_cases": 0}, "n_cases must be an integer >= 1, got 0"),
        ({"seed": -3}, "seed must be a non-negative integer, got -3"),
        ({"shape": (64, 64, 8)}, r"each >= 32 voxels, got \(64, 64, 8\)"),
    ],
)
def test_write_phantom_dataset_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict, match: str
) -> None:
    args = {"n_cases": 1, "layout": "brats2020", "seed": 0, "shape": TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        write_phantom_dataset(tmp_path / "x", **args)
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    result = CliRunner().invoke(
        main,
        [
            "phantom",
            "--out",
            str(out),
            "--cases",
            "2",
            "--shape",
            "48,48,32",
            "--layout",
            "brats2023",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 brats2023 simple phantom cases" in result.output
    assert len(list(out.glob("*/*-seg.nii.gz"))) == 2


def test_cli_reports_bad_shape(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["phantom", "--out", str(tmp_path / "ph"), "--shape", "48,48"]
    )
    assert result.exit_code == 2
    assert "shape must be three comma-separated integers" in result.output
    assert not (tmp_path / "ph").exists()
