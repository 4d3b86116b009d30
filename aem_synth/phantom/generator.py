"""Procedural BraTS-like phantom cases written in real BraTS on-disk layouts.

The phantom is the project's test- and demo-data source (DESIGN §9, STYLE 9):
a skull-stripped brain with two mirror-symmetric hemispheres about a known,
slightly shifted and tilted mid-sagittal plane, one tumour with oedema (ED),
an enhancing rim (ET) and a necrotic / non-enhancing core (NCR/NET), noise and
a smooth bias field.  Anatomy and rendering live in
:mod:`aem_synth.phantom.anatomy`; this module holds the public API and the
writers.

On disk the files look like real BraTS: 1 mm voxels, affine
``diag(-1, -1, 1)`` with origin ``(0, Y-1, 0)`` (nibabel orientation L, P, S),
i.e. the stored array is the canonical RAS array flipped on axes 0 and 1;
``.mha`` files (BraTS 2015) carry the same physical placement in ITK's LPS
convention (identity direction, origin ``(0, -(Y-1), 0)``).  Gzip streams are
written with ``mtime=0`` so the same seed gives the same bytes.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aem_synth import __version__
from aem_synth.paths import prepare_output_dir
from aem_synth.phantom.anatomy import (
    PHANTOM_VARIANTS,
    PLANE_RANGES,
    TISSUES,
    sample_phantom_params,
)
from aem_synth.phantom.render import render_phantom
from aem_synth.types import MODALITIES, BoolArray, FloatArray, LabelArray

__all__ = [
    "DEFAULT_SHAPE",
    "LAYOUTS",
    "MIN_AXIS",
    "PLANE_CONVENTION",
    "PhantomCase",
    "brats_affine",
    "disk_label",
    "make_phantom_case",
    "parse_shape",
    "write_phantom_dataset",
]

DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
MIN_AXIS = 32
"""Smallest supported size of each axis (voxels): the anatomy needs room for a tumour."""
LAYOUTS: tuple[str, ...] = ("brats2020", "brats2023", "brats2015")
PLANE_CONVENTION = (
    "canonical RAS voxel grid (x, y, z), 1 mm; plane through "
    "((X-1)/2 + offset, (Y-1)/2, (Z-1)/2) voxels with unit normal "
    "(cos(yaw)cos(roll), sin(yaw)cos(roll), -sin(roll)), yaw and roll in degrees"
)

# Tissue code (aem_synth.phantom.anatomy.TISSUES) -> label value on disk per layout.
# Only BraTS 2015 distinguishes non-enhancing tumour (3) from necrosis (1).
_DISK_LABELS: dict[str, npt.NDArray[np.uint8]] = {
    "brats2020": np.array([0, 0, 0, 0, 0, 2, 1, 4, 1], dtype=np.uint8),
    "brats2023": np.array([0, 0, 0, 0, 0, 2, 1, 3, 1], dtype=np.uint8),
    "brats2015": np.array([0, 0, 0, 0, 0, 2, 1, 4, 3], dtype=np.uint8),
}
_SUFFIX_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
_NAME_2015 = {"flair": "Flair", "t1": "T1", "t1ce": "T1c", "t2": "T2"}
# Level 1 is ~2.5x faster than the default 6 and only ~6 % larger on these volumes.
_GZIP_LEVEL = 1


@dataclass(frozen=True)
class PhantomCase:
    """One phantom case in the canonical RAS grid ``(X, Y, Z)``, 1 mm voxels.

    Attributes
    ----------
    seed : int
        Seed that reproduces the case with :func:`make_phantom_case`.
    shape : tuple of int
        ``(X, Y, Z)`` in voxels.
    images : dict of str to ndarray, float32, (X, Y, Z)
        ``flair``, ``t1``, ``t1ce``, ``t2``; integer values in ``[1, 32767]``
        inside the brain and exactly 0 outside.
    label : ndarray, uint8, (X, Y, Z)
        Internal labels 0 bg, 1 NCR/NET, 2 ED, 3 ET.
    brain_mask : ndarray, bool, (X, Y, Z)
    tissue : ndarray, uint8, (X, Y, Z)
        Tissue codes, index into :data:`aem_synth.phantom.anatomy.TISSUES`.
    plane : dict
        Mirror-plane truth ``{"offset": voxels, "yaw": deg, "roll": deg}`` in
        the convention of :data:`PLANE_CONVENTION`.
    tumour : dict
        Tumour parameters: ``centre_voxel`` (canonical voxels),
        ``centre_plane_mm``, ``side``, ``radii_mm``, ``edema_ratio``, ...
    params : dict
        Every drawn parameter (JSON-able), for the truth sidecar.
    """

    seed: int
    shape: tuple[int, int, int]
    images: dict[str, FloatArray]
    label: LabelArray
    brain_mask: BoolArray
    tissue: LabelArray
    plane: dict[str, float]
    tumour: dict[str, Any]
    params: dict[str, Any]


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse ``"X,Y,Z"`` (voxels) into a shape tuple.

    Raises
    ------
    ValueError
        When the text is not three comma-separated integers, each >= ``MIN_AXIS``.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.lstrip("+").isdigit() for p in parts):
        raise ValueError(
            f"shape must be three comma-separated integers like '240,240,155', got {text!r}"
        )
    shape = (int(parts[0]), int(parts[1]), int(parts[2]))
    _check_shape(shape)
    return shape


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) != s or s < MIN_AXIS for s in shape):
        raise ValueError(
            f"phantom shape must be 3 integers, each >= {MIN_AXIS} voxels, got {tuple(shape)}"
        )
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _plane_dict(plane: Mapping[str, float] | object) -> dict[str, float]:
    """Accept a mapping or any object with ``offset``/``yaw``/``roll`` attributes."""
    get = plane.get if isinstance(plane, Mapping) else lambda k: getattr(plane, k, None)
    values = {k: get(k) for k in PLANE_RANGES}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"phantom plane must give offset, yaw and roll; missing {missing}")
    out = {k: float(v) for k, v in values.items()}  # type: ignore[arg-type]
    if not all(np.isfinite(v) for v in out.values()):
        raise ValueError(f"phantom plane values must be finite, got {out}")
    return out


def make_phantom_case(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    *,
    plane: Mapping[str, float] | object | None = None,
    variant: str = "simple",
) -> PhantomCase:
    """Generate one phantom case in the canonical RAS grid.

    Parameters
    ----------
    seed : int
        Non-negative seed; all randomness comes from ``np.random.default_rng(seed)``.
    shape : tuple of int
        ``(X, Y, Z)`` in 1 mm voxels; anatomy scales with the shape
        (~140 x 176 x 132 mm brain in 240 x 240 x 155).
    plane : mapping or object with offset/yaw/roll, optional
        Force the mid-plane truth.  ``None`` draws offset uniform in [-4, 4]
        voxels, yaw and roll uniform in [-5, 5] degrees.  Forcing the plane
        changes nothing else of the case.
    variant : {"simple", "hard"}
        ``hard`` adds anatomy, intensity and tumour variety
        (:mod:`aem_synth.phantom.hard`); ``simple`` cases keep their bytes.

    Returns
    -------
    PhantomCase
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shape = _check_shape(tuple(shape))
    forced = None if plane is None else _plane_dict(plane)
    params = sample_phantom_params(np.random.default_rng(int(seed)), shape, forced, variant)
    arrays = render_phantom(params)
    return PhantomCase(
        seed=int(seed),
        shape=shape,
        images=arrays.images,
        label=arrays.label,
        brain_mask=arrays.brain_mask,
        tissue=arrays.tissue,
        plane=dict(params.plane),
        tumour=dict(params.tumour),
        params=params.to_dict(),
    )


def disk_label(case: PhantomCase, layout: str) -> LabelArray:
    """Label array with the on-disk values of ``layout`` (canonical axes).

    brats2020: 0/1/2/4 (4 = ET); brats2023: 0/1/2/3 (3 = ET); brats2015:
    0-4 with 1 = necrosis, 3 = non-enhancing tumour, 4 = ET.
    """
    return _DISK_LABELS[_check_layout(layout)][case.tissue]


def _check_layout(layout: str) -> str:
    if layout not in _DISK_LABELS:
        raise ValueError(f"unknown phantom layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return layout


def brats_affine(shape: tuple[int, int, int]) -> npt.NDArray[np.float64]:
    """BraTS voxel -> RAS (mm) affine of the on-disk array: ``diag(-1,-1,1)``, origin ``(0, Y-1, 0)``."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1.0
    return affine


def _to_disk(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Canonical RAS array -> on-disk L, P, S array (flip axes 0 and 1)."""
    return np.ascontiguousarray(array[::-1, ::-1, :])


def _case_seeds(seed: int, n_cases: int) -> list[int]:
    children = np.random.SeedSequence(seed).spawn(n_cases)
    return [int(c.generate_state(1)[0]) for c in children]


def write_phantom_dataset(
    out: Path,
    *,
    n_cases: int,
    layout: str = "brats2020",
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    variant: str = "simple",
) -> list[Path]:
    """Write ``n_cases`` phantom cases under ``out`` in a real BraTS layout.

    Parameters
    ----------
    out : Path
        Dataset root (created if needed).
    n_cases : int
        Number of cases, >= 1.
    layout : {"brats2020", "brats2023", "brats2015"}
        ``brats2020``: ``out/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz``;
        ``brats2023``: ``out/<id>/<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz``;
        ``brats2015``: ``out/HGG/<case>/VSD.Brain.XX.O.MR_<mod>.<n>/...mha``.
    seed : int
        Dataset seed; case ``i`` uses ``SeedSequence(seed).spawn(n)[i]``.
    shape : tuple of int
        ``(X, Y, Z)`` voxels (1 mm).
    variant : {"simple", "hard"}
        See :func:`make_phantom_case`.

    Returns
    -------
    list of Path
        The case folders, in case order.  Each holds ``<case_id>_truth.json``;
        ``out/phantom.json`` lists the cases.
    """
    _check_layout(layout)
    shape = _check_shape(tuple(shape))
    if variant not in PHANTOM_VARIANTS:
        raise ValueError(f"phantom variant must be one of {PHANTOM_VARIANTS}, got {variant!r}")
    if int(n_cases) != n_cases or n_cases < 1:
        raise ValueError(f"phantom n_cases must be an integer >= 1, got {n_cases!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"phantom seed must be a non-negative integer, got {seed!r}")
    out = prepare_output_dir(out, "phantom output folder")
    writer = {"brats2020": _write_2020, "brats2023": _write_2023, "brats2015": _write_2015}[layout]
    entries, folders = [], []
    for index, case_seed in enumerate(_case_seeds(int(seed), int(n_cases))):
        case = make_phantom_case(case_seed, shape, variant=variant)
        case_id, folder = writer(out, index, case)
        truth = _write_truth(folder, case_id, case, layout=layout, index=index, dataset_seed=seed)
        folders.append(folder)
        entries.append(
            {
                "case_id": case_id,
                "folder": folder.relative_to(out).as_posix(),
                "truth": truth.relative_to(out).as_posix(),
                "seed": case_seed,
                "plane": case.plane,
            }
        )
    summary = {
        "generator": "aem_synth.phantom.generator",
        "version": __version__,
        "layout": layout,
        "variant": variant,
        "seed": int(seed),
        "shape": list(shape),
        "spacing_mm": [1.0, 1.0, 1.0],
        "plane_convention": PLANE_CONVENTION,
        "cases": entries,
    }
    _write_json(out / "phantom.json", summary)
    return folders


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_truth(
    folder: Path, case_id: str, case: PhantomCase, *, layout: str, index: int, dataset_seed: int
) -> Path:
    path = folder / f"{case_id}_truth.json"
    values = sorted(int(v) for v in np.unique(disk_label(case, layout)))
    _write_json(
        path,
        {
            "case_id": case_id,
            "layout": layout,
            "index": index,
            "seed": case.seed,
            "dataset_seed": int(dataset_seed),
            "shape": list(case.shape),
            "spacing_mm": [1.0, 1.0, 1.0],
            "plane": case.plane,
            "plane_convention": PLANE_CONVENTION,
            "tumour": case.tumour,
            "label_values_on_disk": values,
            "on_disk_orientation": "LPS (nibabel codes L, P, S; canonical RAS = flip axes 0, 1)",
            "tissues": list(TISSUES),
            "params": case.params,
            "generator_version": __version__,
        },
    )
    return path


def _nifti_gz_bytes(array: npt.NDArray[Any], shape: tuple[int, int, int]) -> bytes:
    """Deterministic ``.nii.gz`` bytes of a canonical array stored the BraTS way."""
    import nibabel as nib

    data = _to_disk(array)
    affine = brats_affine(shape)
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def _write_nifti_case(
    out: Path, case_id: str, case: PhantomCase, names: Mapping[str, str], layout: str
) -> tuple[str, Path]:
    folder = out / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for modality in MODALITIES:
        pixels = case.images[modality].astype(np.int16)
        (folder / names[modality]).write_bytes(_nifti_gz_bytes(pixels, case.shape))
    (folder / names["seg"]).write_bytes(_nifti_gz_bytes(disk_label(case, layout), case.shape))
    return case_id, folder


def _write_2020(out: Path, index: int, case: PhantomCase) -> tuple[str, Path]:
    case_id = f"BraTS20_Training_{index + 1:03d}"
    names = {m: f"{case_id}_{m}.nii.gz" for m in (*MODALITIES, "seg")}
    return _write_nifti_case(out, case_id, case, names, "brats2020")


def _write_2023(out: Path, index: int, case: PhantomCase) -> tuple[str, Path]:
    case_id = f"BraTS-GLI-{index + 1:05d}-000"
    names = {m: f"{case_id}-{_SUFFIX_2023[m]}.nii.gz" for m in MODALITIES}
    names["seg"] = f"{case_id}-seg.nii.gz"
    return _write_nifti_case(out, case_id, case, names, "brats2023")


def _write_2015(out: Path, index: int, case: PhantomCase) -> tuple[str, Path]:
    """``HGG/<case>/VSD.Brain.XX.O.MR_<mod>.<n>/<same>.mha`` and the ``OT`` label file.

    ``<n>`` is a per-file id, unique within the dataset as in the real release.
    """
    case_id = f"brats_2013_pat{index + 1:04d}_1"
    folder = out / "HGG" / case_id
    base = 10000 + 5 * index
    stems = {m: f"VSD.Brain.XX.O.MR_{_NAME_2015[m]}.{base + i}" for i, m in enumerate(MODALITIES)}
    stems["seg"] = f"VSD.Brain_3more.XX.O.OT.{base + 4}"
    arrays: dict[str, npt.NDArray[Any]] = {m: case.images[m].astype(np.int16) for m in MODALITIES}
    arrays["seg"] = disk_label(case, "brats2015")
    for key, stem in stems.items():
        (folder / stem).mkdir(parents=True, exist_ok=True)
        _write_mha(folder / stem / f"{stem}.mha", arrays[key])
    return case_id, folder


def _write_mha(path: Path, array: npt.NDArray[Any]) -> None:
    """Write a canonical array as compressed MetaImage with BraTS placement (LPS physical).

    ITK points are LPS: the on-disk index ``(i, j, k)`` lies at RAS
    ``(-i, Y-1-j, k)``, i.e. LPS ``(i, j-(Y-1), k)``: identity direction,
    origin ``(0, -(Y-1), 0)``.  SimpleITK arrays are ordered ``(z, y, x)``.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(_to_disk(array).transpose(2, 1, 0).copy())
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((0.0, -(array.shape[1] - 1.0), 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), True)
