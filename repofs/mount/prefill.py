"""Guest file-system metadata pushed into the kernel's page cache of a flat disk file.

``repofs files mount`` puts a loop device and the kernel's ext4 on a flat file of the mount,
opened without direct I/O. A walk of the guest's tree then reads inode tables and directory
blocks one small block at a time, and each miss in the page cache is a round trip loop device
-> FUSE -> this Python server (~0.5 ms on a loaded 2-core machine; a 20,000-file tree needed
~350 of them). Instead, when a flat file is first opened buffered, the bytes of every ext
volume's metadata (used inode tables, directory blocks; a few MiB per 10,000 files, at most
``LIMIT``) are read once in the background: the ranges the backup copied into the index
(``repofs.ingest.metacopy``; read from those copies' few chunks), or for a generation without
copies what a search with ``repofs.guest.extmeta`` finds (read several chunks at a time),
and each range is pushed into the page cache with a FUSE ``notify_store`` as soon as it is
read: a walk started right after the mount finds its blocks there, or soon will. Should the
kernel drop them (memory pressure), the next READ of a metadata block pushes them all again,
but pushes never take more than a tenth of a core.

The bytes pushed are the flat file's own bytes at those offsets, read through the same
chunk cache as any READ, so what the kernel caches is always exactly the file's content;
the choice of ranges is only a hint.
"""
from __future__ import annotations

import bisect
import logging
import mmap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

import pyfuse3

from format import spans
from repofs.guest import extmeta

if TYPE_CHECKING:
    from repofs.guest.guestfs import Volume

log = logging.getLogger("repofs.mount")

PAGE = mmap.PAGESIZE      # the kernel keeps only whole pages of a store (or the file's last)
LIMIT = 64 << 20          # bytes of metadata kept and pushed per flat disk
DUTY = 10                 # a push again only after DUTY times the CPU time the last one took
LOAD_THREADS = 4          # chunk loads wait on storage as much as they decode


def _whole_pages(offset: int, length: int, capacity: int) -> tuple[int, int]:
    start = offset - offset % PAGE
    end = min(-(-(offset + length) // PAGE) * PAGE, capacity)
    return start, end - start


class Prefill:
    def __init__(self, inode: int, ranges: list[tuple[int, int]],
                 clock: Callable[[], float] = time.monotonic):
        self.inode = inode
        self.ranges = ranges
        self._starts = [off for off, _ in ranges]
        self._blobs: list[bytes] = [b""] * len(ranges)
        self._clock = clock
        self.pushing = True           # until loaded: the load pushes each range as it comes
        self._last_end = float("-inf")
        self._last_cpu = 0.0

    @classmethod
    def build(cls, inode: int, read: Callable[[int, int], bytes], capacity: int,
              volumes: "list[Volume] | None" = None, ranges: list[tuple[int, int]] | None = None
              ) -> "Prefill | None":
        """What to push: ``ranges`` of the disk when given (the index's copies of the guest
        metadata, found at backup), else what a search of ``volumes`` — the disk's ext volumes,
        each one contiguous range of it — finds, their chunks loading in the background as it
        finds them (``Volume.prefetch``); None when there is nothing to push. Then this loads
        the ranges' bytes and pushes each range into the page cache as soon as it is loaded: a
        walk that starts meanwhile finds what has come so far."""
        if ranges is None:
            ranges = []
            for v in volumes or []:
                if v.offset is None:        # (callers pass contiguous volumes only)
                    continue
                left = LIMIT - sum(n for _, n in ranges)
                if left <= 0:
                    break
                found = extmeta.metadata_ranges(v.open(), left, v.prefetch)
                ranges += [(v.offset + off, n) for off, n in found]
        ranges = spans.merge([_whole_pages(off, n, capacity) for off, n in ranges])
        if not ranges:
            return None
        pre = cls(inode, ranges)
        pre._load(read)
        return pre

    def _load(self, read: Callable[[int, int], bytes]) -> None:
        def one(i: int) -> float:
            off, n = self.ranges[i]
            data = self._blobs[i] = read(off, n)
            cpu = time.thread_time()
            try:
                pyfuse3.notify_store(self.inode, off, data)
            except OSError as e:       # the next miss pushes again
                log.debug("metadata push at offset %d failed: %s", off, e)
            return time.thread_time() - cpu
        # most ranges sit in chunks not yet cached: decrypt and decompress them side by side
        try:
            with ThreadPoolExecutor(LOAD_THREADS) as pool:
                self._last_cpu = sum(pool.map(one, range(len(self.ranges))))
        finally:
            self._last_end = self._clock()
            self.pushing = False

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.ranges)

    def wants(self, off: int, size: int) -> bool:
        """Whether a READ of [off, off+size) — a page-cache miss — should start a push."""
        if self.pushing or not self._overlaps(off, size):
            return False
        if self._clock() - self._last_end < DUTY * self._last_cpu:
            return False
        self.pushing = True
        return True

    def _overlaps(self, off: int, size: int) -> bool:
        i = bisect.bisect_right(self._starts, off + size - 1) - 1
        return i >= 0 and self.ranges[i][0] + self.ranges[i][1] > off

    def push(self) -> None:
        """In a worker thread, after ``wants`` said yes: every range into the page cache."""
        cpu = time.thread_time()    # not the wall time: waits for page locks or a core cost nothing
        try:
            for (off, _), data in zip(self.ranges, self._blobs, strict=True):
                pyfuse3.notify_store(self.inode, off, data)
        finally:
            self._last_cpu = time.thread_time() - cpu
            self._last_end = self._clock()
            self.pushing = False
        log.debug("pushed %d bytes of metadata (%.3fs of CPU)", self.bytes, self._last_cpu)
