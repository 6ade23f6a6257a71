"""Read-ahead of a disk view's chunks: which chunks to load next, each once at a time.

Both readers of disk views that stream — the FUSE adapter (``mount.fusefs``, in a trio
nursery) and the guest readers (``guest.guestfs``, in a thread pool) — decide here which chunks
to load: those not cached (``needs_fetch``) and not already being loaded for anyone. How the
loads run (nursery or pool) and when a reader counts as sequential stay with each of them.
A load must ``release`` its claim when it ends, failed or not: read-ahead is advisory, and the
real read reports errors.

How far ahead a stream loads is a ``Window``: it starts at a fixed depth and doubles whenever
the reader still finds the chunk it asked for not loaded yet (the loads ahead did not cover
the storage's answer time), up to a limit the caller derives from its memory budget. On a
local disk the decoding is what the reader waits for, more depth does not help, and the
limit is the start; on object storage every load waits one round trip, and the depth that
hides it (throughput × round trip) depends on the network, so it is found, not configured.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable


@runtime_checkable
class ChunkedDisk(Protocol):
    """A disk view that can load its chunks ahead of a reader (``view.tree.DiskView``)."""
    label: str
    capacity: int
    chunk_size: int

    def read(self, offset: int, size: int) -> bytes: ...
    def needs_fetch(self, number: int) -> bool: ...
    def prefetch(self, number: int) -> None: ...
    def chunks_for(self, offset: int, size: int) -> range: ...
    def copied(self, offset: int, size: int) -> bool: ...


@dataclass(frozen=True)
class Window:
    """The depth of read-ahead of one sequential stream, in chunks: ``start`` when the stream
    is found, doubled by ``grown`` after each read that had to wait for a chunk already asked
    for, never above ``limit`` (which bounds the memory the loads ahead hold)."""
    start: int
    limit: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.limit:
            raise ValueError(f"read-ahead window {self.start} outside 0..{self.limit}")

    def grown(self, depth: int) -> int:
        return min(self.limit, max(1, 2 * depth))


class ReadAhead:
    """The chunks being loaded ahead, across disks: ``claim`` the ones to load, ``release``
    each when its load ends. Thread-safe."""

    def __init__(self) -> None:
        self._inflight: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def claim(self, disk: ChunkedDisk, numbers: Iterable[int]) -> list[int]:
        """Of chunks ``numbers`` of ``disk``, those to load now (now claimed by the caller)."""
        out = []
        with self._lock:
            for n in numbers:
                key = (id(disk), n)
                if key in self._inflight or not disk.needs_fetch(n):
                    continue
                self._inflight.add(key)
                out.append(n)
        return out

    def release(self, disk: ChunkedDisk, number: int) -> None:
        with self._lock:
            self._inflight.discard((id(disk), number))
