"""Process-wide tuning of glibc's allocator for a program that moves 1 MiB buffers.

By default glibc serves allocations above a (dynamic) threshold with fresh mmap()s and
returns them on free, so every chunk read, decrypted, decompressed or sealed costs a page
fault per 4 KiB and the kernel's zeroing of each page. Two profiles:

- ``tune()``, for commands that run and exit (backup, restore, check...): mmap and trim
  thresholds raised, so those buffers stay in the heap for reuse. Memory stays bounded: the
  number of buffers in flight is bounded by the ingest, restore and mount pipelines.
- ``tune_daemon()`` and ``Releaser``, for the mount daemon, which serves for days with a
  cache of chunk plaintexts that it fills and evicts in any order. Chunk-sized buffers come
  from the heap too (a fresh mapping per buffer doubled the CPU of a cold sequential read
  through the mount: docs/performance.md, "Mount read CPU"), in two arenas; but reads of
  chunk files of every size carve up the space that evicted chunks free, so the heap would
  grow past the cache (~440 MiB resident for a 192 MiB cache, measured). A ``Releaser``
  hands the free pages inside the heap back to the system (``malloc_trim``) each time the
  cache has evicted a given number of bytes, which bounds what fragmentation keeps
  resident; pages reused before that are never faulted again.

No effect outside glibc.
"""
from __future__ import annotations

import ctypes
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20   # glibc's maximum for the dynamic threshold
TRIM_THRESHOLD = 128 << 20
DAEMON_MMAP_THRESHOLD = 4 << 20   # above any chunk (1 MiB by default), fixed: never raised
DAEMON_ARENAS = 2
RELEASE_EVERY = 16 << 20          # evicted bytes between two releases of free heap pages


def _libc() -> ctypes.CDLL | None:
    """The C library the interpreter is linked with (its symbols are the process's own: no
    search for the library file, which can run ``ldconfig``)."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune() -> bool:
    """Apply the thresholds; False where the C library has no mallopt (not glibc)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune_daemon() -> bool:
    """The mount daemon's profile (see the module's text). Must run before any thread starts
    (arenas are made per thread). False where the C library has no mallopt."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, DAEMON_ARENAS)) and bool(mallopt(M_MMAP_THRESHOLD, DAEMON_MMAP_THRESHOLD))


class Releaser:
    """Counts freed bytes (``freed``, from any thread) and returns the heap's free pages to
    the system after every ``every`` bytes. Does nothing where there is no ``malloc_trim``."""

    def __init__(self, every: int = RELEASE_EVERY):
        self.every = every
        self.releases = 0
        self._pending = 0
        self._lock = threading.Lock()
        libc = _libc()
        self._trim = getattr(libc, "malloc_trim", None)

    def freed(self, nbytes: int) -> None:
        with self._lock:
            self._pending += nbytes
            if self._pending < self.every:
                return
            self._pending = 0
            self.releases += 1
        if self._trim is not None:
            self._trim(0)   # outside the lock: glibc locks each arena itself
