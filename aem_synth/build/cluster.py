"""Dask clients of a build: the embedded ``LocalCluster`` or an existing scheduler, and progress."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aem_synth.build.options import BuildOptions

__all__ = ["client_for", "local_cluster", "progress"]


def local_cluster(workers: int) -> Any:
    """The embedded cluster of a build: ``workers`` processes with one thread each.

    Returns a ``distributed.LocalCluster`` (a context manager); its scheduler
    address can be given to :class:`BuildOptions` as ``scheduler``.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


@contextmanager
def client_for(options: BuildOptions) -> Iterator[Any]:
    from distributed import Client

    address = options.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address, timeout="60s") as client:
            yield client
        return
    n = options.workers or os.cpu_count() or 1
    with local_cluster(n) as cluster, Client(cluster) as client:
        yield client


def progress(futures: Sequence[Any], desc: str, unit: str, enabled: bool) -> Iterator[Any]:
    from distributed import as_completed
    from tqdm import tqdm

    bar = tqdm(total=len(futures), desc=desc, unit=unit, disable=not enabled, leave=False)
    try:
        for fut in as_completed(futures):
            bar.update(1)
            yield fut
    finally:
        bar.close()
