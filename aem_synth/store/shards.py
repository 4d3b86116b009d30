"""HDF5 shard files and the manifest: the only on-disk contract between build and training.

Store layout (DESIGN §5)::

    shards/
      manifest.json                 written last, atomically
      real/{train,val,test}-00000.h5
      synthetic/aem-00000.h5        (mixup-00000.h5 for --method mixup)

Shard file schema (``SCHEMA_VERSION``)
--------------------------------------
Root attributes: ``schema_version`` (int), ``tool_version`` (str), ``kind``
(``"real"`` | ``"synthetic"``), ``split`` (str), ``n_samples`` (int).
One group per sample under ``/samples/<sample_id>`` holding

``image``
    float16, shape (4, X, Y, Z): modality order FLAIR, T1, T1ce, T2; canonical
    RAS axes; z-scored over the brain, background 0.  Chunked one channel per
    chunk at about patch scale, compressed with ``DEFAULT_CODEC`` (chosen by benchmark).
``label``
    uint8, shape (X, Y, Z), internal convention 0/1/2/3.
    ``image``, ``label`` and ``fg`` carry HDF5 Fletcher32 checksums per chunk,
    checked on every read (a damaged chunk is an error naming file and sample).
``fg/<c>`` for c in 1, 2, 3
    int16, shape (K, 3): voxel positions (x, y, z) of class ``c``, an evenly
    strided subset of at most ``max_per_class`` positions, so a loader can
    centre crops on tumour without decompressing the volume.
attribute ``meta``
    JSON string: ids, crop box, original shape and affine, present modalities,
    calibration, AEM mode, sources A/B, seed... (no pickles anywhere).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt

from aem_synth import __version__
from aem_synth.errors import ShardError
from aem_synth.paths import temp_sibling
from aem_synth.store.lock import StoreBusyError, build_in_progress
from aem_synth.types import FloatArray, LabelArray

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_CHUNK",
    "Sample",
    "ShardInfo",
    "SampleRef",
    "ShardReader",
    "foreground_index",
    "write_shard",
    "sha256_file",
    "read_manifest",
    "write_manifest",
    "list_samples",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FG_CLASSES = (1, 2, 3)
MAX_FG_PER_CLASS = 4096


def _codec_kwargs(name: str) -> dict[str, Any]:
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    family, cname, *rest = name.split("-")
    clevel = int(rest[0]) if rest else 5
    shuffle = rest[1:] != ["noshuffle"]
    if family == "blosc2":
        f = hdf5plugin.Blosc2
        filters = f.SHUFFLE if shuffle else f.NOFILTER
        return dict(f(cname=cname, clevel=clevel, filters=filters))  # type: ignore[arg-type]
    if family == "blosc":
        g = hdf5plugin.Blosc
        mode = g.SHUFFLE if shuffle else g.NOSHUFFLE
        return dict(g(cname=cname, clevel=clevel, shuffle=mode))  # type: ignore[arg-type]
    raise ShardError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}")


CODECS: tuple[str, ...] = (
    "none",
    "gzip",
    "blosc-lz4-5",
    "blosc-lz4-5-noshuffle",
    "blosc-zstd-3",
    "blosc2-lz4-5",
    "blosc2-zstd-1",
    "blosc2-zstd-3",
)
# Chosen by benchmarks/bench_codecs.py on a real BraTS case (140x190x137 crop), measured
# with one Blosc thread as build and loader workers run: among the codecs keeping a sample
# within 0.25 of its float32 .npy (0.231 here), within 10 % of the fastest 80^3 crop read
# (7.3-7.6 ms against 13.3 ms for blosc2-zstd-1, the default before, at 0.178), the
# fastest writer (290 MB/s). Byte shuffling does not shrink these float16 z-scores under
# LZ4 (0.225 with it) and costs read time.
DEFAULT_CODEC = "blosc-lz4-5-noshuffle"
DEFAULT_CHUNK: tuple[int, int, int] = (32, 32, 32)


@dataclass
class Sample:
    """One stored sample.

    Attributes
    ----------
    sample_id : str
        Unique within the store; used as the HDF5 group name (no ``/``).
    image : ndarray, float32, (4, X, Y, Z)
    label : ndarray, uint8, (X, Y, Z)
    meta : dict
        JSON-serialisable provenance.
    """

    sample_id: str
    image: FloatArray
    label: LabelArray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardInfo:
    """Manifest entry of one finished shard (``file`` relative to the store root)."""

    file: str
    kind: str
    split: str
    samples: tuple[str, ...]
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind,
            "split": self.split,
            "samples": list(self.samples),
            "n_samples": len(self.samples),
            "sha256": self.sha256,
            "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardInfo:
        return cls(
            d["file"], d["kind"], d["split"], tuple(d["samples"]), d["sha256"], int(d["bytes"])
        )


@dataclass(frozen=True)
class SampleRef:
    """Address of one sample: shard path and sample id."""

    shard: Path
    sample_id: str


def foreground_index(
    label: LabelArray, max_per_class: int = MAX_FG_PER_CLASS
) -> dict[int, np.ndarray]:
    """Evenly strided positions of each tumour class.

    Returns
    -------
    dict
        class -> int16 array (K, 3) of (x, y, z) positions, K <= max_per_class.
    """
    out: dict[int, np.ndarray] = {}
    for c in FG_CLASSES:
        flat = np.flatnonzero(label == c)
        if flat.size > max_per_class:
            flat = flat[np.linspace(0, flat.size - 1, max_per_class).astype(np.int64)]
        out[c] = np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.int16)
    return out


def _chunk_for(shape: tuple[int, ...], chunk: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(max(1, min(c, s)) for c, s in zip(chunk, shape, strict=True))  # type: ignore[return-value]


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(block):
            h.update(data)
    return h.hexdigest()


def write_shard(
    path: Path,
    samples: Iterable[Sample],
    *,
    root: Path,
    kind: str,
    split: str,
    codec: str = DEFAULT_CODEC,
    chunk: tuple[int, int, int] = DEFAULT_CHUNK,
    checksums: bool = True,
) -> ShardInfo:
    """Write samples to ``path`` atomically and return its manifest entry.

    The file is written under a temporary name in the same folder and renamed
    into place only when complete, so a killed writer never leaves a file
    named like a finished shard.

    Parameters
    ----------
    path : Path
        Final shard path, inside ``root``.
    samples : iterable of Sample
        Consumed lazily: one sample in memory at a time.
    root : Path
        Store root; ``ShardInfo.file`` is relative to it.
    kind, split : str
        ``"real"``/``"synthetic"`` and the split name.
    codec : str
        One of ``CODECS``.
    chunk : tuple of int
        Spatial chunk shape; the channel axis is always chunked by 1.
    checksums : bool
        Per-chunk Fletcher32 checksums (the store default; off only to measure
        their cost, ``benchmarks/bench_checksums.py``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    comp = _codec_kwargs(codec)
    ids: list[str] = []
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update(
                schema_version=SCHEMA_VERSION, tool_version=__version__, kind=kind, split=split
            )
            grp = f.create_group("samples")
            for s in samples:
                _write_sample(grp, s, comp, chunk, checksums)
                ids.append(s.sample_id)
            f.attrs["n_samples"] = len(ids)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ShardInfo(
        file=path.relative_to(root).as_posix(),
        kind=kind,
        split=split,
        samples=tuple(ids),
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
    )


def _write_sample(
    grp: h5py.Group, s: Sample, comp: dict[str, Any], chunk: tuple[int, int, int], checksums: bool
) -> None:
    if "/" in s.sample_id or s.sample_id in grp:
        raise ShardError(f"sample id {s.sample_id!r} is not unique or contains '/'")
    if s.image.ndim != 4 or s.image.shape[0] != 4 or s.image.shape[1:] != s.label.shape:
        raise ShardError(
            f"{s.sample_id}: image shape {s.image.shape} does not match label shape {s.label.shape}"
        )
    g = grp.create_group(s.sample_id)
    spatial = _chunk_for(s.label.shape, chunk)
    # Fletcher32 comes last in the write pipeline, so readers check each chunk's stored
    # (compressed) bytes before decompressing them: corruption is caught where it is read.
    image = s.image.astype(np.float16)
    label = s.label.astype(np.uint8)
    _put(g, "image", image, chunks=(1, *spatial), fletcher32=checksums, **comp)
    _put(g, "label", label, chunks=spatial, fletcher32=checksums, **comp)
    fg = g.create_group("fg")
    for c, pos in foreground_index(s.label).items():
        checked = {"chunks": pos.shape, "fletcher32": True} if checksums and len(pos) else {}
        _put(fg, str(c), pos, **checked)
    g.attrs["meta"] = json.dumps(s.meta, sort_keys=True)


def _put(parent: h5py.Group, name: str, data: np.ndarray, **kw: Any) -> None:
    """Create a dataset and flush its chunks at once, so that file space is allocated in
    creation order whatever the moment the dataset object is released."""
    parent.create_dataset(name, data=data, **kw).id.flush()


class ShardReader:
    """Lazy, process-local reader of one shard file.

    The HDF5 handle is opened on first use and reopened when the object is
    used in another process (DataLoader workers, Dask workers), because h5py
    handles must not cross a fork.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        # Dataset handles of read_into, which training calls for every crop.
        self._datasets: dict[tuple[str, str], h5py.Dataset] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_pid": None, "_datasets": {}}

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise ShardError(f"{self.path}: cannot open shard: {exc}") from exc
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._datasets = {}
            self._file.close()
        self._file = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.file.attrs)

    def keys(self) -> list[str]:
        """Sample ids in write order."""
        return list(self.file["samples"].keys())

    def _group(self, key: str) -> h5py.Group:
        try:
            return self.file["samples"][key]
        except KeyError:
            raise ShardError(f"{self.path}: no sample {key!r}") from None
        except (OSError, RuntimeError) as exc:
            raise self._damaged(key, "its group", exc) from exc

    def _damaged(self, key: str, what: str, exc: BaseException) -> ShardError:
        return ShardError(
            f"{self.path}: sample {key!r}: cannot read {what} ({exc}); the shard file is "
            "damaged: run `aem-synth verify` on the store and rebuild it"
        )

    def _read(self, key: str, name: str, index: Any = ()) -> np.ndarray:
        """``samples/<key>/<name>[index]``; HDF5 errors (failed checksums) name file and sample."""
        group = self._group(key)
        try:
            return group[name][index]
        except (OSError, RuntimeError) as exc:
            raise self._damaged(key, name, exc) from exc

    def shape(self, key: str) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z) of a sample."""
        try:
            x, y, z = self._group(key)["label"].shape
        except (OSError, RuntimeError) as exc:
            raise self._damaged(key, "label", exc) from exc
        return (int(x), int(y), int(z))

    def image(
        self,
        key: str,
        box: tuple[slice, slice, slice] | None = None,
        dtype: npt.DTypeLike | None = np.float32,
    ) -> np.ndarray:
        """Image (4, x, y, z), optionally only the voxels in ``box``.

        ``dtype=None`` returns the stored float16 without conversion (cheaper
        when the caller converts on its own device, e.g. in torch).
        """
        arr = self._read(key, "image", (slice(None), *box) if box is not None else ())
        return arr if dtype is None else arr.astype(dtype)

    def label(self, key: str, box: tuple[slice, slice, slice] | None = None) -> LabelArray:
        """Label (x, y, z) uint8, optionally only the voxels in ``box``."""
        return self._read(key, "label", box if box is not None else ())

    def read_into(
        self,
        key: str,
        name: str,
        out: np.ndarray,
        source: tuple[Any, ...],
        dest: tuple[Any, ...],
    ) -> None:
        """Read ``samples/<key>/<name>[source]`` straight into ``out[dest]`` (no temporary array).

        ``out`` must have the stored dtype (float16 image, uint8 label) for
        HDF5 to decompress into it without a conversion pass.
        """
        dataset = self._datasets.get((key, name)) if self._pid == os.getpid() else None
        if dataset is None:
            try:
                dataset = self._datasets[(key, name)] = self._group(key)[name]
            except KeyError:
                raise ShardError(f"{self.path}: sample {key!r} has no {name!r}") from None
        try:
            dataset.read_direct(out, source_sel=source, dest_sel=dest)
        except (OSError, RuntimeError) as exc:
            raise self._damaged(key, name, exc) from exc

    def foreground(self, key: str, cls: int) -> np.ndarray:
        """Indexed positions (K, 3) int64 of class ``cls`` (empty when absent)."""
        return self._read(key, f"fg/{cls}").astype(np.int64)

    def foreground_count(self, key: str, cls: int) -> int:
        """Number ``K`` of indexed positions of class ``cls`` (metadata only, no voxel read)."""
        try:
            return int(self._group(key)[f"fg/{cls}"].shape[0])
        except (OSError, RuntimeError, KeyError) as exc:
            raise self._damaged(key, f"fg/{cls}", exc) from exc

    def meta(self, key: str) -> dict[str, Any]:
        """Provenance dict stored with the sample."""
        try:
            return json.loads(self._group(key).attrs["meta"])
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise self._damaged(key, "meta", exc) from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (temporary file + rename)."""
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    """Read and check a store's manifest.

    Raises
    ------
    ShardError
        No manifest (the build did not finish), unreadable JSON or another
        schema; ``StoreBusyError`` while a build holds the store's lock.
    """
    holder = build_in_progress(root)
    if holder is not None:
        raise StoreBusyError(
            f"{root} is being built by {holder}; wait for the build to end before using it"
        )
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(
            f"{root}: no {MANIFEST_NAME}; the store is incomplete (run `aem-synth build` to finish it)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema_version {version!r}, this tool reads {SCHEMA_VERSION}")
    return manifest


def list_samples(root: Path, kind: str, split: str | None = None) -> list[SampleRef]:
    """All samples of a kind (``"real"``/``"synthetic"``) and optional split, manifest order.

    Each shard listed is checked to exist with the size the manifest records
    (a cheap stat: truncated or replaced files fail here, before any training
    step; damaged bytes are caught by the per-chunk checksums when read).

    Raises
    ------
    ShardError
        No manifest, a store being built, or a missing / resized shard file
        (the message names it).
    """
    manifest = read_manifest(root)
    refs: list[SampleRef] = []
    for entry in manifest["shards"]:
        if entry["kind"] == kind and (split is None or entry["split"] == split):
            path = Path(root) / entry["file"]
            _check_size(path, entry)
            refs.extend(SampleRef(path, sid) for sid in entry["samples"])
    return refs


def _check_size(path: Path, entry: dict[str, Any]) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ShardError(f"{path}: listed in the manifest but cannot be found ({exc})") from exc
    expected = entry.get("bytes")
    if expected is not None and size != int(expected):
        raise ShardError(
            f"{path}: {size} bytes on disk but the manifest records {expected} (truncated or "
            "replaced); run `aem-synth verify` on the store and rebuild it"
        )
