"""Requests to one disk assembled in buffers that are written while the next one fills.

Role: ``WritePipe(disk, size)`` gathers (offset, data) pieces that arrive in disk order into
requests of at most ``size`` bytes — contiguous pieces join the current request, a gap starts a
new one — and hands each full request to a thread of its own that writes it. The buffers come
from ``disk.buffer(n)``: for VixDiskLib in its worker process that is memory shared with the
worker, so a request is copied once (piece -> buffer) and never again; in-process it is a
reusable page-aligned area, so no request allocates (and faults in) fresh memory. While the
thread writes one buffer, the caller fills the next: the copy, the fetch of the next chunks and
the write overlap.

Two ways of writing:

- pipelined (the default): the thread begins each request with ``disk.begin_write`` and ends
  it with ``disk.end_write``, with up to ``depth - 1`` begun at once. The worker process finds
  the next request waiting when one ends: no round trip between two writes. ``written(offset,
  n)`` is called as each one ends; a failure is raised as ``failed(offset, error)`` makes it
  (the error itself by default).
- ``write=`` a function ``write(offset, view)`` that writes one request and returns when it is
  done (for example a write that is read back and compared).

A request whose length is not whole sectors (the tail of a disk) is padded with zeros to the
next sector. ``finish()`` writes what is left and waits; the first error is raised from the
next ``add`` or from ``finish``. ``abort()`` stops after the requests under way. Both join the
thread: once they return, nothing writes to the disk any more.
"""
from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable

SECTOR = 512
DEPTH = 6

Request = tuple[int, int, memoryview]   # offset, length (padded), buffer


class WritePipe:
    def __init__(self, disk: Any, size: int,
                 write: Callable[[int, memoryview], None] | None = None, *,
                 written: Callable[[int, int], None] | None = None,
                 failed: Callable[[int, BaseException], BaseException] | None = None,
                 name: str = "restore-write", depth: int = DEPTH) -> None:
        self.size = size
        self._disk = disk
        self._write = write
        self._written = written
        self._failed = failed
        room = size + SECTOR  # the padding of a tail
        self._free: queue.Queue[memoryview] = queue.Queue()
        self._count = max(2, depth)
        for _ in range(self._count):
            self._free.put(disk.buffer(room))
        self._todo: queue.Queue[Request | None] = queue.Queue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._buf: memoryview | None = None
        self._start = 0
        self._fill = 0
        self._thread = threading.Thread(
            target=self._run_each if write is not None else self._run_pipelined,
            name=name, daemon=True)
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
            self._write_now(offset, memoryview(bytes(data) + bytes(-n % SECTOR)))
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

    def _write_now(self, offset: int, view: memoryview) -> None:
        """One request written by the caller's thread (nothing else is under way)."""
        if self._write is not None:
            self._write(offset, view)
            return
        try:
            self._disk.write_from(offset, view)
        except BaseException as e:
            raise self._failure(offset, e) from e
        if self._written is not None:
            self._written(offset, len(view))

    def _close(self) -> None:
        self._todo.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop.set()
            raise error

    def _failure(self, offset: int, error: BaseException) -> BaseException:
        return self._failed(offset, error) if self._failed is not None else error

    def _fail(self, error: BaseException) -> None:
        """Keep the first error (raised in the caller's thread) and stop writing."""
        if self._error is None:
            self._error = error
        self._stop.set()

    def _run_each(self) -> None:
        assert self._write is not None
        while True:
            item = self._todo.get()
            if item is None:
                return
            offset, n, buf = item
            if not self._stop.is_set():
                try:
                    self._write(offset, buf[:n])
                except BaseException as e:
                    self._fail(e)
            self._free.put(buf)

    def _run_pipelined(self) -> None:
        under_way: collections.deque[Request] = collections.deque()
        while True:
            # End the oldest write when the pipeline is full, or when nothing new is queued
            # (its buffer may be what the caller waits for).
            if under_way and (len(under_way) >= self._count - 1 or self._todo.empty()):
                self._end_oldest(under_way)
                continue
            item = self._todo.get()
            if item is None:
                break
            offset, n, buf = item
            if self._stop.is_set():
                self._free.put(buf)
                continue
            try:
                self._disk.begin_write(offset, buf[:n])
            except BaseException as e:
                self._fail(self._failure(offset, e))
                self._free.put(buf)
                continue
            under_way.append(item)
        while under_way:
            self._end_oldest(under_way)

    def _end_oldest(self, under_way: collections.deque[Request]) -> None:
        offset, n, buf = under_way.popleft()
        try:
            self._disk.end_write()
        except BaseException as e:
            self._fail(self._failure(offset, e))
        else:
            if self._written is not None:
                self._written(offset, n)
        finally:
            self._free.put(buf)
