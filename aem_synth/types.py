"""Shared constants and data records of the synthesis pipeline.

Conventions used everywhere in the project
------------------------------------------
* Channel (modality) order: ``MODALITIES = ("flair", "t1", "t1ce", "t2")``.
* Spatial axis order: canonical RAS+ voxel axes ``(x, y, z)``: axis 0 runs
  left -> right, axis 1 posterior -> anterior, axis 2 inferior -> superior.
  The mid-sagittal mirror plane is therefore (nearly) perpendicular to axis 0.
* Images: ``float32`` arrays of shape ``(4, X, Y, Z)``; a missing modality is
  all zeros and flagged ``False`` in ``present``.
* Labels: ``uint8`` arrays of shape ``(X, Y, Z)`` in the internal convention
  0 background, 1 NCR/NET, 2 ED, 3 ET.
* Lengths in millimetres, angles in degrees unless a name says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "MODALITIES",
    "LABEL_NAMES",
    "REGIONS",
    "FUSION_RANK",
    "Box",
    "CaseRecord",
    "Geometry",
    "LoadedCase",
    "PreprocessedCase",
    "FloatArray",
    "LabelArray",
    "BoolArray",
]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]

MODALITIES: tuple[str, str, str, str] = ("flair", "t1", "t1ce", "t2")
LABEL_NAMES: dict[int, str] = {0: "background", 1: "NCR/NET", 2: "ED", 3: "ET"}
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
# Rank used by label fusion: higher wins (ET > NCR/NET > ED > background).
FUSION_RANK: dict[int, int] = {0: 0, 2: 1, 1: 2, 3: 3}

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""Half-open voxel ranges ``((x0, x1), (y0, y1), (z0, z1))`` in the canonical grid."""


@dataclass(frozen=True)
class CaseRecord:
    """One case found on disk by :func:`aem_synth.dataset.discover.discover`.

    Attributes
    ----------
    case_id : str
        Folder / file stem identifying the case (unique within a root).
    layout : str
        Layout id, a key of ``aem_synth.dataset.layouts.LAYOUTS``
        (``"brats2020"`` for the 2018-2021 naming, ``"msd"``, ...).
    directory : Path
        The case folder.
    modalities : Mapping[str, Path]
        Internal modality name (one of ``MODALITIES``) -> file, present ones only.
    seg : Path or None
        Segmentation file, ``None`` for unlabelled cases.
    group : str or None
        Sub-collection when the layout has one (``"HGG"``/``"LGG"``).
    problems : tuple of str
        Human-readable problems found during discovery (e.g. a missing modality).
    channels : Mapping[str, int] or None
        For modalities stored as channels of one 4-D file (MSD): modality ->
        index along the file's 4th axis.  ``None``: one 3-D file per modality.
    label_map : tuple of (int, int) or None
        The dataset's own on-disk label value -> internal label pairs (from a
        ``dataset.json``); ``None``: the layout's fixed map.
    """

    case_id: str
    layout: str
    directory: Path
    modalities: Mapping[str, Path]
    seg: Path | None
    group: str | None = None
    problems: tuple[str, ...] = ()
    channels: Mapping[str, int] | None = None
    label_map: tuple[tuple[int, int], ...] | None = None

    @property
    def complete(self) -> bool:
        """True when all four modalities are present."""
        return all(m in self.modalities for m in MODALITIES)

    @property
    def labelled(self) -> bool:
        """True when a segmentation file exists."""
        return self.seg is not None


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map a canonical-grid array back to the source file.

    Attributes
    ----------
    original_shape : tuple of int
        Spatial shape of the file on disk (trailing singleton axes dropped).
    original_affine : ndarray, float64, (4, 4)
        Voxel -> RAS+ world (mm) affine of the file on disk.
    canonical_affine : ndarray, float64, (4, 4)
        Voxel -> RAS+ world affine of the canonical (RAS-ordered) array.
    ornt : ndarray, int, (3, 2)
        nibabel orientation transform taking the on-disk array to canonical
        (``nibabel.orientations.apply_orientation(data, ornt)``).
    spacing : tuple of float
        Voxel size in mm along the canonical axes ``(x, y, z)``.
    """

    original_shape: tuple[int, int, int]
    original_affine: npt.NDArray[np.float64]
    canonical_affine: npt.NDArray[np.float64]
    ornt: npt.NDArray[np.int64]
    spacing: tuple[float, float, float]


@dataclass
class LoadedCase:
    """A case loaded into the canonical grid, before any normalisation.

    Attributes
    ----------
    record : CaseRecord
    image : ndarray, float32, (4, X, Y, Z)
        Raw intensities, canonical RAS axes, modality order ``MODALITIES``;
        absent modalities are zeros.
    present : tuple of bool
        Which of ``MODALITIES`` were on disk.
    label : ndarray, uint8, (X, Y, Z) or None
        Internal label convention (0/1/2/3).
    geometry : Geometry
    background : tuple of 4 (float or None), optional
        Per modality, the constant that fills the outside of the head on disk
        (``None``: absent modality, or a border that is not constant).  ``None``
        for the whole tuple: not detected yet (detected when needed).
    """

    record: CaseRecord
    image: FloatArray
    present: tuple[bool, bool, bool, bool]
    label: LabelArray | None
    geometry: Geometry
    background: tuple[float | None, ...] | None = None

    @property
    def case_id(self) -> str:
        return self.record.case_id


@dataclass
class PreprocessedCase:
    """A normalised, cropped case ready for storage or training.

    Attributes
    ----------
    case_id : str
    image : ndarray, float32, (4, x, y, z)
        Per-modality z-scores over the brain mask, background exactly 0,
        cropped to ``crop_box``.
    label : ndarray, uint8, (x, y, z) or None
    brain_mask : ndarray, bool, (x, y, z)
    crop_box : Box
        Crop in the canonical full grid.
    present : tuple of bool
    geometry : Geometry
    stats : dict
        Per-modality ``{"mean": float, "std": float}`` used for the z-score
        (keys from ``MODALITIES``), so the normalisation can be reproduced.
    """

    case_id: str
    image: FloatArray
    label: LabelArray | None
    brain_mask: BoolArray
    crop_box: Box
    present: tuple[bool, bool, bool, bool]
    geometry: Geometry
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
