"""``aem-synth inspect``: one row per case describing what is on disk and what is wrong.

Shape, spacing and orientation come from the headers of the case's first file
(on-disk voxel order, e.g. orientation ``"LPS"`` for BraTS NIfTI files); label
counts are per on-disk label value; ``background`` is the constant found outside
the head per modality (see :mod:`aem_synth.dataset.background`).  Every case is also fully loaded with
:func:`aem_synth.dataset.load.load_case`, so any reason it cannot be used shows up as a
problem in its row; one bad case never stops the listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from aem_synth.dataset.background import by_modality, describe_background
from aem_synth.dataset.discover import discover
from aem_synth.dataset.load import affine_from_itk, load_case, read_raw
from aem_synth.errors import CaseError
from aem_synth.types import MODALITIES, CaseRecord

__all__ = ["InspectRow", "format_table", "inspect_case", "inspect_root"]


@dataclass(frozen=True)
class InspectRow:
    """What ``inspect`` reports for one case.

    Attributes
    ----------
    case_id, layout : str
    directory : str
    group : str or None
        ``"HGG"``/``"LGG"`` when the layout has them.
    modalities : tuple of str
        Present modalities, in ``MODALITIES`` order.
    labelled : bool
    shape : tuple of int or None
        On-disk voxel shape (spatial axes), ``None`` when unreadable.
    spacing : tuple of float or None
        On-disk voxel size in mm.
    orientation : str or None
        Axis codes of the file on disk (``"LPS"``, ``"RAS"``...).
    label_counts : dict of int to int
        Voxels per on-disk label value (empty when unlabelled or unreadable).
    problems : tuple of str
    background : dict of str to (float or None)
        Per present modality, the constant outside the head (``None``: border
        not constant, brain taken as > 0); empty when the case was not loaded.
    """

    case_id: str
    layout: str
    directory: str
    group: str | None
    modalities: tuple[str, ...]
    labelled: bool
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    label_counts: dict[int, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    background: dict[str, float | None] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """All four modalities present."""
        return len(self.modalities) == len(MODALITIES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (label count keys as strings)."""
        return {
            "case_id": self.case_id,
            "layout": self.layout,
            "directory": self.directory,
            "group": self.group,
            "modalities": list(self.modalities),
            "complete": self.complete,
            "labelled": self.labelled,
            "shape": None if self.shape is None else list(self.shape),
            "spacing": None if self.spacing is None else list(self.spacing),
            "orientation": self.orientation,
            "label_counts": {str(k): v for k, v in sorted(self.label_counts.items())},
            "problems": list(self.problems),
            "background": dict(self.background),
        }


def inspect_root(
    root: Path | str, layout: str | None = None, *, load: bool = True
) -> list[InspectRow]:
    """Inspect every case found under ``root``.

    Parameters
    ----------
    root : Path or str
    layout : str, optional
        Force a layout (default: detect per case).
    load : bool
        Also load every case fully to report load problems (slower).

    Raises
    ------
    DatasetError
        From :func:`aem_synth.dataset.discover.discover` (missing/empty root, no case,
        duplicate ids); problems of single cases never raise.
    """
    return [inspect_case(record, load=load) for record in discover(Path(root), layout)]


def inspect_case(record: CaseRecord, *, load: bool = True) -> InspectRow:
    """Describe one discovered case; read errors become problems."""
    problems = list(record.problems)
    shape = spacing = orientation = None
    first = next(iter(record.modalities.values()), record.seg)
    if first is not None:
        try:
            shape, spacing, orientation = _header_info(Path(first))
        except (OSError, RuntimeError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            problems.append(f"cannot read header of {first}: {exc}")
    counts: dict[int, int] = {}
    if record.seg is not None:
        try:
            counts = _label_counts(record)
        except CaseError as exc:
            problems.append(exc.reason)
    background: dict[str, float | None] = {}
    if load:
        try:
            loaded = load_case(record)
            background = by_modality(loaded.background, loaded.present)
        except CaseError as exc:
            if exc.reason not in problems:
                problems.append(exc.reason)
    return InspectRow(
        case_id=record.case_id,
        layout=record.layout,
        directory=str(record.directory),
        group=record.group,
        modalities=tuple(m for m in MODALITIES if m in record.modalities),
        labelled=record.labelled,
        shape=shape,
        spacing=spacing,
        orientation=orientation,
        label_counts=counts,
        problems=tuple(problems),
        background=background,
    )


def format_table(rows: list[InspectRow]) -> str:
    """Aligned text table, one line per case, then a summary line."""
    header = (
        "case",
        "layout",
        "group",
        "modalities",
        "shape",
        "spacing",
        "orient",
        "labels",
        "background",
        "problems",
    )
    lines = [header] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = [
        "  ".join(
            [*(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)), line[-1]]
        ).rstrip()
        for line in lines
    ]
    n_complete = sum(r.complete for r in rows)
    n_labelled = sum(r.labelled for r in rows)
    n_problems = sum(bool(r.problems) for r in rows)
    text.append(
        f"{len(rows)} cases: {n_complete} complete, {n_labelled} labelled, {n_problems} with problems"
    )
    return "\n".join(text)


def _cells(row: InspectRow) -> tuple[str, ...]:
    shape = "x".join(str(n) for n in row.shape) if row.shape else "?"
    spacing = "x".join(f"{s:g}" for s in row.spacing) if row.spacing else "?"
    labels = " ".join(f"{k}:{v}" for k, v in sorted(row.label_counts.items())) or "-"
    return (
        row.case_id,
        row.layout,
        row.group or "-",
        ",".join(row.modalities) or "-",
        shape,
        spacing,
        row.orientation or "?",
        labels,
        describe_background(row.background) if row.background else "?",
        "; ".join(row.problems) or "-",
    )


def _header_info(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], str]:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        img: Any = nib.load(path)  # a Nifti1/2Image; nibabel's stubs only know FileBasedImage
        affine = np.asarray(img.affine)
        shape = tuple(int(n) for n in img.shape[:3])
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    else:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        shape = tuple(int(n) for n in reader.GetSize()[:3])
        spacing = tuple(float(s) for s in reader.GetSpacing()[:3])
        direction = np.asarray(reader.GetDirection()).reshape(reader.GetDimension(), -1)[:3, :3]
        affine = affine_from_itk(direction, spacing, reader.GetOrigin()[:3])
    return shape, spacing, "".join(nib.aff2axcodes(affine))


def _label_counts(record: CaseRecord) -> dict[int, int]:
    if record.seg is None:
        return {}
    raw, _ = read_raw(record.seg, case_id=record.case_id)
    flat = raw.ravel(order="K")
    if flat.dtype.kind in "iu" and flat.size and flat.min() >= 0 and flat.max() < 65536:
        counts = np.bincount(flat)
        return {int(v): int(n) for v, n in enumerate(counts) if n}
    # Non-integral values are not counted here; load_case reports them as a problem.
    values, counts = np.unique(flat, return_counts=True)
    return {
        int(v): int(n)
        for v, n in zip(values, counts, strict=True)
        if np.isfinite(v) and float(v).is_integer()
    }
