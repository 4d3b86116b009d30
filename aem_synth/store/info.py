"""What a store is, at a glance (``aem-synth info``): for a colleague who receives one.

:func:`store_info` reads a finished store's manifest and returns a
:class:`StoreInfo`: where the store is, its id (and what the id covers), the
tool and shard schema versions that wrote it, the dataset and layout it was
built from, the options and seed, the splits with their case counts, the
sample and byte totals, and the result of a check.

The check is cheap by default (:func:`aem_synth.store.verify.quick_check`:
store id against the manifest, split disjointness, every shard present with
its recorded size, no unlisted shard; no shard byte is read, so it answers in
milliseconds for any store size).  ``verify=True`` runs the full
:func:`aem_synth.store.verify.verify_store` instead: SHA-256 of every shard,
schema, shapes, label sets and split leakage, which reads every byte (about
as long as copying the store).

A folder that is not a store, a store being built and a store whose build did
not finish (no manifest) are errors that say which and what to do.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aem_synth import __version__
from aem_synth.errors import ShardError
from aem_synth.store.identity import IDENTITY_NAME, store_id_scope
from aem_synth.store.lock import LOCK_NAME, StoreBusyError, build_in_progress
from aem_synth.store.shards import MANIFEST_NAME, SCHEMA_VERSION, read_manifest
from aem_synth.store.verify import VerifyReport, quick_check, verify_store

__all__ = [
    "SHOWN_OPTIONS",
    "IncompleteStoreError",
    "NotAStoreError",
    "StoreCheck",
    "StoreInfo",
    "store_info",
]

SHOWN_OPTIONS: tuple[str, ...] = (
    "multiplier",
    "method",
    "mode",
    "diversity",
    "allow_incomplete",
    "codec",
    "shard_size",
    "layout",
    "dataset",
    "splits_dir",
)
"""Build options shown (the seed has its own line): those that decide the samples
(``STORE_ID_OPTIONS``), and how they are cut into shards and split."""
SPLIT_ORDER = ("train", "val", "test")
_UNSET_WORDS = {"layout": "auto", "dataset": "auto", "splits_dir": "seeded"}
# Files and folders a build leaves before its manifest: their presence tells an
# unfinished store from a folder that never was one.
_BUILD_TRACES = (IDENTITY_NAME, LOCK_NAME, "splits", "real", "synthetic", ".work")


class NotAStoreError(ShardError):
    """The path is not a shard store folder (missing, a file, or no trace of a build)."""


class IncompleteStoreError(ShardError):
    """A build started in the folder but did not finish: there is no manifest."""


@dataclass(frozen=True)
class StoreCheck:
    """Result of the check :func:`store_info` ran.

    Attributes
    ----------
    level : str
        ``"quick"`` (manifest, files and sizes; no shard read) or ``"full"``
        (``aem-synth verify``: SHA-256 of every shard, schema, labels, leakage).
    problems : tuple of str
        One line per problem, naming the file and the rule.
    """

    level: str
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        what = {
            "quick": "store id, splits, every shard present with its size (quick; --verify "
            "reads every byte)",
            "full": "SHA-256 of every shard, schema, shapes, labels, split leakage (full)",
        }[self.level]
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{verdict}: {what}"


@dataclass(frozen=True)
class StoreInfo:
    """A store's description (``aem-synth info``; ``to_dict`` is its ``--json``).

    Attributes
    ----------
    path : str
        Absolute path of the store now (stores are relocatable).
    store_id : str or None
        The manifest's id; ``None`` for stores built before ids existed.
    id_scope : str or None
        What the id covers (:func:`aem_synth.store.identity.store_id_scope`).
    build_id : str or None
        Id of the build identity (options and splits; ``store.json``); ``None``
        for stores built before it was recorded.
    schema_version : int
        Shard schema of the store.
    tool_version : str or None
        ``aem-synth`` version that built it.
    created : str or None
        When the build finished (ISO 8601, the building machine's time zone).
    dataset_root : str or None
        Where the dataset lay when the store was built.
    layouts : tuple of str
        Dataset layouts of the cases.
    options : dict
        ``SHOWN_OPTIONS`` as the build recorded them.
    seed : int or None
    splits : dict of str to int
        Cases per split.
    skipped, excluded : int
        Cases left out of the store; cases stored but not used for synthesis.
    real_samples : dict of str to int
        Real samples per split.
    synthetic_samples : int
    shards : int
        Shard files.
    shard_bytes : dict of str to int
        Bytes of the shard files: ``real``, ``synthetic``, ``total``.
    disk_bytes : int
        Bytes of every file under the store folder (build intermediates
        included, when kept).
    check : StoreCheck
    """

    path: str
    store_id: str | None
    id_scope: str | None
    build_id: str | None
    schema_version: int
    tool_version: str | None
    created: str | None
    dataset_root: str | None
    layouts: tuple[str, ...]
    options: dict[str, Any]
    seed: int | None
    splits: dict[str, int]
    skipped: int
    excluded: int
    real_samples: dict[str, int]
    synthetic_samples: int
    shards: int
    shard_bytes: dict[str, int]
    disk_bytes: int
    check: StoreCheck = field(default_factory=lambda: StoreCheck("quick"))

    @property
    def samples(self) -> int:
        return sum(self.real_samples.values()) + self.synthetic_samples

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` reads it back to an equal object."""
        d = asdict(self)
        d["layouts"] = list(self.layouts)
        d["check"] = {"level": self.check.level, "ok": self.check.ok}
        d["check"]["problems"] = list(self.check.problems)
        d["samples"] = self.samples
        d["this_tool"] = {"version": __version__, "schema_version": SCHEMA_VERSION}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreInfo:
        """The inverse of :meth:`to_dict` (derived keys are ignored)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["layouts"] = tuple(d["layouts"])
        known["check"] = StoreCheck(d["check"]["level"], tuple(d["check"]["problems"]))
        return cls(**known)

    def format(self) -> str:
        """The text ``aem-synth info`` prints: one labelled line per item."""
        rows = [
            ("store", self.path),
            ("store id", _id_text(self.store_id, self.id_scope)),
            ("built", self._built_text()),
            ("schema", f"shard schema {self.schema_version} (this tool reads {SCHEMA_VERSION})"),
            ("dataset", f"{self.dataset_root or '?'} (layout {', '.join(self.layouts) or '?'})"),
            ("options", _options_text(self.options)),
            ("seed", str(self.seed)),
            ("splits", self._splits_text()),
            ("samples", self._samples_text()),
            ("bytes", self._bytes_text()),
            ("on disk", f"{_size(self.disk_bytes)}: every file under the folder"),
            ("check", self.check.describe()),
        ]
        lines = [
            textwrap.fill(
                value,
                100,
                initial_indent=f"{label:<10}",
                subsequent_indent=" " * 10,
                break_long_words=False,
                break_on_hyphens=False,
            )
            for label, value in rows
        ]
        lines += [f"  {p}" for p in self.check.problems]
        return "\n".join(lines)

    def _built_text(self) -> str:
        by = f"aem-synth {self.tool_version}" if self.tool_version else "an unknown aem-synth"
        when = f"{self.created} by " if self.created else "by "
        return f"{when}{by} (this tool: {__version__})"

    def _splits_text(self) -> str:
        parts = [f"{name} {n}" for name, n in self.splits.items()]
        return (
            f"{', '.join(parts)} cases; {self.skipped} skipped, "
            f"{self.excluded} not used for synthesis"
        )

    def _samples_text(self) -> str:
        real = sum(self.real_samples.values())
        per_split = ", ".join(f"{s} {n}" for s, n in self.real_samples.items())
        return f"{self.samples}: {real} real ({per_split}), {self.synthetic_samples} synthetic"

    def _bytes_text(self) -> str:
        b = self.shard_bytes
        return (
            f"{_size(b['total'])} ({b['total']:,} bytes) in {self.shards} shards: real "
            f"{_size(b['real'])}, synthetic {_size(b['synthetic'])}"
        )


def _size(n: int) -> str:
    """Bytes in binary units, one decimal (``63.7 MiB``)."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _id_text(store_id: str | None, scope: str | None) -> str:
    if not store_id:
        return "none (built before stores had ids)"
    return f"{store_id} ({scope})"


def _options_text(options: dict[str, Any]) -> str:
    def word(key: str, value: Any) -> str:
        if value is None:
            return _UNSET_WORDS.get(key, "none")
        if isinstance(value, bool):
            return "on" if value else "off"
        return str(value)

    return " ".join(f"{k}={word(k, v)}" for k, v in options.items())


def store_info(root: Path | str, *, verify: bool = False) -> StoreInfo:
    """Describe the finished store at ``root`` and check it.

    Parameters
    ----------
    root : Path or str
        The store folder.
    verify : bool
        Run the full verification (SHA-256 of every shard; reads every byte)
        instead of the quick check (no shard read).

    Raises
    ------
    NotAStoreError
        ``root`` is missing, a file, or a folder with no trace of a build.
    StoreBusyError
        A build holds the store's lock now.
    IncompleteStoreError
        A build started here but did not finish (no manifest).
    ShardError
        The manifest is not valid JSON or has another schema version.
    """
    root = Path(root)
    manifest = _read_store(root)
    report = verify_store(root) if verify else quick_check(root, manifest)
    return _describe(root, manifest, _as_check(report, "full" if verify else "quick"))


def _read_store(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise NotAStoreError(f"{root}: no such folder")
    if not root.is_dir():
        raise NotAStoreError(f"{root}: a file, not a shard store (a folder with {MANIFEST_NAME})")
    holder = build_in_progress(root)
    if holder is not None:
        raise StoreBusyError(
            f"{root}: the store is being built by {holder} (lock file {root / LOCK_NAME}); "
            "run `aem-synth info` again when the build has ended"
        )
    if not (root / MANIFEST_NAME).is_file():
        traces = [name for name in _BUILD_TRACES if (root / name).exists()]
        if traces:
            raise IncompleteStoreError(
                f"{root}: incomplete store: no {MANIFEST_NAME} (found {', '.join(traces)}); its "
                "build did not finish (killed or failed): run the same `aem-synth build` again "
                "to finish it"
            )
        raise NotAStoreError(
            f"{root}: not a shard store: no {MANIFEST_NAME}, {IDENTITY_NAME} or shard folder; "
            f"stores are written by `aem-synth build --in DATASET --out {root}`"
        )
    return read_manifest(root)


def _as_check(report: VerifyReport, level: str) -> StoreCheck:
    return StoreCheck(level, tuple(report.problems))


def _describe(root: Path, manifest: dict[str, Any], check: StoreCheck) -> StoreInfo:
    options = manifest.get("options") or {}
    dataset = manifest.get("dataset") or {}
    shards = manifest.get("shards") or []
    splits = _in_split_order(manifest.get("splits") or {})
    real: dict[str, int] = {name: 0 for name in splits}
    shard_bytes = {"real": 0, "synthetic": 0}
    synthetic = 0
    for entry in shards:
        n, kind = len(entry["samples"]), entry["kind"]
        shard_bytes[kind] = shard_bytes.get(kind, 0) + int(entry.get("bytes", 0))
        if kind == "real":
            real[entry["split"]] = real.get(entry["split"], 0) + n
        else:
            synthetic += n
    shard_bytes["total"] = shard_bytes["real"] + shard_bytes["synthetic"]
    return StoreInfo(
        path=str(root.resolve()),
        store_id=manifest.get("store_id"),
        id_scope=store_id_scope(manifest),
        build_id=manifest.get("build_id"),
        schema_version=int(manifest["schema_version"]),
        tool_version=manifest.get("tool_version"),
        created=manifest.get("created"),
        dataset_root=dataset.get("root"),
        layouts=tuple(dataset.get("layouts") or ()),
        options={k: options.get(k) for k in SHOWN_OPTIONS if k in options},
        seed=manifest.get("seed", options.get("seed")),
        splits={name: len(cases) for name, cases in splits.items()},
        skipped=len(manifest.get("skipped") or []),
        excluded=len(manifest.get("excluded_from_synthesis") or []),
        real_samples=real,
        synthetic_samples=synthetic,
        shards=len(shards),
        shard_bytes=shard_bytes,
        disk_bytes=_disk_bytes(root),
        check=check,
    )


def _in_split_order(splits: dict[str, Any]) -> dict[str, Any]:
    """``train``, ``val``, ``test`` first (the manifest stores them sorted by name)."""
    order = [s for s in SPLIT_ORDER if s in splits] + sorted(set(splits) - set(SPLIT_ORDER))
    return {name: splits[name] for name in order}


def _disk_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                stat = os.lstat(Path(folder) / name)
            except OSError:  # removed while we walk
                continue
            total += stat.st_size
    return total
