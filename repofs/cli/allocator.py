"""Process-wide tuning of glibc's allocator for a program that moves 1 MiB buffers.

By default glibc serves allocations above a (dynamic) threshold with fresh mmap()s and
returns them on free, so every chunk read, decompressed or sealed costs page faults on
memory that is zeroed again by the kernel. Raising the mmap and trim thresholds keeps
those buffers in the heap for reuse. Memory stays bounded: the number of buffers in flight
is bounded by the ingest, restore and mount pipelines. No effect outside glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's maximum for the dynamic threshold
TRIM_THRESHOLD = 128 << 20


def tune() -> bool:
    """Apply the thresholds; False where the C library has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
