"""Process-level tuning for the heavy array work of build workers, training and evaluation.

Two measured problems, two switches:

* **Allocator** (:func:`tune_allocator`). glibc serves every allocation above its mmap threshold (128 KiB, adapting up
to 32 MiB) with a fresh ``mmap`` and unmaps it on free. The volumes this
project handles (a 240x240x155 float32 channel is 36 MB, a 16-channel 80^3
feature map 33 MB) are all above it, so every new array or tensor is
page-faulted and zeroed by the kernel again, page by page. Measured on the
2-core development VM with an RFNet 80^3 forward pass: 3.4 million minor page
faults in twelve passes and about a third of the wall time; with the
thresholds below, 0.3 million faults and encode/decode 1.5x faster.

:func:`tune_allocator` raises the mmap and trim thresholds with ``mallopt``
so that freed blocks stay in the heap and are reused. Peak memory is
unchanged (a block is kept only after it was needed); memory is not returned
to the system by itself; long-lived build workers call :func:`trim_heap` after
each task, because heap fragmentation otherwise made their peak RSS creep up
with the number of tasks run (518 -> 557-595 MB from 12 to 36 cases; flat with
the trim). It is a no-op where the C library has no ``mallopt``
(macOS, musl) and when ``AEM_MALLOC_TUNING=0`` is set.

* **Codec threads** (:func:`single_thread_codecs`). c-blosc2, which wrote the
  build's per-case intermediate files before they moved to c-blosc, starts a
  thread per core for every chunk by default. In a build worker that already
  has a core of its own this made writing a 240x240x155 case 3x slower (0.37 s
  against 0.12 s) and two workers slowed each other down further (0.63 s
  each); c-blosc and c-blosc2 both read the same variable. Build workers
  and DataLoader workers therefore run Blosc single-threaded
  (``BLOSC_NTHREADS=1`` unless the user set it), which c-blosc reads at
  every call.

:func:`tune_worker` applies both; the CLIs call :func:`tune_allocator` in the
main process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "BLOSC_THREADS_ENV",
    "DEFAULT_THRESHOLD",
    "ENV_SWITCH",
    "single_thread_codecs",
    "trim_heap",
    "tune_allocator",
    "tune_worker",
    "worker_task",
]

#: Allocations up to this many bytes are served from (and returned to) the heap.
DEFAULT_THRESHOLD = 1 << 30
#: Environment variable that disables the tuning when set to ``0``.
ENV_SWITCH = "AEM_MALLOC_TUNING"
#: Thread count variable of c-blosc / c-blosc2.
BLOSC_THREADS_ENV = "BLOSC_NTHREADS"

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: int | None = None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes, once per process.

    Parameters
    ----------
    threshold : int
        Bytes; 1 MiB to 2 GiB - 1. Allocations up to this size reuse freed
        heap memory instead of fresh zeroed pages.

    Returns
    -------
    bool
        True when the thresholds are in effect (now or from an earlier call
        in this process, or inherited through ``fork``), False when disabled
        by ``AEM_MALLOC_TUNING=0`` or unsupported by the C library.
    """
    global _applied
    if not (1 << 20) <= threshold < (1 << 31):
        raise ValueError(f"threshold must be in [1 MiB, 2 GiB), got {threshold} bytes")
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    if _applied == threshold:
        return True
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    if ok:
        _applied = threshold
    return ok


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (``malloc_trim(0)``).

    For the end of a task in a long-lived worker: the next task faults its
    pages in once more, but fragmentation cannot accumulate across tasks.
    Returns True when memory was released, False when there was none to
    release or the C library has no ``malloc_trim``.
    """
    if _applied is None:
        return False
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))


def single_thread_codecs() -> None:
    """Make Blosc compress and decompress on the calling thread (unless the user chose).

    Sets ``BLOSC_NTHREADS=1`` in this process's environment when it is not set.
    """
    os.environ.setdefault(BLOSC_THREADS_ENV, "1")


def tune_worker() -> None:
    """Set-up of a process that owns one core: allocator tuning and one codec thread."""
    tune_allocator()
    single_thread_codecs()


@contextmanager
def worker_task() -> Iterator[None]:
    """Run one task of a long-lived worker: :func:`tune_worker` before, :func:`trim_heap` after."""
    tune_worker()
    try:
        yield
    finally:
        trim_heap()
