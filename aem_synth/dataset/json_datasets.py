"""Datasets described by a ``dataset.json``: the Medical Segmentation Decathlon and nnU-Net v2.

Both keep images in ``imagesTr/`` (labelled, with ``labelsTr/``) and ``imagesTs/``
next to a ``dataset.json`` that names the channels and the labels.  Nothing is
assumed: the channel order and the label meaning are read from that file, and
an entry this tool cannot map is an error naming the key.

``msd`` (Task01_BrainTumour)
    ``imagesTr/<case>.nii.gz`` is one 4-D file (X, Y, Z, channel); ``modality``
    maps channel index -> name (``{"0": "FLAIR", "1": "T1w", "2": "t1gd",
    "3": "T2w"}``), ``labels`` maps value -> name (``{"1": "edema", "2":
    "non-enhancing tumor", "3": "enhancing tumour"}``).
``nnunet`` (v2 raw)
    ``imagesTr/<case>_<XXXX><file_ending>``, one 3-D file per channel;
    ``channel_names`` maps channel index -> name, ``labels`` maps name ->
    value, or name -> list of values for region-based datasets (``whole
    tumor: [1, 2, 3], tumor core: [2, 3], enhancing tumor: [3]``).  A missing
    channel file makes an incomplete case.  ``labelsTs/`` is read when present.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aem_synth.errors import DatasetError
from aem_synth.types import MODALITIES, CaseRecord

__all__ = [
    "DATASET_JSON",
    "find_json_datasets",
    "json_dataset_records",
    "label_map_from_names",
    "label_map_from_regions",
    "modality_of",
]

DATASET_JSON = "dataset.json"
_NIFTI = (".nii.gz", ".nii")
_IMAGE_DIRS = ("imagesTr", "imagesTs")

# Normalised names (lower case, letters and digits only) -> internal modality.
_MODALITY_NAMES: dict[str, str] = {
    **dict.fromkeys(("flair", "t2flair", "t2f", "t2wflair"), "flair"),
    **dict.fromkeys(("t1", "t1w", "t1n", "t1native", "t1pre", "t1wpre"), "t1"),
    **dict.fromkeys(
        ("t1ce", "t1gd", "t1c", "t1post", "t1wce", "t1contrast", "t1gad", "t1wgd", "t1cgd"),
        "t1ce",
    ),
    **dict.fromkeys(("t2", "t2w"), "t2"),
}
# Normalised label names -> internal label (0 background, 1 NCR/NET, 2 ED, 3 ET).
_LABEL_NAMES: dict[str, int] = {
    **dict.fromkeys(("background", "bg", "healthy", "normal"), 0),
    **dict.fromkeys(
        (
            "nonenhancingtumor",
            "nonenhancingtumour",
            "nonenhancing",
            "necrosis",
            "necrotic",
            "ncr",
            "net",
            "ncrnet",
            "netc",
            "necroticcore",
            "necrotictumorcore",
            "nonenhancingtumorcore",
            "nonenhancingandnecrosis",
            "necrosisandnonenhancingtumor",
            "necroticandnonenhancingtumorcore",
        ),
        1,
    ),
    **dict.fromkeys(
        ("edema", "oedema", "peritumoraledema", "ed", "snfh", "peritumoraledematissue"), 2
    ),
    **dict.fromkeys(("enhancingtumor", "enhancingtumour", "enhancing", "et"), 3),
}
_REGION_NAMES: dict[str, str] = {
    **dict.fromkeys(("wholetumor", "wholetumour", "wt", "whole"), "wt"),
    **dict.fromkeys(("tumorcore", "tumourcore", "tc", "core"), "tc"),
    **dict.fromkeys(("enhancingtumor", "enhancingtumour", "et", "enhancing"), "et"),
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def modality_of(name: str, where: str) -> str:
    """Internal modality of a channel name (``"t1gd"`` -> ``"t1ce"``).

    Raises
    ------
    DatasetError
        An unknown name; the message names ``where`` (file and key).
    """
    found = _MODALITY_NAMES.get(_norm(name))
    if found is None:
        raise DatasetError(
            f"{where}: channel name {name!r} is not one of FLAIR, T1, T1ce (T1gd, T1c), T2 "
            "(or their usual spellings)"
        )
    return found


def _label_of(name: str) -> int | None:
    """Internal label of a label name: the table, then the word stems it must contain."""
    n = _norm(name)
    if n in _LABEL_NAMES:
        return _LABEL_NAMES[n]
    if "necro" in n or "nonenhanc" in n:
        return 1
    if "edema" in n or "oedema" in n:
        return 2
    if n.startswith("enhanc"):
        return 3
    return None


def label_map_from_names(
    labels: Mapping[Any, Any], where: str, *, names_are_keys: bool
) -> dict[int, int]:
    """On-disk value -> internal label from a ``labels`` entry of value/name pairs.

    ``names_are_keys``: nnU-Net's ``{name: value}``; else MSD's ``{"value": name}``.

    Raises
    ------
    DatasetError
        A name this tool cannot map or a value that is not an integer (naming the key).
    """
    out: dict[int, int] = {}
    for key, item in labels.items():
        name, value = (key, item) if names_are_keys else (item, key)
        internal = _label_of(name)
        if internal is None:
            raise DatasetError(
                f"{where}: label {name!r} (labels[{key!r}]) is not background, edema, "
                "non-enhancing tumour / necrosis or enhancing tumour"
            )
        try:
            out[int(value)] = internal
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: labels[{key!r}] = {value!r} is not an integer") from None
    if out.get(0, 0) != 0:
        raise DatasetError(f"{where}: label value 0 must be background")
    out.setdefault(0, 0)
    return out


def label_map_from_regions(labels: Mapping[str, Any], where: str) -> dict[int, int]:
    """On-disk value -> internal label from nnU-Net region labels (``whole tumor: [1, 2, 3]``).

    A value in the enhancing region is ET, in the core but not enhancing NCR/NET,
    in the whole tumour only edema.

    Raises
    ------
    DatasetError
        Unknown region names, regions that are not nested (ET in TC in WT), or no
        whole-tumour region (naming the key).
    """
    regions: dict[str, set[int]] = {}
    for name, values in labels.items():
        kind = _REGION_NAMES.get(_norm(name))
        vals = {int(v) for v in (values if isinstance(values, list) else [values])}
        if _label_of(name) == 0 and kind is None:
            if vals != {0}:
                raise DatasetError(f"{where}: labels[{name!r}] (background) must be 0")
            continue
        if kind is None:
            raise DatasetError(
                f"{where}: region label {name!r} is not whole tumour, tumour core or enhancing tumour"
            )
        regions[kind] = vals
    wt, tc, et = regions.get("wt"), regions.get("tc", set()), regions.get("et", set())
    if wt is None or not (et <= tc <= wt):
        raise DatasetError(
            f"{where}: region labels must hold a whole tumour region and nest as "
            f"enhancing <= core <= whole, got {regions}"
        )
    out = {0: 0}
    for v in sorted(wt):
        out[v] = 3 if v in et else 1 if v in tc else 2
    return out


def find_json_datasets(files: Iterable[Path]) -> list[Path]:
    """Folders holding a ``dataset.json`` beside ``imagesTr/`` or ``imagesTs/``."""
    found = []
    for path in files:
        if path.name == DATASET_JSON and any((path.parent / d).is_dir() for d in _IMAGE_DIRS):
            found.append(path.parent)
    return sorted(set(found))


def _read_json(folder: Path) -> dict[str, Any]:
    path = folder / DATASET_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read dataset.json ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: dataset.json must hold an object")
    return data


def json_dataset_records(folder: Path) -> list[CaseRecord]:
    """Every case of an MSD or nnU-Net dataset folder.

    Raises
    ------
    DatasetError
        ``dataset.json`` is unreadable, is neither MSD (``modality``) nor nnU-Net
        (``channel_names``), or holds a channel or label this tool cannot map;
        the message names the file and the key.
    """
    data = _read_json(folder)
    where = str(folder / DATASET_JSON)
    if "channel_names" in data:
        return _nnunet_records(folder, data, where)
    if "modality" in data:
        return _msd_records(folder, data, where)
    raise DatasetError(
        f"{where}: neither an MSD dataset.json (key 'modality') nor an nnU-Net v2 one "
        f"(key 'channel_names'); keys found: {sorted(data)}"
    )


def _channel_map(entry: Any, key: str, where: str) -> dict[str, int]:
    if not isinstance(entry, dict) or not entry:
        raise DatasetError(f"{where}: {key!r} must map channel indices to names, got {entry!r}")
    out: dict[str, int] = {}
    for index, name in entry.items():
        modality = modality_of(name, f"{where} {key}[{index!r}]")
        if modality in out:
            raise DatasetError(f"{where}: {key} names {modality} twice")
        try:
            out[modality] = int(index)
        except ValueError:
            raise DatasetError(f"{where}: {key} index {index!r} is not an integer") from None
    return out


def _label_pairs(mapping: Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(mapping.items()))


def _msd_records(folder: Path, data: dict[str, Any], where: str) -> list[CaseRecord]:
    channels = _channel_map(data["modality"], "modality", where)
    labels = data.get("labels")
    if not isinstance(labels, dict):
        raise DatasetError(f"{where}: 'labels' must map values to names, got {labels!r}")
    label_map = _label_pairs(label_map_from_names(labels, where, names_are_keys=False))
    records = []
    for sub in _IMAGE_DIRS:
        for image in _images(folder / sub, _NIFTI):
            case_id = _stem(image.name)
            seg = _label_file(folder, sub, image.name)
            records.append(
                _record(
                    case_id,
                    "msd",
                    folder,
                    {m: image for m in channels},
                    seg,
                    channels,
                    label_map,
                    [],
                )
            )
    return records


def _nnunet_records(folder: Path, data: dict[str, Any], where: str) -> list[CaseRecord]:
    channels = _channel_map(data["channel_names"], "channel_names", where)
    by_index = {i: m for m, i in channels.items()}
    labels = data.get("labels")
    if not isinstance(labels, dict):
        raise DatasetError(f"{where}: 'labels' must map names to values, got {labels!r}")
    regions = any(isinstance(v, list) for v in labels.values())
    mapping = (
        label_map_from_regions(labels, where)
        if regions
        else label_map_from_names(labels, where, names_are_keys=True)
    )
    ending = str(data.get("file_ending", ".nii.gz"))
    if ending not in _NIFTI:
        raise DatasetError(f"{where}: file_ending {ending!r}: only NIfTI (.nii.gz, .nii) is read")
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
    records = []
    for sub in _IMAGE_DIRS:
        cases: dict[str, dict[str, Path]] = {}
        notes: dict[str, list[str]] = {}
        for image in _images(folder / sub, (ending,)):
            match = pattern.match(image.name)
            if match is None:
                continue
            case_id, index = match.group("case"), int(match.group("ch"))
            files = cases.setdefault(case_id, {})
            if index in by_index:
                files[by_index[index]] = image
            else:
                notes.setdefault(case_id, []).append(
                    f"channel {index} ({image.name}) is not in channel_names, ignored"
                )
        for case_id, files in sorted(cases.items()):
            seg = _label_file(folder, sub, f"{case_id}{ending}")
            problems = notes.get(case_id, []) + [
                f"incomplete: missing {m} ({case_id}_{channels[m]:04d}{ending})"
                for m in MODALITIES
                if m in channels and m not in files
            ]
            records.append(
                _record(
                    case_id, "nnunet", folder, files, seg, None, _label_pairs(mapping), problems
                )
            )
    return records


def _images(folder: Path, endings: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.name.lower().endswith(endings)
        and (p.is_file() or p.is_symlink())
    )


def _stem(name: str) -> str:
    for ending in _NIFTI:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def _label_file(folder: Path, images_dir: str, name: str) -> Path | None:
    labels = folder / images_dir.replace("images", "labels") / name
    return labels if labels.is_file() else None


def _record(
    case_id: str,
    layout: str,
    folder: Path,
    modalities: dict[str, Path],
    seg: Path | None,
    channels: dict[str, int] | None,
    label_map: tuple[tuple[int, int], ...],
    problems: list[str],
) -> CaseRecord:
    problems = list(problems)
    if channels is not None:
        problems += [
            f"incomplete: dataset.json has no {m} channel" for m in MODALITIES if m not in channels
        ]
    if seg is None:
        problems.append("unlabelled: no file in labelsTr/ (or labelsTs/)")
    return CaseRecord(
        case_id=case_id,
        layout=layout,
        directory=folder,
        modalities={m: modalities[m] for m in MODALITIES if m in modalities},
        seg=seg,
        problems=tuple(problems),
        channels=None
        if channels is None
        else {m: channels[m] for m in MODALITIES if m in channels},
        label_map=label_map,
    )
