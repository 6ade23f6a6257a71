"""A vSphere disk as a backup source: the ``DiskSource`` shape the ingest reads, through VDDK.

Role: ``VSphereDiskSource`` wraps an open VDDK disk (of the backup snapshot) with the plan of
what to read (``changed.ReadPlan``) and the facts to record (``info``, which lands in the
manifest's disk entry). It has the attributes and methods of ``repofs.sources.DiskSource``
(``label``, ``capacity``, ``extents_are_changes``, ``info``, ``extents()``, ``read()``,
``close()``) without importing it: the protocol is structural.

Throughput: VDDK requests are at most ``MAX_REQUEST`` (2 MiB, the NBD limit). The ingest
announces the reads it will make (``prepare``: whole chunks, or only the changed pieces of a
chunk); a thread per disk then reads them ahead of it, into a small pool of reused buffers,
so that VDDK reads of every disk overlap the ingest's hashing, compression and storage — and
each other, up to ``read_ahead`` reads per disk. A request that is not the expected next one
drops the read-ahead and is read directly.

Transient faults: a read that fails with a lost NFC connection (``vddk.ConnectionLost``) is
retried ``RETRIES`` times with exponential backoff, and said so; a hung call is the binding's
to end (its call timeout kills the worker), which fails the read for good.

Limits: one reader per disk (VDDK serializes calls on one handle anyway).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterable

import vddk

from format.spans import merge

from .changed import ReadPlan

MAX_REQUEST = 2 << 20
SECTOR = 512
READ_AHEAD = 16
RETRIES = 4
BACKOFF = 0.25  # seconds before the first retry; doubled each time
_STOP = object()


class VSphereDiskSource:
    """One disk of the snapshot, read through VDDK."""

    def __init__(self, disk: Any, label: str, plan: ReadPlan, info: dict[str, Any], *,
                 chunk_size: int | None = None, read_ahead: int = READ_AHEAD,
                 on_read: Any = None, on_event: Callable[[str], None] | None = None) -> None:
        self.disk = disk
        self.label = label
        self.capacity = int(disk.capacity)
        self.extents_are_changes = plan.are_changes
        self.plan = plan
        self.info = info
        self.bytes_read = 0
        self._on_read = on_read
        self._say = on_event or (lambda text: None)
        self.retries = 0
        if plan.extents is None:
            found = disk.allocated_extents(chunk_bytes=max(chunk_size or (1 << 20), 64 * SECTOR))
            self._extents = clip(found, self.capacity)
            self.info["read"]["planned_bytes"] = sum(n for _, n in self._extents)
        else:
            self._extents = clip(plan.extents, self.capacity)
        self._direct = bytearray(MAX_REQUEST)
        self._buffers: list[memoryview] | None = None   # the read-ahead's, kept across prepares
        self._queue: queue.Queue[Any] | None = None
        self._free: queue.Queue[memoryview] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._depth = max(2, read_ahead)

    # -- DiskSource ----------------------------------------------------------------------------

    def extents(self) -> list[tuple[int, int]]:
        return list(self._extents)

    def prepare(self, reads: list[tuple[int, int]]) -> None:
        self.stop_read_ahead()
        self._stop = threading.Event()
        self._start_read_ahead(reads, self._depth)

    def read(self, offset: int, size: int) -> bytes:
        if self._queue is not None:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.stop_read_ahead()
                raise item
            if item is not _STOP and item[0] == offset and item[1] == size:
                _, _, buf = item
                data = bytes(buf[:size])
                assert self._free is not None
                self._free.put(buf)
                return data
            self.stop_read_ahead()  # the ingest asked for something else: read directly from now on
        return self._read_direct(offset, size)

    def close(self) -> None:
        self.stop_read_ahead()
        self.disk.close()

    # -- reading -------------------------------------------------------------------------------

    def _read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from ``offset`` in requests of at most MAX_REQUEST; the tail past the
        capacity (a chunk rounded up to whole sectors) reads as zeros."""
        size = len(view)
        end = min(offset + size, self.capacity)
        aligned_end = end - end % SECTOR
        pos = offset
        while pos < aligned_end:
            n = min(MAX_REQUEST, aligned_end - pos)
            self._read_retrying(pos, view[pos - offset:pos - offset + n])
            pos += n
        if pos < offset + size:
            view[pos - offset:] = bytes(offset + size - pos)
        self.bytes_read += size
        if self._on_read:
            self._on_read(self.label, size)

    def _read_retrying(self, offset: int, view: memoryview) -> None:
        for attempt in range(RETRIES + 1):
            try:
                self.disk.read_into(offset, view)
                return
            except vddk.ConnectionLost as e:
                if attempt == RETRIES:
                    raise
                delay = BACKOFF * 2 ** attempt
                self.retries += 1
                self._say(f"{self.label}: read at {offset} failed ({e}); retrying in {delay:g} s")
                time.sleep(delay)

    def _read_direct(self, offset: int, size: int) -> bytes:
        if size > len(self._direct):
            self._direct = bytearray(size)
        view = memoryview(self._direct)[:size]
        self._read_into(offset, view)
        return bytes(view)

    def _start_read_ahead(self, reads: list[tuple[int, int]], depth: int) -> None:
        if not reads:
            return
        self._queue = queue.Queue()
        self._free = queue.Queue()
        biggest = max(n for _, n in reads)
        if self._buffers is None or len(self._buffers[0]) < biggest or len(self._buffers) < depth:
            # the disk's own buffers where it has them: for VixDiskLib in its worker process
            # that is memory shared with the worker, which reads straight into it (a plain
            # buffer would be filled by a second copy out of the worker's area)
            make = getattr(self.disk, "buffer", None)
            self._buffers = [make(biggest) if make is not None else memoryview(bytearray(biggest))
                             for _ in range(depth)]
        for buf in self._buffers:
            self._free.put(buf)

        def run() -> None:
            assert self._queue is not None and self._free is not None
            try:
                for offset, size in reads:
                    buf = self._free.get()
                    if self._stop.is_set():
                        return
                    self._read_into(offset, buf[:size])
                    self._queue.put((offset, size, buf))
            except BaseException as e:  # handed to the reader, raised in its thread
                self._queue.put(e)
                return
            self._queue.put(_STOP)

        self._thread = threading.Thread(target=run, name=f"read-ahead {self.label}", daemon=True)
        self._thread.start()

    def stop_read_ahead(self) -> None:
        """Stop the read-ahead thread (it finishes its current request) and forget it."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if self._free is not None:
            self._free.put(memoryview(bytearray(0)))  # wake it if it waits for a buffer
        if thread is not None:
            thread.join(timeout=60)
            if thread.is_alive():    # still in a read into one of the buffers: never reuse them
                self._buffers = None
        self._queue = None
        self._free = None


def clip(extents: Iterable[tuple[int, int]], capacity: int) -> list[tuple[int, int]]:
    return merge([(max(0, o), min(capacity, o + n) - max(0, o)) for o, n in extents
                  if min(capacity, o + n) > max(0, o)])
