"""Requests to one disk assembled in buffers that are written while the next one fills.

Role: ``WritePipe(disk, size, write)`` gathers (offset, data) pieces that arrive in disk order
into requests of at most ``size`` bytes — contiguous pieces join the current request, a gap
starts a new one — and hands each full request to a thread of its own that calls
``write(offset, view)``. The buffers come from ``disk.buffer(n)`` where the disk offers it: for
VixDiskLib in its worker process that is memory shared with the worker, so a request is copied
once (piece -> buffer) and never again; in-process it is a reusable page-aligned area, so no
request allocates (and faults in) fresh memory. While the thread writes one buffer, the caller
fills the next: the copy, the fetch of the next chunks and the write overlap.

A request whose length is not whole sectors (the tail of a disk) is padded with zeros to the
next sector. ``finish()`` writes what is left and waits; the first error of ``write`` is
raised from the next ``add`` or from ``finish``. ``abort()`` stops after the request under way.
Both join the thread: once they return, nothing writes to the disk any more.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

SECTOR = 512
DEPTH = 3   # buffers per disk: one filling, one being written, one ready to go


class WritePipe:
    def __init__(self, disk: Any, size: int, write: Callable[[int, memoryview], None], *,
                 name: str = "restore-write", depth: int = DEPTH) -> None:
        self.size = size
        self._write = write
        room = size + SECTOR  # the padding of a tail
        make = getattr(disk, "buffer", None)
        self._free: queue.Queue[memoryview] = queue.Queue()
        self._count = max(2, depth)
        for _ in range(self._count):
            self._free.put(make(room) if make is not None else memoryview(bytearray(room)))
        self._todo: queue.Queue[tuple[int, int, memoryview] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._buf: memoryview | None = None
        self._start = 0
        self._fill = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------

    def add(self, offset: int, data: Any) -> None:
        """Queue ``data`` for ``offset`` (pieces come in disk order)."""
        self._raise()
        n = len(data)
        if self._buf is not None and (offset != self._start + self._fill or self._fill + n > self.size):
            self._submit()
        if n > self.size:  # larger than a request: written as it is, after what is queued
            self._drain()
            self._write(offset, memoryview(bytes(data) + bytes(-n % SECTOR)))
            return
        if self._buf is None:
            self._buf = self._take()
            self._start, self._fill = offset, 0
        self._buf[self._fill:self._fill + n] = data
        self._fill += n

    def finish(self) -> None:
        """Write what is left; wait until everything is written; raise the first error."""
        self._raise()
        if self._buf is not None:
            self._submit()
        self._close()
        self._raise()

    def abort(self) -> None:
        self._stop.set()
        self._close()

    # -- internals ---------------------------------------------------------------------------

    def _take(self) -> memoryview:
        while True:
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                self._raise()
                if not self._thread.is_alive():
                    raise RuntimeError("the disk writer stopped") from None

    def _submit(self) -> None:
        buf, n = self._buf, self._fill
        assert buf is not None
        self._buf, self._fill = None, 0
        pad = -n % SECTOR
        if pad:
            buf[n:n + pad] = bytes(pad)
        self._todo.put((self._start, n + pad, buf))

    def _drain(self) -> None:
        """Wait until every queued request is written (all buffers are free again)."""
        taken = [self._take() for _ in range(self._count)]
        for b in taken:
            self._free.put(b)
        self._raise()

    def _close(self) -> None:
        self._todo.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop.set()
            raise error

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            offset, n, buf = item
            if not self._stop.is_set():
                try:
                    self._write(offset, buf[:n])
                except BaseException as e:  # raised in the caller's thread
                    self._error = e
                    self._stop.set()
            self._free.put(buf)
