"""Worker-side task functions of the build (run inside Dask workers).

Two kinds of task (DESIGN §6):

* :func:`prepare_case`: load one case, z-score it in the full canonical grid,
  calibrate its mirror plane and write the per-case intermediate file
  (:mod:`aem_synth.store.cache`); returns only a small :class:`CaseSummary`.
* :func:`run_shard`: read the intermediates it needs (kept cropped to their
  brain boxes), build its samples one at a time (real: the crop; synthetic:
  AEM / mixup synthesis directly on the anatomy's brain box) and write
  exactly one shard with :func:`aem_synth.store.shards.write_shard`, then its
  completion record.

Completion records (``<shard>.done.json``) are written after the shard's
atomic rename and hold its sha256, sample ids and the plan fingerprint; a
resumed build reuses a shard only when all three still match
(:func:`finished_shard`).
"""

from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from aem_synth.build.tuning import worker_task
from aem_synth.errors import CaseError
from aem_synth.paths import temp_sibling
from aem_synth.store.cache import CachedCase, CaseSummary, read_case, read_summary, write_case
from aem_synth.store.shards import (
    DEFAULT_CHUNK,
    DEFAULT_CODEC,
    Sample,
    ShardInfo,
    sha256_file,
    write_shard,
)
from aem_synth.types import Box, CaseRecord

__all__ = [
    "CaseFailure",
    "ShardSpec",
    "done_path",
    "finished_shard",
    "prepare_case",
    "real_meta",
    "run_shard",
    "source_key",
    "synthesise",
]


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be prepared, with the reason (reported, not fatal)."""

    case_id: str
    reason: str


@dataclass(frozen=True)
class ShardSpec:
    """Everything one shard task needs (small; sent through the scheduler).

    Attributes
    ----------
    file : str
        Shard path relative to the store root (``real/train-00000.h5``).
    kind : str
        ``"real"`` or ``"synthetic"``.
    split : str
        ``"train"``/``"val"``/``"test"`` for real shards, ``"train"`` for synthetic.
    items : tuple
        Real: ``(case_id, ...)``.  Synthetic: ``((sample_id, pair_dict), ...)``
        where ``pair_dict`` holds the fields of :class:`aem_synth.synthesis.pairing.Pair`.
    fingerprint : str
        Hash of everything that determines the shard's content.
    mode, method : str
        AEM mode (``"signed"``/``"abs"``) and method (``"aem"``/``"mixup"``).
    diversity : bool
        Allow mirroring the tumour to the other hemisphere.
    codec : str
    chunk : tuple of int
    """

    file: str
    kind: str
    split: str
    items: tuple[Any, ...]
    fingerprint: str
    mode: str = "signed"
    method: str = "aem"
    diversity: bool = False
    codec: str = DEFAULT_CODEC
    chunk: tuple[int, int, int] = DEFAULT_CHUNK


def jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and Paths to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def source_key(record: CaseRecord) -> str:
    """Fingerprint of a case's source files: names, sizes and modification times."""
    import hashlib

    files = sorted((str(k), p) for k, p in record.modalities.items())
    if record.seg is not None:
        files.append(("seg", record.seg))
    parts = [record.case_id, record.layout]
    for name, path in files:
        try:
            st = Path(path).stat()
        except OSError:  # a broken link or a vanished file: loading the case reports it
            parts.append(f"{name}={path}:unreadable")
            continue
        parts.append(f"{name}={Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def prepare_case(record: CaseRecord, work_dir: str, key: str) -> CaseSummary | CaseFailure:
    """Load, normalise and calibrate one case; write its intermediate file.

    Returns the cached summary unchanged when the intermediate already exists
    for the same source files (resume).  A case that cannot be used yields a
    :class:`CaseFailure` instead of raising, so one bad case never fails the
    task (and is not pointlessly retried).
    """
    work = Path(work_dir)
    cached = read_summary(work, record.case_id)
    if cached is not None and cached.source_key == key:
        return cached
    # Tuned here, not at worker start: external clusters start workers without it.
    with worker_task():
        try:
            return _prepare(record, work, key)
        except CaseError as exc:
            return CaseFailure(record.case_id, exc.reason)
        except (OSError, EOFError, zlib.error) as exc:
            return CaseFailure(record.case_id, f"cannot read its files: {exc}")


def _prepare(record: CaseRecord, work: Path, key: str) -> CaseSummary:
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import bounding_box, case_brain_mask, crop, normalise
    from aem_synth.synthesis.calibrate import calibrate

    loaded = load_case(record, require_label=True)
    mask = np.ascontiguousarray(case_brain_mask(loaded))
    box = bounding_box(mask)
    # Only the brain box is z-scored and stored: the image is exactly 0 outside it.
    image, mask_box, stats = normalise(
        crop(loaded.image, box), loaded.present, crop(mask, box), case_id=record.case_id
    )
    label = loaded.label if loaded.label is not None else np.zeros(mask.shape, np.uint8)
    geo = loaded.geometry
    summary = CaseSummary(
        case_id=record.case_id,
        layout=record.layout,
        source_key=key,
        full_shape=tuple(int(s) for s in mask.shape),  # type: ignore[arg-type]
        box=tuple((int(a), int(b)) for a, b in box),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in geo.spacing),  # type: ignore[arg-type]
        present=tuple(bool(p) for p in loaded.present),  # type: ignore[arg-type]
        has_tumour=bool((label > 0).any()),
        stats=jsonable(stats),
        geometry=jsonable(
            {
                "original_shape": geo.original_shape,
                "original_affine": geo.original_affine,
                "canonical_affine": geo.canonical_affine,
                "ornt": geo.ornt,
            }
        ),
        calibration=jsonable(calibrate(mask, geo.spacing, case_id=record.case_id).to_dict()),
        problems=tuple(record.problems),
    )
    write_case(work, summary, image, crop(label, box), mask_box)
    return summary


def real_meta(summary: CaseSummary, split: str) -> dict[str, Any]:
    """Meta of a real sample (keys relied on by training and evaluation)."""
    geo = summary.geometry
    return {
        "kind": "real",
        "sample_id": summary.case_id,
        "case_id": summary.case_id,
        "split": split,
        "layout": summary.layout,
        "crop_box": [list(r) for r in summary.box],
        "full_shape": list(summary.full_shape),
        "spacing": list(summary.spacing),
        "original_shape": geo.get("original_shape"),
        "original_affine": geo.get("original_affine"),
        "canonical_affine": geo.get("canonical_affine"),
        "ornt": geo.get("ornt"),
        "present": list(summary.present),
        "stats": summary.stats,
        # Wall-clock seconds stay in the manifest's per-case record: in the sample they
        # would make two identical builds write different shard bytes and checksums.
        "calibration": {k: v for k, v in summary.calibration.items() if k != "seconds"},
    }


def _real_samples(spec: ShardSpec, work: Path) -> Iterator[Sample]:
    for case_id in spec.items:
        case = read_case(work, case_id, full_grid=False)
        yield Sample(case_id, case.image, case.label, real_meta(case.summary, spec.split))


class _CaseCache:
    """The last ``size`` cases read (cropped to their brain box), so pairs sharing A read it once."""

    def __init__(self, work: Path, size: int = 2) -> None:
        self.work = work
        self.size = size
        self._cases: OrderedDict[str, CachedCase] = OrderedDict()

    def get(self, case_id: str) -> CachedCase:
        if case_id in self._cases:
            self._cases.move_to_end(case_id)
            return self._cases[case_id]
        case = read_case(self.work, case_id, full_grid=False)
        self._cases[case_id] = case
        while len(self._cases) > self.size:
            self._cases.popitem(last=False)
        return case


def synthesise(
    pair: dict[str, Any],
    anatomy: CachedCase,
    donor: CachedCase,
    *,
    mode: str,
    method: str,
    diversity: bool,
    box: Box | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic sample, on ``box`` of the canonical grid (default: the whole grid).

    ``anatomy`` and ``donor`` may be full-grid or cropped to their brain box
    (:func:`synthesis_input`); the arrays are the same either way.

    Returns
    -------
    image : ndarray, float32, (4, bx, by, bz)
    label : ndarray, uint8, (bx, by, bz)
    params : dict
        ``SynthesisParams.to_dict()``: replaying it gives the same arrays.
    """
    from aem_synth.synthesis.mirror import MirrorPlane
    from aem_synth.synthesis.pairing import Pair
    from aem_synth.synthesis.sample import apply, sample_params

    plane = MirrorPlane.from_dict(donor.summary.calibration["plane"])
    # BuildOptions has validated mode and method against the Literal types.
    params = sample_params(
        Pair(**pair), plane, mode=cast(Any, mode), method=cast(Any, method), diversity=diversity
    )
    image, label = apply(params, synthesis_input(anatomy), synthesis_input(donor), box=box)
    return image, label, jsonable(params.to_dict())


def synthesis_input(case: CachedCase) -> Any:
    """The :class:`aem_synth.synthesis.sample.SynthesisInput` of a prepared case.

    A case read with ``full_grid=False`` (arrays shaped like its brain box)
    becomes a crop at the box's origin; otherwise a full-grid input.
    """
    from aem_synth.synthesis.sample import SynthesisInput

    summary = case.summary
    cropped = tuple(case.mask.shape) != tuple(summary.full_shape)
    return SynthesisInput(
        case_id=summary.case_id,
        image=case.image,
        label=case.label,
        brain_mask=case.mask,
        spacing=summary.spacing,
        origin=tuple(a for a, _ in summary.box) if cropped else (0, 0, 0),  # type: ignore[arg-type]
        grid=summary.full_shape,
    )


def _synthetic_samples(spec: ShardSpec, work: Path) -> Iterator[Sample]:
    cache = _CaseCache(work)
    for sample_id, pair in spec.items:
        a = cache.get(pair["anatomy"])
        b = cache.get(pair["donor"])
        # The sample is stored cropped to A's brain box: only that box is built.
        image, label, params = synthesise(
            pair,
            a,
            b,
            mode=spec.mode,
            method=spec.method,
            diversity=spec.diversity,
            box=a.summary.box,
        )
        # Channels absent in A or B (only with --allow-incomplete) stay absent.
        present = [
            bool(pa and pb) for pa, pb in zip(a.summary.present, b.summary.present, strict=True)
        ]
        for c, ok in enumerate(present):
            if not ok:
                image[c] = 0.0
        meta = {
            "kind": "synthetic",
            "sample_id": sample_id,
            "anatomy": pair["anatomy"],
            "donor": pair["donor"],
            "crop_box": [list(r) for r in a.summary.box],
            "full_shape": list(a.summary.full_shape),
            "spacing": list(a.summary.spacing),
            "present": present,
            "params": params,
        }
        yield Sample(sample_id, image, label, meta)
        del image, label


def done_path(root: Path, file: str) -> Path:
    """Completion record of a shard: ``<shard>.done.json`` next to it."""
    path = root / file
    return path.with_name(f"{path.name}.done.json")


def run_shard(spec: ShardSpec, root: str, work_dir: str) -> ShardInfo:
    """Build and write one shard, then its completion record; return its manifest entry."""
    out, work = Path(root), Path(work_dir)
    # Idempotent: Dask reruns a finished task whose result was lost with its worker.
    finished = finished_shard(out, spec)
    if finished is not None:
        return finished
    samples = _real_samples(spec, work) if spec.kind == "real" else _synthetic_samples(spec, work)
    with worker_task():
        info = write_shard(
            out / spec.file,
            samples,
            root=out,
            kind=spec.kind,
            split=spec.split,
            codec=spec.codec,
            chunk=spec.chunk,
        )
    record = done_path(out, spec.file)
    tmp = temp_sibling(record)
    tmp.write_text(json.dumps({**info.to_dict(), "fingerprint": spec.fingerprint}, sort_keys=True))
    os.replace(tmp, record)
    return info


def finished_shard(root: Path, spec: ShardSpec) -> ShardInfo | None:
    """The shard's entry when a previous run finished it with the same plan, else None.

    Requires the completion record, an equal fingerprint and the file's
    current sha256 equal to the recorded one.
    """
    record = done_path(root, spec.file)
    path = root / spec.file
    if not (record.is_file() and path.is_file()):
        return None
    try:
        data = json.loads(record.read_text())
        info = ShardInfo.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if data.get("fingerprint") != spec.fingerprint or sha256_file(path) != info.sha256:
        return None
    return info
