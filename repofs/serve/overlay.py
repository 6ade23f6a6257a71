"""A copy-on-write layer over a read-only disk: the writes of an NBD client, never the
repository's bytes.

Blocks of ``BLOCK`` bytes: a write touching part of a block first copies the block from the
base. Written blocks live in memory (``MemoryOverlay``) or in a sparse file the user names
(``FileOverlay``: created with ``O_EXCL``, so an existing file is refused, never reused; the
file holds the written blocks at their disk offsets, the map of which blocks are written is
in memory). The overlay's size is bounded by the disk's capacity.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

from repofs.errors import RepofsError

BLOCK = 4096


class OverlayExists(RepofsError):
    """The overlay file named on the command line already exists."""

    def __init__(self, path: str):
        super().__init__(f"overlay {path} already exists: name a new file (it is never reused)")
        self.path = path


class Overlay:
    """Copy-on-write blocks over ``base(offset, size) -> bytes``."""

    def __init__(self, base: Callable[[int, int], bytes], capacity: int):
        self.base = base
        self.capacity = capacity
        self._written: set[int] = set()
        self._lock = threading.Lock()

    # storage of whole blocks, by subclasses
    def _load(self, block: int) -> bytes:
        raise NotImplementedError

    def _store(self, block: int, data: bytes) -> None:
        raise NotImplementedError

    def read(self, offset: int, size: int) -> bytes:
        data = self.base(offset, size)
        if not self._written:
            return data
        end = offset + len(data)
        first, last = offset // BLOCK, (end - 1) // BLOCK
        with self._lock:
            hits = [b for b in range(first, last + 1) if b in self._written] if end > offset else []
            if not hits:
                return data
            out = bytearray(data)
            for b in hits:
                block = self._load(b)
                lo, hi = max(b * BLOCK, offset), min((b + 1) * BLOCK, end)
                out[lo - offset:hi - offset] = block[lo - b * BLOCK:hi - b * BLOCK]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset < 0 or end > self.capacity:
            raise ValueError("write beyond the end of the disk")
        pos = offset
        with self._lock:
            while pos < end:
                b = pos // BLOCK
                lo = b * BLOCK
                take = min(lo + BLOCK, end) - pos
                if take == BLOCK:
                    block = bytes(data[pos - offset:pos - offset + take])
                else:
                    old = self._load(b) if b in self._written else \
                        self.base(lo, BLOCK).ljust(min(BLOCK, self.capacity - lo), b"\0")
                    buf = bytearray(old)
                    buf[pos - lo:pos - lo + take] = data[pos - offset:pos - offset + take]
                    block = bytes(buf)
                self._store(b, block)
                self._written.add(b)
                pos += take

    def written_bytes(self) -> int:
        return len(self._written) * BLOCK

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryOverlay(Overlay):
    def __init__(self, base: Callable[[int, int], bytes], capacity: int):
        super().__init__(base, capacity)
        self._blocks: dict[int, bytes] = {}

    def _load(self, block: int) -> bytes:
        return self._blocks[block]

    def _store(self, block: int, data: bytes) -> None:
        self._blocks[block] = data


class FileOverlay(Overlay):
    def __init__(self, base: Callable[[int, int], bytes], capacity: int, path: str):
        super().__init__(base, capacity)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise OverlayExists(path) from None
        os.ftruncate(self._fd, capacity)

    def _load(self, block: int) -> bytes:
        return os.pread(self._fd, BLOCK, block * BLOCK)

    def _store(self, block: int, data: bytes) -> None:
        os.pwrite(self._fd, data, block * BLOCK)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
