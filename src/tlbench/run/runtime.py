"""Process settings that make CPU training spend its time on compute.

glibc returns every freed block above its mmap threshold (≤ 32 MB) to the kernel and maps fresh zeroed pages
for the next: with activation buffers of that size freed every step, page faults cost as much as the
arithmetic (EfficientNet-Lite0 on 2 cores: 15-17 train images/s, 51-56 s system time an epoch). Keeping freed
memory (as `MALLOC_MMAP_THRESHOLD_` does) gave 44 images/s; the heap keeps its high-water mark."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)
# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP = 1 << 30  # bytes; above any single activation buffer of the models we train


def glibc_function(name: str):
    """A function of glibc's malloc, or None (not Linux, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse (Linux only; elsewhere a no-op). True if set."""
    mallopt = glibc_function("mallopt")
    if mallopt is None:
        return False
    ok = all(mallopt(param, KEEP) == 1 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD))
    if not ok:
        log.debug("mallopt refused a setting; freed memory may still go back to the kernel")
    return ok


def release_freed_memory() -> None:
    """Hand the kept free memory back to the kernel between runs, so the next run's peak is its own."""
    trim = glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
