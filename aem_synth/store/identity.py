"""A store's two ids: the build identity that guards a rebuild, and the store id users see.

*Build identity* (``build_id``): the options and splits that decide a store's
samples, and the id hashed from them.  Two builds with the same identity
write the same samples (same seed, same bytes), so a build may resume into a
store of its own identity; a different identity would replace the store and
its splits, which ``aem-synth build`` refuses without ``--overwrite`` (a
model trained on the old store could otherwise be evaluated on a test split
holding its own training cases).  The identity is written to
``OUT/store.json`` before any other file of a build, so even a killed build
is recognised; the manifest repeats its id as ``build_id``.

*Store id* (``store_id`` in the manifest): what ``aem-synth info`` shows,
checkpoints record and ``train evaluate`` compares.  It is known only when
the build ends: 16 hex digits of the SHA-256 of the sample-defining options
(all of ``IDENTITY_OPTIONS`` but ``root``, where the dataset lay), the splits
as stored and the ``(file, sha256)`` of every shard (:func:`store_id`).  It
names the store's contents, not its place: a store moved or copied keeps it,
and two builds that write the same bytes get the same id.  Manifests written
before ``build_id`` existed carry the identity id as ``store_id``
(:func:`store_id_scope` tells them apart); they are read unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "IDENTITY_NAME",
    "IDENTITY_OPTIONS",
    "SCOPE_FULL",
    "SCOPE_LEGACY",
    "STORE_ID_OPTIONS",
    "identity_differences",
    "manifest_store_id",
    "read_identity",
    "store_id",
    "store_id_scope",
    "store_identity",
    "write_identity",
]

IDENTITY_NAME = "store.json"
IDENTITY_OPTIONS: tuple[str, ...] = (
    "root",
    "layout",
    "dataset",
    "multiplier",
    "seed",
    "mode",
    "method",
    "allow_incomplete",
    "diversity",
    "codec",
)
"""Build options that change which samples (or which bytes) a store holds."""
STORE_ID_OPTIONS: tuple[str, ...] = tuple(k for k in IDENTITY_OPTIONS if k != "root")
"""The options a store id covers: the identity's, less where the dataset lay."""
SCOPE_FULL = "splits, options and shard checksums"
SCOPE_LEGACY = "options and splits only: built before store ids covered shard checksums"


def store_identity(
    options: Mapping[str, Any], splits: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """``{"id", "options", "splits"}``: the sample-defining options, the splits, their hash.

    Parameters
    ----------
    options : mapping
        ``BuildOptions.to_dict()`` (other keys are ignored; ``root`` is resolved).
    splits : mapping of split name to case ids
        As resolved for the build, before any case is skipped.

    Returns
    -------
    dict
        ``id`` is the first 16 hex digits of the SHA-256 of the canonical JSON
        of ``options`` and ``splits``.
    """
    opts = {k: options.get(k) for k in IDENTITY_OPTIONS}
    if opts["root"] is not None:
        opts["root"] = str(Path(str(opts["root"])).resolve())
    split_lists = {k: sorted(v) for k, v in sorted(splits.items())}
    canonical = json.dumps({"options": opts, "splits": split_lists}, sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return {"id": digest, "options": opts, "splits": split_lists}


def read_identity(root: Path | str) -> dict[str, Any] | None:
    """The identity recorded in ``root/store.json``, or ``None`` when absent or unreadable."""
    try:
        data = json.loads((Path(root) / IDENTITY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "id" in data else None


def write_identity(root: Path | str, identity: Mapping[str, Any]) -> Path:
    """Write ``root/store.json`` atomically."""
    path = Path(root) / IDENTITY_NAME
    tmp = path.with_name(f".{IDENTITY_NAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(identity), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Readable lines for every option and split that differs (``"seed: 0 -> 1"``)."""
    lines = []
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    for key in IDENTITY_OPTIONS:
        if old_opts.get(key) != new_opts.get(key):
            lines.append(f"{key}: {old_opts.get(key)!r} -> {new_opts.get(key)!r}")
    old_splits, new_splits = old.get("splits", {}), new.get("splits", {})
    for name in sorted(set(old_splits) | set(new_splits)):
        a, b = set(old_splits.get(name, ())), set(new_splits.get(name, ()))
        if a != b:
            lines.append(f"split {name}: {len(b - a)} case(s) added, {len(a - b)} removed")
    return lines


def store_id(
    options: Mapping[str, Any],
    splits: Mapping[str, Sequence[str]],
    shards: Sequence[Mapping[str, Any]],
) -> str:
    """The id of a finished store: its sample-defining options, splits and shard checksums.

    Parameters
    ----------
    options : mapping
        The build options (``BuildOptions.to_dict()``, or the manifest's
        ``options``); only ``STORE_ID_OPTIONS`` count.
    splits : mapping of split name to case ids
        The splits as stored (the manifest's ``splits``: skipped cases left out).
    shards : sequence of mapping
        Manifest shard entries; their ``file`` and ``sha256`` count, in any order.

    Returns
    -------
    str
        The first 16 hex digits of the SHA-256 of the canonical JSON of the three.
    """
    payload = {
        "options": {k: options.get(k) for k in STORE_ID_OPTIONS},
        "splits": {k: sorted(v) for k, v in sorted(splits.items())},
        "shards": sorted([str(e["file"]), str(e["sha256"])] for e in shards),
    }
    canonical = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def manifest_store_id(manifest: Mapping[str, Any]) -> str:
    """:func:`store_id` recomputed from a manifest's ``options``, ``splits`` and ``shards``."""
    return store_id(
        manifest.get("options") or {}, manifest.get("splits") or {}, manifest.get("shards") or []
    )


def store_id_scope(manifest: Mapping[str, Any]) -> str | None:
    """What the manifest's ``store_id`` covers, in words; ``None`` when it has none.

    A manifest with a ``build_id`` has a store id over splits, options and shard
    checksums; one without (written by an earlier version) has the build
    identity's id, over options and splits only.
    """
    if not manifest.get("store_id"):
        return None
    return SCOPE_FULL if "build_id" in manifest else SCOPE_LEGACY
