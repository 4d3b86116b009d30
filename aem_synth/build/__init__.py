"""Build stage: Dask orchestration of a shard build, with resume.

Takes :class:`BuildOptions` (dataset root, output folder, multiplier, seed,
workers or a scheduler address).  Gives a complete shard store (dataset ->
synthesis -> store, one task per case and per shard) and a
:class:`BuildSummary`.  ``tuning`` holds the process tuning that build and
loader workers share.
"""

from __future__ import annotations

from aem_synth.build.cluster import local_cluster
from aem_synth.build.options import BuildOptions, BuildSummary
from aem_synth.build.orchestrate import SPLITS, WORK_DIR, build

__all__ = ["BuildOptions", "BuildSummary", "SPLITS", "WORK_DIR", "build", "local_cluster"]
