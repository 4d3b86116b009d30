"""The build lock: one ``aem-synth build`` per store at a time, and readers that wait their turn.

The lock is an advisory ``flock`` on ``OUT/.build.lock`` held for the whole
build.  The kernel releases it when the holder exits, however it exits (a
kill -9 included), so a lock file left behind by a killed build never blocks
the next one; the file itself is kept (unlinking a lock file races with
processes opening it).  It records who holds it, for the error messages.
Readers (``verify``, training, evaluation) test it through
:func:`build_in_progress` and refuse a store that is being built.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aem_synth.errors import ShardError

__all__ = ["LOCK_NAME", "StoreBusyError", "build_in_progress", "build_lock"]

LOCK_NAME = ".build.lock"


class StoreBusyError(ShardError):
    """The store is being built by another process."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (
        f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
        f"({info.get('command', '?')})"
    )


@contextmanager
def build_lock(out: Path | str) -> Iterator[None]:
    """Hold the build lock of the store ``out`` for the duration of the ``with`` block.

    Raises
    ------
    StoreBusyError
        Another process holds the lock; the message names it (pid, host, start
        time, command) and the lock file.
    """
    path = Path(out) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreBusyError(
            f"{out} is being built by {_holder_text(path)}; a second build into the same "
            f"store would corrupt it. Wait for that build to end (lock file {path})"
        ) from None
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(
                os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)
            ),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def build_in_progress(root: Path | str) -> str | None:
    """Who is building the store ``root`` now, or ``None`` when nobody is.

    Opens the lock file read-only (a read-only store works) and tries a shared
    lock without waiting.
    """
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
