"""A store's identity: the options and splits that decide its samples, and the id hashed from them.

Two builds with the same identity write the same samples (same seed, same
bytes), so a build may resume into a store of its own identity; a different
identity would replace the store and its splits, which ``aem-synth build``
refuses without ``--overwrite`` (a model trained on the old store could
otherwise be evaluated on a test split holding its own training cases).  The
identity is written to ``OUT/store.json`` before any other file of a build,
so even a killed build is recognised; the manifest repeats the id.
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
    "identity_differences",
    "read_identity",
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
