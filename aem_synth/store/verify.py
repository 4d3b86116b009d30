"""Check a finished shard store against its manifest (``aem-synth verify``).

Checks, each reported as one readable problem line:

* the manifest exists and has this tool's schema; its ``store_id`` matches
  its options, splits and shard checksums (stores that record a ``build_id``;
  see :mod:`aem_synth.store.identity`);
* every listed shard exists and its sha256 matches; no shard file on disk is
  missing from the manifest;
* shard attributes (schema version, kind, split, sample count) agree with
  the manifest entry; every listed sample is in the file and nothing else;
* per sample: ``image`` is (4, X, Y, Z), ``label`` is (X, Y, Z) uint8 with
  values in {0, 1, 2, 3}, ``meta`` is JSON of the right kind;
* sample ids are unique across the store, and there is at least one;
* no split leakage: the real split memberships are disjoint, every real
  sample sits in its manifest split, and both the anatomy and the donor of
  every synthetic sample are training cases.

:func:`quick_check` runs the subset that reads no shard bytes (store id,
splits, shard files present with their recorded sizes, no unlisted shard):
what ``aem-synth info`` checks unless asked for the full pass.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aem_synth.errors import ShardError
from aem_synth.store.identity import manifest_store_id
from aem_synth.store.shards import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    ShardReader,
    read_manifest,
    sha256_file,
)

__all__ = ["VALID_LABELS", "VerifyReport", "quick_check", "verify_store"]

VALID_LABELS = frozenset({0, 1, 2, 3})


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`.

    Attributes
    ----------
    root : Path
    problems : list of str
        One line per problem, naming the shard / sample, the rule and the value.
    shards, samples : int
        Shards and samples checked.
    """

    root: Path
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        head = f"{self.root}: {self.shards} shards, {self.samples} samples"
        if self.ok:
            return f"{head}: OK"
        return "\n".join([f"{head}: {len(self.problems)} problem(s)", *self.problems])


def verify_store(root: Path | str) -> VerifyReport:
    """Verify every checksum, schema, shape, label set and split rule of a store."""
    root = Path(root)
    report = VerifyReport(root)
    try:
        manifest = read_manifest(root)
    except ShardError as exc:
        report.problems.append(str(exc))
        return report
    splits = {k: set(v) for k, v in manifest.get("splits", {}).items()}
    _check_store_id(manifest, report)
    _check_splits(splits, report)
    ids: Counter[str] = Counter()
    listed: set[str] = set()
    for entry in manifest.get("shards", []):
        listed.add(entry["file"])
        report.shards += 1
        ids.update(entry["samples"])
        _check_shard(root, entry, splits, report)
    report.problems += [f"sample id {sid!r} appears {n} times" for sid, n in ids.items() if n > 1]
    if not ids:
        report.problems.append("the store holds no sample (an empty store is not usable)")
    _check_unlisted(root, listed, report)
    return report


def quick_check(root: Path | str, manifest: dict[str, Any] | None = None) -> VerifyReport:
    """The checks of :func:`verify_store` that read no shard bytes.

    The store id against the manifest, split disjointness, every listed shard
    present with the size the manifest records, no shard file the manifest
    does not list.  Damaged bytes of the right size pass: only
    :func:`verify_store` (SHA-256 of every shard) finds them.

    Parameters
    ----------
    root : Path or str
        The store.
    manifest : dict, optional
        Its manifest, when already read (else read here; errors are problems).
    """
    root = Path(root)
    report = VerifyReport(root)
    if manifest is None:
        try:
            manifest = read_manifest(root)
        except ShardError as exc:
            report.problems.append(str(exc))
            return report
    _check_store_id(manifest, report)
    _check_splits({k: set(v) for k, v in manifest.get("splits", {}).items()}, report)
    listed: set[str] = set()
    for entry in manifest.get("shards", []):
        listed.add(entry["file"])
        report.shards += 1
        report.samples += len(entry["samples"])
        _check_file_size(root, entry, report)
    if not report.samples:
        report.problems.append("the store holds no sample (an empty store is not usable)")
    _check_unlisted(root, listed, report)
    return report


def _check_store_id(manifest: dict[str, Any], report: VerifyReport) -> None:
    if "build_id" not in manifest:
        return  # an id written before ids covered shard checksums: nothing to recompute
    recorded, computed = manifest.get("store_id"), manifest_store_id(manifest)
    if recorded != computed:
        report.problems.append(
            f"{MANIFEST_NAME}: store_id {recorded!r} does not match its options, splits and "
            f"shard checksums ({computed!r}); the manifest was edited or damaged"
        )


def _check_file_size(root: Path, entry: dict[str, Any], report: VerifyReport) -> None:
    file = entry["file"]
    try:
        size = (root / file).stat().st_size
    except OSError:
        report.problems.append(f"{file}: listed in the manifest but missing")
        return
    if "bytes" in entry and size != int(entry["bytes"]):
        report.problems.append(
            f"{file}: {size} bytes on disk, the manifest records {entry['bytes']} "
            "(truncated or replaced)"
        )


def _check_unlisted(root: Path, listed: set[str], report: VerifyReport) -> None:
    for sub in ("real", "synthetic"):
        for path in sorted((root / sub).glob("*.h5")):
            rel = f"{sub}/{path.name}"
            if rel not in listed:
                report.problems.append(f"{rel}: shard file on disk is not in the manifest")


def _check_splits(splits: dict[str, set[str]], report: VerifyReport) -> None:
    names = sorted(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(splits[a] & splits[b])
            if both:
                report.problems.append(f"split leakage: {both} in both {a} and {b}")


def _check_shard(
    root: Path, entry: dict[str, Any], splits: dict[str, set[str]], report: VerifyReport
) -> None:
    file = entry["file"]
    path = root / file
    if not path.is_file():
        report.problems.append(f"{file}: listed in the manifest but missing")
        return
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        report.problems.append(
            f"{file}: sha256 {digest[:16]}... != manifest {entry['sha256'][:16]}..."
        )
    try:
        with ShardReader(path) as reader:
            _check_attrs(file, reader.attrs, entry, report)
            keys = reader.keys()
            missing = sorted(set(entry["samples"]) - set(keys))
            extra = sorted(set(keys) - set(entry["samples"]))
            if missing:
                report.problems.append(f"{file}: samples listed but absent: {missing}")
            if extra:
                report.problems.append(f"{file}: samples not in the manifest: {extra}")
            for sid in keys:
                report.samples += 1
                _check_sample(file, reader, sid, entry, splits, report)
    except (OSError, ShardError, KeyError) as exc:
        report.problems.append(f"{file}: cannot be read: {exc}")


def _check_attrs(
    file: str, attrs: dict[str, Any], entry: dict[str, Any], report: VerifyReport
) -> None:
    expected = {
        "schema_version": SCHEMA_VERSION,
        "kind": entry["kind"],
        "split": entry["split"],
        "n_samples": len(entry["samples"]),
    }
    for key, want in expected.items():
        got = attrs.get(key)
        got = got.item() if isinstance(got, np.generic) else got
        if got != want:
            report.problems.append(f"{file}: attribute {key} is {got!r}, expected {want!r}")


def _check_sample(
    file: str,
    reader: ShardReader,
    sid: str,
    entry: dict[str, Any],
    splits: dict[str, set[str]],
    report: VerifyReport,
) -> None:
    where = f"{file}:{sid}"
    group = reader.file["samples"][sid]
    for name in ("image", "label", "fg"):
        if name not in group:
            report.problems.append(f"{where}: no {name!r} dataset")
            return
    image, label = group["image"], group["label"]
    if image.ndim != 4 or image.shape[0] != 4 or image.shape[1:] != label.shape:
        report.problems.append(
            f"{where}: image shape {image.shape} does not match label shape {label.shape}"
        )
    if label.dtype != np.uint8:
        report.problems.append(f"{where}: label dtype {label.dtype}, expected uint8")
    values = {int(v) for v in np.unique(label[()])}
    if not values <= VALID_LABELS:
        report.problems.append(
            f"{where}: label values {sorted(values - VALID_LABELS)} not in {{0,1,2,3}}"
        )
    try:
        meta = json.loads(group.attrs["meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        report.problems.append(f"{where}: meta is missing or not JSON ({exc})")
        return
    _check_meta(where, meta, entry, splits, report)


def _check_meta(
    where: str,
    meta: dict[str, Any],
    entry: dict[str, Any],
    splits: dict[str, set[str]],
    report: VerifyReport,
) -> None:
    if meta.get("kind") != entry["kind"]:
        report.problems.append(
            f"{where}: meta kind {meta.get('kind')!r} in a {entry['kind']} shard"
        )
        return
    train = splits.get("train", set())
    if entry["kind"] == "real":
        cid, split = meta.get("case_id"), entry["split"]
        if cid not in splits.get(split, set()):
            report.problems.append(
                f"{where}: case {cid!r} is in a {split} shard but not in split {split}"
            )
        return
    for role in ("anatomy", "donor"):
        cid = meta.get(role)
        if cid not in train:
            report.problems.append(f"{where}: split leakage: {role} {cid!r} is not a training case")
