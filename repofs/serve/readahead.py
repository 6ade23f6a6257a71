"""Read-ahead for NBD readers of a disk: a sequential reader (a copy, a guest booting or
scanning) finds the next chunks already decrypted and decompressed in the chunk cache.

A read that starts where one of the last few reads ended counts as sequential; then the
next ``window`` chunks are loaded by a shared pool of threads (``DiskView.prefetch``, errors
left for the real read to report). Which chunks to load, each once at a time, is decided by
the views' own read-ahead (``view.readahead``), as for the mount and the guest readers.
Bounded: at most ``window`` chunks per disk in flight, ``RECENT`` read ends remembered.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from repofs.view.readahead import ChunkedDisk
from repofs.view.readahead import ReadAhead as Claims

RECENT = 16


class ReadAhead:
    def __init__(self, disk: ChunkedDisk, pool: ThreadPoolExecutor, window: int = 8,
                 claims: Claims | None = None):
        self.disk = disk
        self.pool = pool
        self.window = window
        self.claims = claims or Claims()
        self._ends: deque[int] = deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            sequential = offset in self._ends
            self._ends.append(offset + size)
        if sequential and size > 0:
            self._ahead(offset + size)
        return self.disk.read(offset, size)

    def _ahead(self, end: int) -> None:
        disk = self.disk
        current = (end - 1) // disk.chunk_size
        last = min(current + self.window, (disk.capacity - 1) // disk.chunk_size)
        for n in self.claims.claim(disk, range(current + 1, last + 1)):
            self.pool.submit(self._fetch, n)

    def _fetch(self, n: int) -> None:
        try:
            self.disk.prefetch(n)
        finally:
            self.claims.release(self.disk, n)
