"""Find BraTS cases on disk, whatever the release layout and nesting depth.

A case is identified by its files' names (NIfTI layouts: ``<case>_t1.nii.gz`` /
``<case>-t1n.nii.gz``) or by the folder holding its ``VSD.Brain`` sub-folders
(``brats2015``).  Incomplete and unlabelled cases are returned with their
``problems`` filled in, never dropped.  Image files in a case folder that
do not follow the naming of that folder's case (``copy_of_<case>_flair.nii.gz``,
``flair_old.nii.gz``) are listed in the case's ``problems`` and ignored, never
turned into cases of their own; a broken symbolic link named as a case file
stays in the record so that loading it fails naming the link.  Two cases with the same id in different
folders make the root unusable (``DatasetError`` naming both folders): ids key
splits, shards and predictions, so they must be unique.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from aem_synth.dataset.json_datasets import DATASET_JSON, find_json_datasets, json_dataset_records
from aem_synth.dataset.layouts import LAYOUTS, SEG, Layout, resolve_layout
from aem_synth.errors import CaseError, DatasetError
from aem_synth.types import MODALITIES, CaseRecord

__all__ = ["discover", "discover_case"]

_GROUPS = ("HGG", "LGG")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

# (layout name, case directory, case id) -> kind -> files
_Groups = dict[tuple[str, Path, str], dict[str, list[Path]]]
# case directory -> notes on the files set aside there
_Notes = dict[Path, list[str]]


def discover(root: Path | str, layout: str | None = None) -> list[CaseRecord]:
    """Find every case below ``root``.

    Parameters
    ----------
    root : Path or str
        Dataset root; cases may sit at any depth (``MICCAI_BraTS2020_TrainingData/``,
        ``HGG/``, ``LGG/``...).
    layout : str, optional
        Force one layout (name or alias, see ``aem_synth.dataset.layouts``); by default
        each case's layout is detected from its file names.

    Returns
    -------
    list of CaseRecord
        Sorted by ``case_id``.

    Raises
    ------
    DatasetError
        Missing or empty root, unknown layout, no recognisable case, or the same
        case id in two folders.
    """
    root = Path(root)
    layouts = _candidate_layouts(layout)
    if not root.exists():
        raise DatasetError(f"dataset root does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset root is not a folder: {root}")
    if not any(root.iterdir()):
        raise DatasetError(f"dataset root is empty: {root}")
    files = _walk_files(root)
    json_roots = (
        find_json_datasets(files) if any(lay.file_format == "json" for lay in layouts) else []
    )
    records = [
        r
        for folder in json_roots
        for r in json_dataset_records(folder)
        if r.layout in {lay.name for lay in layouts}
    ]
    # Files of a dataset.json dataset are read through it, never by their names.
    files = [f for f in files if not any(f.is_relative_to(d) for d in json_roots)]
    groups, notes = _classify(files, layouts)
    if not groups and not records:
        names = ", ".join(lay.name for lay in layouts)
        raise DatasetError(f"no BraTS case found under {root} (layouts tried: {names})")
    records += [_record(key, found, notes.get(key[1], [])) for key, found in groups.items()]
    _check_unique(records)
    return sorted(records, key=lambda r: r.case_id)


def discover_case(case_dir: Path | str, layout: str | None = None) -> CaseRecord:
    """Describe a single patient folder (used for prediction).

    Any non-empty subset of modalities is accepted; missing ones are listed in
    ``problems``.  Files are looked for directly in ``case_dir`` and, for
    ``brats2015``, in its ``VSD.Brain*`` sub-folders.  An image file of an MSD
    or nnU-Net dataset (``.../imagesTs/<case>.nii.gz`` or any channel file of
    the case) stands for its case.

    Raises
    ------
    CaseError
        The folder does not exist, holds no modality file, or holds files of
        several cases.
    DatasetError
        Unknown ``layout`` name.
    """
    case_dir = Path(case_dir)
    layouts = _candidate_layouts(layout)
    if case_dir.is_file():
        return _json_case(case_dir)
    if not case_dir.is_dir():
        raise CaseError(case_dir.name, f"case folder does not exist: {case_dir}")
    files = [p for p in sorted(case_dir.iterdir()) if _is_file_or_link(p)]
    for sub in sorted(p for p in case_dir.iterdir() if p.is_dir()):
        if LAYOUTS["brats2015"].parse(sub.name) is not None:
            files.extend(p for p in sorted(sub.iterdir()) if _is_file_or_link(p))
    groups, notes = _classify(files, layouts)
    if len(groups) > 1:
        ids = sorted(case_id for _, _, case_id in groups)
        raise CaseError(case_dir.name, f"{case_dir} holds files of several cases: {ids}")
    records = [_record(key, found, notes.get(key[1], [])) for key, found in groups.items()]
    if not records or not records[0].modalities:
        raise CaseError(case_dir.name, f"no modality file found in {case_dir}")
    return records[0]


def _json_case(image: Path) -> CaseRecord:
    """The case of an image file of an MSD or nnU-Net dataset (``imagesTs/<case>...``)."""
    folder = image.parent.parent
    if not (folder / DATASET_JSON).is_file():
        raise CaseError(
            image.name,
            f"{image} is a file; give a case folder, or an image of a dataset folder holding "
            f"{DATASET_JSON} (MSD, nnU-Net)",
        )
    for record in json_dataset_records(folder):
        if any(Path(p) == image for p in record.modalities.values()):
            return record
    raise CaseError(
        image.name, f"{image} is not an image of the dataset described by {folder / DATASET_JSON}"
    )


def _candidate_layouts(layout: str | None) -> list[Layout]:
    if layout is None or layout == "auto":
        return list(LAYOUTS.values())
    return [resolve_layout(layout)]


def _walk_files(root: Path) -> list[Path]:
    """Files below ``root``, following symlinked folders once each (links into a folder
    already walked, such as an ancestor, are not entered, so link cycles end)."""
    files: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in seen
        )
        files.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files


def _is_file_or_link(path: Path) -> bool:
    """A file, or a symbolic link that is not a folder (a broken link included)."""
    return path.is_file() or (path.is_symlink() and not path.is_dir())


def _classify(files: Iterable[Path], layouts: Sequence[Layout]) -> tuple[_Groups, _Notes]:
    """Group files by (layout, case folder, case id) and kind.

    Returns the groups, and per folder the notes on image files set aside: names
    that no layout knows, and files named for another case than the one the folder
    is named after.  Files that are not images (``.json``, ``.txt``) are ignored.
    """
    groups: _Groups = defaultdict(lambda: defaultdict(list))
    unknown: dict[Path, list[str]] = defaultdict(list)
    for path in files:
        found = _classify_file(path, layouts)
        if found is not None:
            layout_name, case_dir, case_id, kind = found
            groups[(layout_name, case_dir, case_id)][kind].append(path)
        elif path.name.lower().endswith((*_NIFTI_SUFFIXES, ".mha")):
            unknown[path.parent].append(path.name)
    notes: _Notes = defaultdict(list)
    for folder, names in unknown.items():
        notes[folder].append(f"unrecognised image file(s) ignored: {', '.join(names)}")
    for key in _strays(groups):
        stray = groups.pop(key)
        listed = ", ".join(p.name for paths in stray.values() for p in paths)
        notes[key[1]].append(
            f"file(s) not named for the folder's case {key[1].name!r}, ignored: {listed}"
        )
    return groups, notes


def _strays(groups: _Groups) -> list[tuple[str, Path, str]]:
    """Groups sharing a folder with the case the folder is named after (copies, leftovers)."""
    by_folder: dict[Path, list[tuple[str, Path, str]]] = defaultdict(list)
    for key in groups:
        if LAYOUTS[key[0]].file_format == "nifti":
            by_folder[key[1]].append(key)
    strays = []
    for folder, keys in by_folder.items():
        if len(keys) > 1 and any(case_id == folder.name for _, _, case_id in keys):
            strays += [k for k in keys if k[2] != folder.name]
    return strays


def _classify_file(path: Path, layouts: Sequence[Layout]) -> tuple[str, Path, str, str] | None:
    name = path.name
    for lay in layouts:
        if lay.file_format == "nifti" and name.lower().endswith(_NIFTI_SUFFIXES):
            parsed = lay.parse(name)
            if parsed is not None:
                return lay.name, path.parent, parsed[0], parsed[1]
        elif lay.file_format == "mha" and name.lower().endswith(".mha"):
            parsed = lay.parse(name[: -len(".mha")])
            if parsed is not None:
                # Files sit in VSD.Brain* sub-folders of the case folder, or directly in it.
                in_sub = lay.parse(path.parent.name) is not None
                case_dir = path.parent.parent if in_sub else path.parent
                return lay.name, case_dir, case_dir.name, parsed[1]
    return None


def _record(
    key: tuple[str, Path, str], files: dict[str, list[Path]], notes: Sequence[str] = ()
) -> CaseRecord:
    layout_name, case_dir, case_id = key
    lay = LAYOUTS[layout_name]
    problems: list[str] = list(notes)
    for paths in files.values():
        problems += [f"broken symbolic link: {p} -> {os.readlink(p)}" for p in paths if _broken(p)]
    for kind, paths in files.items():
        if len(paths) > 1:
            listed = ", ".join(str(p) for p in paths)
            problems.append(f"several {kind} files, using the first: {listed}")
    modalities = {m: files[m][0] for m in MODALITIES if files.get(m)}
    for m in MODALITIES:
        if m not in modalities:
            problems.append(f"incomplete: missing {m} ({lay.expected_name(case_id, m)})")
    seg = files[SEG][0] if files.get(SEG) else None
    if seg is None:
        problems.append(f"unlabelled: no segmentation ({lay.expected_name(case_id, SEG)})")
    return CaseRecord(
        case_id=case_id,
        layout=layout_name,
        directory=case_dir,
        modalities=modalities,
        seg=seg,
        group=_group_of(case_dir),
        problems=tuple(problems),
    )


def _broken(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _group_of(case_dir: Path) -> str | None:
    for part in (case_dir.parent.name, case_dir.name):
        if part.upper() in _GROUPS:
            return part.upper()
    return None


def _check_unique(records: list[CaseRecord]) -> None:
    folders: dict[str, list[Path]] = defaultdict(list)
    for rec in records:
        folders[rec.case_id].append(rec.directory)
    dups = {cid: dirs for cid, dirs in folders.items() if len(dirs) > 1}
    if dups:
        detail = "; ".join(
            f"{cid!r} in {' and '.join(str(d) for d in dirs)}" for cid, dirs in sorted(dups.items())
        )
        raise DatasetError(f"duplicate case ids: {detail}")
