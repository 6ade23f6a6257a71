"""Read-ahead for NBD readers of a disk: a sequential reader (a copy, a guest booting or
scanning) finds the next chunks already decrypted and decompressed in the chunk cache.

A read that starts where one of the last few reads ended counts as sequential; then the
next ``window`` chunks that are stored and not cached are fetched by a shared pool of
threads (``DiskView.prefetch``, errors left for the real read to report). Bounded: at most
``window`` chunks per disk in flight, ``RECENT`` read ends remembered.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from repofs.view.tree import DiskView

RECENT = 16


class ReadAhead:
    def __init__(self, disk: DiskView, pool: ThreadPoolExecutor, window: int = 8):
        self.disk = disk
        self.pool = pool
        self.window = window
        self._ends: deque[int] = deque(maxlen=RECENT)
        self._inflight: set[int] = set()
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
        last = min(current + self.window, disk.index.count - 1)
        for n in range(current + 1, last + 1):
            with self._lock:
                if n in self._inflight or not disk.needs_fetch(n):
                    continue
                self._inflight.add(n)
            self.pool.submit(self._fetch, n)

    def _fetch(self, n: int) -> None:
        try:
            self.disk.prefetch(n)
        finally:
            with self._lock:
                self._inflight.discard(n)
