"""On-disk BraTS dataset layouts: file naming and label maps into the internal convention.

Known layouts (DESIGN §3):

``brats2020``
    BraTS 2018/2019/2020/2021: ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``,
    labels 0 background, 1 NCR/NET, 2 ED, 4 ET.
``brats2023``
    BraTS 2023+ (GLI, MET, MEN, SSA, GoAT, 2024 GLI):
    ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (t2f = FLAIR, t1n = T1,
    t1c = T1ce, t2w = T2), labels 0, 1 NCR/NETC, 2 ED/SNFH, 3 ET, 4 resection
    cavity (2024 GLI; read as background).
``brats-ped``
    BraTS-PEDs (ids ``BraTS-PED-*``), same naming: 1 ET, 2 NET, 3 cystic
    component, 4 ED -> internal 3, 1, 1, 2.
``msd``, ``nnunet``
    Datasets described by a ``dataset.json`` (Medical Segmentation Decathlon
    Task01, nnU-Net v2 raw): channels and labels come from that file, see
    :mod:`aem_synth.dataset.json_datasets`.
``brats2015``
    ``HGG|LGG/<case>/VSD.Brain.XX.O.MR_{Flair,T1,T1c,T2}.<id>/<same>.mha`` and
    ``VSD.Brain_*more.XX.O.OT.<id>/<same>.mha`` (the seg), labels 0, 1 necrosis,
    2 ED, 3 non-enhancing tumour, 4 ET; 3 is merged into NCR/NET (internal 1).

Internal labels are 0 background, 1 NCR/NET, 2 ED, 3 ET (``aem_synth.types``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from aem_synth.errors import CaseError, DatasetError
from aem_synth.types import MODALITIES, LabelArray

__all__ = ["LAYOUTS", "LAYOUT_ALIASES", "SEG", "Layout", "record_layout", "resolve_layout"]

SEG = "seg"
"""Kind returned by :meth:`Layout.parse` for segmentation files."""

_UNKNOWN = 255  # lookup-table sentinel; no layout uses 255 as a label value


@dataclass(frozen=True)
class Layout:
    """Naming and label convention of one BraTS release family.

    Attributes
    ----------
    name : str
        Layout id (a key of ``LAYOUTS``).
    description : str
        Human-readable naming pattern.
    label_to_internal : dict of int to int
        On-disk label value -> internal label (0/1/2/3).
    internal_to_layout : dict of int to int
        Internal label -> the value this layout writes for it.
    modality_tokens : dict of str to str
        Internal modality name (``MODALITIES``) -> token in the file name.
    seg_token : str
        Token of the segmentation file.
    separator : str
        Separator between case id and token in NIfTI names (``"_"`` or ``"-"``).
    file_format : str
        ``"nifti"`` (``.nii``/``.nii.gz``), ``"mha"`` (read with SimpleITK), or
        ``"json"`` for datasets described by a ``dataset.json`` (MSD, nnU-Net:
        found by :mod:`aem_synth.dataset.json_datasets`, never by file name).
    case_pattern : str
        Regular expression a case id must match (``""``: any), which tells apart
        releases sharing one file naming (BraTS-PED and the other 2023+ sets).
    output_suffix : str
        Appended to the case id to name a prediction written in this layout's
        convention (``_seg.nii.gz``; nnU-Net-style layouts use ``.nii.gz``).
    """

    name: str
    description: str
    label_to_internal: dict[int, int]
    internal_to_layout: dict[int, int]
    modality_tokens: dict[str, str]
    seg_token: str
    file_format: str
    separator: str = ""
    case_pattern: str = ""
    output_suffix: str = "_seg.nii.gz"
    _case_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _token_kind: dict[str, str] = field(init=False, repr=False, compare=False)
    _lut: npt.NDArray[np.uint8] = field(init=False, repr=False, compare=False)
    _inverse_lut: npt.NDArray[np.int64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        token_kind = {tok.lower(): mod for mod, tok in self.modality_tokens.items()}
        token_kind[self.seg_token.lower()] = SEG
        # Longest tokens first so that "t1ce" is never read as "t1" + "ce".
        alternatives = "|".join(re.escape(t) for t in sorted(token_kind, key=len, reverse=True))
        if self.file_format == "mha":
            pattern = rf"^VSD\.Brain(?:_\w*more)?\.XX\.O\.(?:MR_)?(?P<tok>{alternatives})\.\d+$"
        elif self.file_format == "json":
            pattern = r"(?!)"  # never matches: cases come from dataset.json
        else:
            sep = re.escape(self.separator)
            pattern = rf"^(?P<case>.+){sep}(?P<tok>{alternatives})\.nii(?:\.gz)?$"
        lut = np.full(256, _UNKNOWN, dtype=np.uint8)
        for value, internal in self.label_to_internal.items():
            lut[value] = internal
        inverse = np.full(4, -1, dtype=np.int64)
        for internal, value in self.internal_to_layout.items():
            inverse[internal] = value
        missing = [i for i in range(4) if inverse[i] < 0]
        if missing:
            # An internal label this dataset cannot store is written as background,
            # and said in the README's layout table (none of the shipped maps needs it).
            inverse[missing] = 0
        object.__setattr__(self, "_pattern", re.compile(pattern, re.IGNORECASE))
        object.__setattr__(self, "_case_re", re.compile(self.case_pattern))
        object.__setattr__(self, "_token_kind", token_kind)
        object.__setattr__(self, "_lut", lut)
        object.__setattr__(self, "_inverse_lut", inverse)

    def parse(self, name: str) -> tuple[str, str] | None:
        """Classify a file name (NIfTI layouts) or a ``VSD.Brain`` stem (``brats2015``).

        Parameters
        ----------
        name : str
            File name for NIfTI layouts (``Brats18_x_t1ce.nii.gz``); for
            ``brats2015`` the ``.mha`` file name without extension or its folder
            name (``VSD.Brain.XX.O.MR_T1c.54513``).

        Returns
        -------
        (case_key, kind) or None
            ``case_key`` is the case id encoded in the name (``""`` for
            ``brats2015``, whose case id is the case folder); ``kind`` is a
            modality of ``MODALITIES`` or ``SEG``.  ``None`` when the name does
            not belong to this layout.
        """
        match = self._pattern.match(name)
        if match is None:
            return None
        case_key = match.group("case") if self.file_format == "nifti" else ""
        if case_key and not self._case_re.search(case_key):
            return None
        return case_key, self._token_kind[match.group("tok").lower()]

    def with_labels(self, label_to_internal: dict[int, int]) -> Layout:
        """This layout with a dataset's own label map (``dataset.json`` layouts).

        The value written back for an internal label is the smallest on-disk
        value mapped to it.
        """
        inverse: dict[int, int] = {}
        for value, internal in sorted(label_to_internal.items()):
            inverse.setdefault(internal, value)
        return replace(self, label_to_internal=dict(label_to_internal), internal_to_layout=inverse)

    def expected_name(self, case_id: str, kind: str) -> str:
        """File name this layout uses for ``kind`` (a modality or ``SEG``) of a case."""
        if self.file_format == "json":
            return f"{case_id} {kind} (as listed in dataset.json)"
        token = self.seg_token if kind == SEG else self.modality_tokens[kind]
        if self.file_format == "mha":
            prefix = "VSD.Brain_*more.XX.O." if kind == SEG else "VSD.Brain.XX.O.MR_"
            return f"{prefix}{token}.<id>/*.mha"
        return f"{case_id}{self.separator}{token}.nii.gz"

    def map_labels(
        self, labels: npt.NDArray[np.generic], case_id: str, file: Path | str
    ) -> LabelArray:
        """Map on-disk label values to the internal convention with a lookup table.

        Parameters
        ----------
        labels : ndarray, integer or integral float, any shape
            Label values as stored on disk.
        case_id : str
            Case named in error messages.
        file : Path or str
            File named in error messages.

        Returns
        -------
        ndarray, uint8, same shape
            Internal labels 0/1/2/3.

        Raises
        ------
        CaseError
            When a value is not integral or not in ``label_to_internal``; the
            message lists the offending values.
        """
        arr = np.asarray(labels)
        if arr.dtype.kind == "f":
            arr = self._integral(arr, case_id, file)
        elif arr.dtype.kind == "b":
            arr = arr.view(np.uint8)
        elif arr.dtype.kind not in "iu":
            raise CaseError(case_id, f"{file}: label dtype {arr.dtype} is not an integer type")
        if arr.size and arr.dtype != np.uint8 and (arr.min() < 0 or arr.max() > 255):
            self._reject(np.unique(arr), case_id, file)
        # Gather in memory order (files are Fortran-ordered); the result keeps that order.
        mapped = self._lut[arr.T].T if arr.flags.f_contiguous else self._lut[arr]
        unknown = mapped == _UNKNOWN
        if unknown.any():
            self._reject(np.unique(arr[unknown]), case_id, file)
        return mapped

    def to_layout_labels(self, internal: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Map internal labels (0/1/2/3) to this layout's on-disk values (uint8)."""
        arr = np.asarray(internal)
        if arr.dtype.kind not in "iub":
            raise ValueError(
                f"{self.name}: internal labels must be integers, got dtype {arr.dtype}"
            )
        if arr.size and (arr.min() < 0 or arr.max() > 3):
            bad = [int(v) for v in np.unique(arr) if not 0 <= v <= 3]
            raise ValueError(f"{self.name}: internal labels must be in 0..3, got {bad}")
        return self._inverse_lut[arr.astype(np.intp, copy=False)].astype(np.uint8)

    def _integral(
        self, arr: npt.NDArray[np.generic], case_id: str, file: Path | str
    ) -> npt.NDArray[np.int64]:
        rounded = np.rint(arr)
        bad = ~np.isfinite(arr) | (rounded != arr)
        if bad.any():
            values = np.unique(arr[bad])[:8].tolist()
            raise CaseError(case_id, f"{file}: label values must be integers, found {values}")
        return rounded.astype(np.int64)

    def _reject(self, values: npt.NDArray[np.generic], case_id: str, file: Path | str) -> None:
        unknown = sorted(int(v) for v in values if int(v) not in self.label_to_internal)
        raise CaseError(
            case_id,
            f"{file}: unknown label values {unknown} for layout {self.name} "
            f"(allowed {sorted(self.label_to_internal)})",
        )


_NIFTI_TOKENS = {m: m for m in MODALITIES}
_TOKENS_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def _json_layout(name: str, description: str) -> Layout:
    """A layout read through its ``dataset.json`` (never by file name).

    The label map is the published MSD one (1 edema, 2 non-enhancing, 3
    enhancing); each dataset's own ``dataset.json`` replaces it
    (:func:`record_layout`).
    """
    msd_labels = {0: 0, 1: 2, 2: 1, 3: 3}
    return Layout(
        name=name,
        description=description,
        label_to_internal=msd_labels,
        internal_to_layout={v: k for k, v in msd_labels.items()},
        modality_tokens={},
        seg_token="",
        file_format="json",
        output_suffix=".nii.gz",
    )


LAYOUTS: dict[str, Layout] = {
    "brats2020": Layout(
        name="brats2020",
        description="BraTS 2018-2021: <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz",
        label_to_internal={0: 0, 1: 1, 2: 2, 4: 3},
        internal_to_layout={0: 0, 1: 1, 2: 2, 3: 4},
        modality_tokens=_NIFTI_TOKENS,
        seg_token="seg",
        file_format="nifti",
        separator="_",
    ),
    "brats2023": Layout(
        name="brats2023",
        description=(
            "BraTS 2023+ (GLI, MET, MEN, SSA, GoAT; 2024 GLI post-treatment): "
            "<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz"
        ),
        # 4 is the resection cavity of BraTS 2024 GLI (post-treatment): not tumour, so
        # background for WT/TC/ET; never written back.
        label_to_internal={0: 0, 1: 1, 2: 2, 3: 3, 4: 0},
        internal_to_layout={0: 0, 1: 1, 2: 2, 3: 3},
        modality_tokens=_TOKENS_2023,
        seg_token="seg",
        file_format="nifti",
        separator="-",
        case_pattern=r"^(?!BraTS-PED-)",
    ),
    "brats-ped": Layout(
        name="brats-ped",
        description="BraTS-PEDs 2023/2024: <case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz, ids BraTS-PED-*",
        # 1 ET, 2 non-enhancing tumour, 3 cystic component, 4 edema; the cyst belongs to
        # the tumour core, as in the challenge's TC = ET + NET + CC.
        label_to_internal={0: 0, 1: 3, 2: 1, 3: 1, 4: 2},
        internal_to_layout={0: 0, 1: 2, 2: 4, 3: 1},
        modality_tokens=_TOKENS_2023,
        seg_token="seg",
        file_format="nifti",
        separator="-",
        case_pattern=r"^BraTS-PED-",
    ),
    "msd": _json_layout(
        "msd",
        "Medical Segmentation Decathlon Task01_BrainTumour: imagesTr/<case>.nii.gz "
        "(4-D, channels from dataset.json), labelsTr/, imagesTs/",
    ),
    "nnunet": _json_layout(
        "nnunet",
        "nnU-Net v2 raw: DatasetXXX_Name/imagesTr/<case>_<XXXX>.nii.gz, labelsTr/, "
        "imagesTs/, channels and labels from dataset.json",
    ),
    "brats2015": Layout(
        name="brats2015",
        description=(
            "BraTS 2015: HGG|LGG/<case>/VSD.Brain.XX.O.MR_{Flair,T1,T1c,T2}.<id>/*.mha "
            "and VSD.Brain_*more.XX.O.OT.<id>/*.mha"
        ),
        label_to_internal={0: 0, 1: 1, 2: 2, 3: 1, 4: 3},
        internal_to_layout={0: 0, 1: 1, 2: 2, 3: 4},
        modality_tokens={"flair": "Flair", "t1": "T1", "t1ce": "T1c", "t2": "T2"},
        seg_token="OT",
        file_format="mha",
    ),
}

LAYOUT_ALIASES: dict[str, str] = {
    "brats2018": "brats2020",
    "brats2019": "brats2020",
    "brats2021": "brats2020",
    "brats2024": "brats2023",
}


def record_layout(layout: str, label_map: tuple[tuple[int, int], ...] | None) -> Layout:
    """The layout of a case: its named layout, with the dataset's own label map if it has one.

    Parameters
    ----------
    layout : str
        ``CaseRecord.layout``.
    label_map : tuple of (on-disk value, internal label) pairs, or None
        ``CaseRecord.label_map`` (set for ``dataset.json`` layouts).
    """
    base = resolve_layout(layout)
    return base if not label_map else _with_map(base.name, label_map)


@functools.lru_cache(maxsize=64)
def _with_map(name: str, label_map: tuple[tuple[int, int], ...]) -> Layout:
    return LAYOUTS[name].with_labels(dict(label_map))


def resolve_layout(name: str) -> Layout:
    """Return the layout for a name or alias (``brats2018/2019/2021`` -> ``brats2020``).

    Raises
    ------
    DatasetError
        For an unknown name; the message lists the valid names.
    """
    key = LAYOUT_ALIASES.get(name.lower(), name.lower())
    if key not in LAYOUTS:
        valid = sorted([*LAYOUTS, *LAYOUT_ALIASES])
        raise DatasetError(f"unknown layout {name!r}; valid layouts: {', '.join(valid)}")
    return LAYOUTS[key]
