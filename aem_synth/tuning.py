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
to the system between phases, which suits single-purpose build workers and
training processes. It is a no-op where the C library has no ``mallopt``
(macOS, musl) and when ``AEM_MALLOC_TUNING=0`` is set.

* **Codec threads** (:func:`single_thread_codecs`). c-blosc2, which writes the
  build's per-case intermediate files, starts a thread per core for every
  chunk by default. In a build worker that already has a core of its own
  this made writing a 240x240x155 case 3x slower (0.37 s against 0.12 s) and
  two workers slowed each other down further (0.63 s each). Build workers
  and DataLoader workers therefore run Blosc single-threaded
  (``BLOSC_NTHREADS=1`` unless the user set it), which c-blosc reads at
  every call.

:func:`tune_worker` applies both; the CLIs call :func:`tune_allocator` in the
main process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = [
    "BLOSC_THREADS_ENV",
    "DEFAULT_THRESHOLD",
    "ENV_SWITCH",
    "single_thread_codecs",
    "tune_allocator",
    "tune_worker",
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
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    if ok:
        _applied = threshold
    return ok


def single_thread_codecs() -> None:
    """Make Blosc compress and decompress on the calling thread (unless the user chose).

    Sets ``BLOSC_NTHREADS=1`` in this process's environment when it is not set.
    """
    os.environ.setdefault(BLOSC_THREADS_ENV, "1")


def tune_worker() -> None:
    """Set-up of a process that owns one core: allocator tuning and one codec thread."""
    tune_allocator()
    single_thread_codecs()
