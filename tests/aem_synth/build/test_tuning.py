"""Process tuning: allocator thresholds (applied once, switchable off) and codec threads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aem_synth.build import tuning


def _run(code: str, env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


CODE = "from aem_synth.build.tuning import tune_allocator as t; print(t(), t(), t(1 << 25))"


def test_applies_on_glibc_and_is_idempotent() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt tuning is glibc-only")
    assert _run(CODE, {"AEM_MALLOC_TUNING": "1"}) == "True True True"


def test_switched_off_by_environment() -> None:
    assert _run(CODE, {"AEM_MALLOC_TUNING": "0"}) == "False False False"


@pytest.mark.parametrize("bad", [0, 1 << 10, 1 << 31, -1])
def test_rejects_thresholds_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        tuning.tune_allocator(bad)


def test_reuses_freed_blocks_without_page_faults() -> None:
    """After tuning, a repeated pattern of large tensors stops faulting in fresh pages.

    torch, not numpy: numpy asks for transparent huge pages on large arrays,
    which hides most faults either way.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt tuning is glibc-only")
    code = (
        "import resource, torch\n"
        "from aem_synth.build.tuning import tune_allocator\n"
        "tune_allocator()\n"
        "def step():\n"
        "    a = torch.ones(1 << 24); b = torch.ones(1 << 22); del a\n"
        "    c = torch.ones(1 << 23); del b, c\n"
        "for _ in range(10):\n"
        "    step()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(10):\n"
        "    step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    tuned = int(_run(code, {"AEM_MALLOC_TUNING": "1"}))
    untuned = int(_run(code, {"AEM_MALLOC_TUNING": "0"}))
    # 10 x (64 + 16 + 32) MB of fresh 4 KiB pages without the tuning.
    assert untuned >= 10 * 28672 // 2
    assert tuned < untuned // 20


def test_single_thread_codecs_respects_a_user_choice() -> None:
    code = (
        "import os; from aem_synth.build.tuning import tune_worker; tune_worker(); "
        "print(os.environ['BLOSC_NTHREADS'])"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "BLOSC_NTHREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "1"
    assert _run(code, {"BLOSC_NTHREADS": "3"}) == "3"


def test_worker_task_trims_the_heap_afterwards() -> None:
    """Freed memory kept by the tuned allocator is returned at the end of a task."""
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt tuning is glibc-only")
    code = (
        "import os, torch\n"
        "from aem_synth.build.tuning import worker_task\n"
        "def rss():\n"
        "    with open('/proc/self/statm') as f:\n"
        "        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "with worker_task():\n"
        "    a = torch.ones(1 << 26); b = torch.ones(1 << 20); del a\n"
        "    inside = rss()\n"
        "after = rss()\n"
        "print(inside - after)\n"
    )
    released = int(_run(code, {"AEM_MALLOC_TUNING": "1"}))
    # The freed 256 MB tensor stays in the heap inside the task and is released after it.
    assert released > 200 * 2**20
