"""Store stage: the HDF5 shard store and what reads, checks and shows it.

Takes samples (image float16 ``(4, X, Y, Z)``, label uint8 ``(X, Y, Z)``, JSON
metadata).  Gives shard files written atomically, ``manifest.json``, lazy
per-process readers (``ShardReader``, ``list_samples``), the per-case
intermediates of a build (``cache``), the store's ids (``identity``),
``verify_store``, ``store_info`` (``aem-synth info``) and the preview figure.
"""

from __future__ import annotations

from aem_synth.store.cache import CaseSummary
from aem_synth.store.info import StoreInfo, store_info
from aem_synth.store.preview import PreviewData, load_preview, render_preview
from aem_synth.store.shards import (
    CODECS,
    DEFAULT_CHUNK,
    DEFAULT_CODEC,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Sample,
    SampleRef,
    ShardInfo,
    ShardReader,
    foreground_index,
    list_samples,
    read_manifest,
    sha256_file,
    write_manifest,
    write_shard,
)
from aem_synth.store.verify import VALID_LABELS, VerifyReport, quick_check, verify_store

__all__ = [
    "CODECS",
    "CaseSummary",
    "DEFAULT_CHUNK",
    "DEFAULT_CODEC",
    "MANIFEST_NAME",
    "PreviewData",
    "SCHEMA_VERSION",
    "Sample",
    "SampleRef",
    "ShardInfo",
    "ShardReader",
    "StoreInfo",
    "VALID_LABELS",
    "VerifyReport",
    "foreground_index",
    "list_samples",
    "load_preview",
    "quick_check",
    "read_manifest",
    "render_preview",
    "sha256_file",
    "store_info",
    "verify_store",
    "write_manifest",
    "write_shard",
]
