"""Writing a new disk image file: stored pieces written once, holes never written, the page
cache bypassed where the file system allows it.

A restore writes each stored chunk once, in ascending order, into a new file already sized
to the disk's capacity (so every hole stays a hole: it is skipped, never written as zeros).
Written through the page cache, every byte is first copied by the kernel into a newly
allocated cache page — on a virtual machine that copy took 40% of a whole restore's CPU
(`perf`, docs/performance.md) — and the cache fills with a disk's worth of pages nobody
reads again, pushing out what the machine was using. ``ImageWriter`` writes with
``O_DIRECT`` instead: the bytes are copied once into an aligned buffer that is reused for
every write, and the device reads them from there; the final fsync then only has the
device's cache and the file's extents to flush.

Limits. ``O_DIRECT`` wants the offset, the length and the memory aligned; ``ALIGN`` (4 KiB)
satisfies every logical block size in use. Bytes outside the aligned middle of a piece (a
capacity that is not a multiple of it, a slot stored as pieces over a hole) are written
through the page cache on the same descriptor, its ``O_DIRECT`` flag cleared for them. A
file system that refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some network and FUSE file
systems) gets every byte through the page cache: then the writeback of what is written is
started every ``WRITEBACK_STEP`` bytes from a thread of its own (so the final fsync waits
only for the last step), and the steps already on the disk are dropped from the cache.
The writer owns no descriptor: the caller opens, fsyncs and closes the file.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading

from format.backend import start_writeback

ALIGN = 4096
WRITEBACK_STEP = 32 << 20


class ImageWriter:
    """Writes (offset, bytes) pieces into the file open for writing as ``fd``; pieces may come
    in any order and must not overlap. ``close()`` before the caller's fsync."""

    def __init__(self, fd: int, *, direct: bool = True):
        self.fd = fd
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT
        self._direct_on = False        # O_DIRECT currently set on the descriptor
        self.direct = direct and self._set_direct(True)
        self._buffer: mmap.mmap | None = None
        self._writeback = _Writeback(fd)
        self.buffered_bytes = 0        # bytes that went through the page cache

    def write(self, offset: int, data: bytes | memoryview) -> None:
        end = offset + len(data)
        lo = -(-offset // ALIGN) * ALIGN
        hi = end // ALIGN * ALIGN
        if not self.direct or hi <= lo:
            self._buffered(offset, data)
            return
        view = memoryview(data)
        if lo > offset:
            self._buffered(offset, view[:lo - offset])
        self._direct(lo, view[lo - offset:hi - offset])
        if end > hi:
            self._buffered(hi, view[hi - offset:])

    def close(self) -> None:
        """Waits for the writeback hints still queued and frees the buffer; the descriptor is
        left with the flags it came with."""
        self._writeback.close()
        if self._direct_on:
            self._set_direct(False)
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

    def _set_direct(self, on: bool) -> bool:
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags | os.O_DIRECT if on else self._flags)
        except OSError as e:
            if e.errno != errno.EINVAL:     # EINVAL: the file system has no direct I/O
                raise
            return False
        self._direct_on = on
        return True

    def _direct(self, offset: int, view: memoryview) -> None:
        n = len(view)
        if self._buffer is None or len(self._buffer) < n:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = mmap.mmap(-1, -(-n // ALIGN) * ALIGN)   # page-aligned, reused
        if not self._direct_on and not self._set_direct(True):
            self.direct = False
            self._buffered(offset, view)
            return
        self._buffer[:n] = view
        done = 0
        with memoryview(self._buffer) as whole, whole[:n] as aligned:
            try:
                while done < n:
                    done += os.pwrite(self.fd, aligned[done:], offset + done)
            except OSError as e:
                # EINVAL: this file system wants another alignment after all (or a short
                # write left an unaligned rest): the page cache takes the rest, and the rest
                # of the file
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False
        if done < n:
            self._buffered(offset + done, view[done:])

    def _buffered(self, offset: int, data: bytes | memoryview) -> None:
        if self._direct_on:
            self._set_direct(False)
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.buffered_bytes += len(data)
        self._writeback.written_to(offset)


class _Writeback:
    """Starts the writeback of buffered bytes a step behind the writer, and drops the steps
    before that one from the page cache (their writeback has had a step's time to finish;
    pages still dirty are skipped by the kernel and simply stay). Offsets only grow in a
    restore; a piece behind the mark is left to the final fsync."""

    def __init__(self, fd: int):
        self.fd = fd
        self.mark = 0                      # bytes before this are handed over
        self._ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def written_to(self, offset: int) -> None:
        if offset - self.mark < WRITEBACK_STEP:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="restore-writeback", daemon=True)
            self._thread.start()
        self._ranges.put((self.mark, offset - self.mark))
        self.mark = offset

    def close(self) -> None:
        if self._thread is not None:
            self._ranges.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        previous: tuple[int, int] | None = None
        while (item := self._ranges.get()) is not None:
            start_writeback(self.fd, *item)
            if previous is not None:
                try:
                    os.posix_fadvise(self.fd, previous[0], previous[1], os.POSIX_FADV_DONTNEED)
                except OSError:     # a hint: the file is right either way
                    pass
            previous = item
