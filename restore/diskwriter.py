"""Write the disks of a generation through VixDiskLib: in parallel, holes skipped, data verified.

Role: ``write_disks(conn, jobs, …)`` opens every target disk for writing (opens are serialized,
as VixDiskLib requires), then runs a pool of threads over the pieces of all disks at once: each
piece is read from its disk reader and written at its offset. Reads of one disk overlap each
other and the writes of every disk (Safekeeping reads one block at a time per disk).

Holes: only the reader's ``extents()`` are read, and a piece that turns out all zeros is not
written — the new disk reads as zeros there already (thin, lazy-zeroed and eager-zeroed disks
alike). Verification: the readers return only verified bytes (the repository re-hashes every
chunk against its id; a mount does the same), so what reaches VixDiskLib is what was backed up;
a chunk that fails its check stops the restore like a write error does. On request
(``read_back``) each written piece is read back through VixDiskLib and compared.

Pieces are about 4 MiB of whole chunks (the binding cuts requests to 2 MiB over NBD),
aligned to disk offsets, widened to whole sectors. At most ``2 × threads`` pieces are in memory.
A reader that streams its stored chunks in order (``iter_chunks(workers)``, as the repository's
views do: fetched in parallel, verified, bypassing the shared cache — the path of a restore to
files) is drained by one writer per disk that joins contiguous chunks into requests of a piece.
A failure stops the submission of new pieces, lets those under way finish, closes the disks
and raises ``DiskWriteFailed`` naming the disk and the offset.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .restoreerrors import DiskWriteFailed
from .source import DiskReader, block_size, piece_size

SECTOR = 512
STEP = "write the disks"
MAX_THREADS = 8

Progress = Callable[[str, int, int], None]


@dataclass
class DiskJob:
    label: str
    path: str                # "[datastore] dir/disk.vmdk"
    reader: DiskReader
    feed: "ChunkFeed | None" = None   # a streaming reader's chunks, already under way


class ChunkFeed:
    """A streaming reader's ``iter_chunks(workers)`` run ahead in a thread, into a queue of at
    most ``max_bytes``: the chunks of a disk are fetched and verified while vCenter is still
    creating the VM. Iterate it once; ``close()`` stops it (also half-way) and frees its
    workers. An error of the reader comes out of the iteration, where the writer meets it."""

    _END = object()

    def __init__(self, reader: Any, workers: int, max_bytes: int) -> None:
        chunk = max(1, int(getattr(reader, "chunk_size", None) or (1 << 20)))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(2, max_bytes // chunk))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(reader, workers),
                                        name=f"restore-feed {reader.label}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, reader: Any, workers: int) -> None:
        chunks = reader.iter_chunks(workers)
        try:
            for item in chunks:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the writer
            self._put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join()


@dataclass
class WrittenDisk:
    label: str
    path: str
    capacity: int
    data_bytes: int          # bytes in the reader's extents
    written_bytes: int       # bytes written (zero pieces skipped)
    skipped_zero_bytes: int
    transport: str | None
    seconds: float


def pieces(extents: list[tuple[int, int]], size: int, capacity: int) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces covering ``extents``, cut at multiples of ``size``, whole sectors."""
    for offset, length in sorted(extents):
        start = offset - offset % SECTOR
        end = min(offset + length, capacity)
        end += -end % SECTOR
        pos = start
        while pos < end:
            stop = min(end, (pos // size + 1) * size)
            yield pos, stop - pos
            pos = stop


class _State:
    def __init__(self, jobs: list[DiskJob], progress: Progress | None) -> None:
        self.lock = threading.Lock()
        self.progress = progress
        self.done = {j.label: 0 for j in jobs}
        self.written = {j.label: 0 for j in jobs}
        self.zero = {j.label: 0 for j in jobs}
        self.total = {j.label: sum(n for _, n in j.reader.extents()) for j in jobs}
        self.failed = threading.Event()
        self.read_back = False


def write_disks(conn: Any, jobs: list[DiskJob], *, threads: int = 4,
                progress: Progress | None = None, read_back: bool = False) -> list[WrittenDisk]:
    """Write every job's extents; ``read_back``: read each written piece back through
    VixDiskLib and compare (``DiskWriteFailed`` on a difference) — twice the I/O."""
    threads = max(1, min(MAX_THREADS, threads))
    state = _State(jobs, progress)
    state.read_back = read_back
    opened: list[tuple[DiskJob, Any]] = []
    started = time.monotonic()
    try:
        for job in jobs:
            try:
                opened.append((job, conn.open(job.path, read_only=False)))
            except Exception as e:
                raise DiskWriteFailed(STEP, f"cannot open {job.label} ({job.path}) for writing: {e}",
                                      label=job.label, offset=0, cause=e) from e
        streaming = [(job, disk) for job, disk in opened if streams(job.reader)]
        others = [(job, disk) for job, disk in opened if not streams(job.reader)]
        if others:
            work = _interleave([[(job, disk, off, n, block_size(job.reader)) for off, n in
                                 pieces(job.reader.extents(), piece_size(job.reader), job.reader.capacity)]
                                for job, disk in others])
            _run(work, threads, state)
        if streaming:
            _stream(streaming, threads, state)
        for job, disk in opened:
            try:
                disk.flush()
            except Exception as e:
                raise DiskWriteFailed(STEP, f"flush of {job.label} failed: {e}", label=job.label,
                                      offset=0, cause=e) from e
        seconds = time.monotonic() - started
        return [WrittenDisk(job.label, job.path, job.reader.capacity, state.total[job.label],
                            state.written[job.label], state.zero[job.label],
                            getattr(disk, "transport_mode", None), seconds)
                for job, disk in opened]
    finally:
        for _job, disk in opened:
            try:
                disk.close()
            except Exception:  # the error on its way out matters more; the connection closes it
                pass


def streams(reader: Any) -> bool:
    """Whether ``reader`` hands out its stored chunks in order, verified (``iter_chunks``)."""
    return callable(getattr(reader, "iter_chunks", None))


def _stream(opened: list[tuple[DiskJob, Any]], threads: int, state: _State) -> None:
    """Readers that stream their stored chunks (fetched and verified by ``threads`` workers
    in all): one writer per disk gathers contiguous chunks into requests of about a piece.
    Stored chunks are never all zeros (the repository does not store those), so nothing is
    compared against zeros here."""
    # Fetching is decompression and hashing: more workers than cores only contend.
    per_disk = max(1, min(threads, os.cpu_count() or 2) // len(opened))

    def drain(job: DiskJob, disk: Any) -> None:
        target = piece_size(job.reader)
        start: int | None = None
        parts: list[bytes] = []
        size = 0

        def write() -> None:
            if start is None or not size:
                return
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if len(data) % SECTOR:  # the tail of a disk whose capacity is not whole sectors
                data = data + bytes(-len(data) % SECTOR)
            try:
                disk.write_from(start, data)
            except Exception as e:
                raise DiskWriteFailed(STEP, f"{job.label}: VixDiskLib write at offset {start} "
                                      f"({job.path}) failed: {e}", label=job.label, offset=start,
                                      cause=e) from e
            if state.read_back:
                back = bytearray(len(data))
                try:
                    disk.read_into(start, back)
                except Exception as e:
                    raise DiskWriteFailed(STEP, f"{job.label}: reading back offset {start} failed: {e}",
                                          label=job.label, offset=start, cause=e) from e
                if back != data:
                    raise DiskWriteFailed(STEP, f"{job.label}: the {len(data)} bytes written at "
                                          f"offset {start} read back different", label=job.label,
                                          offset=start)
            with state.lock:
                state.written[job.label] += size
                state.done[job.label] += size
                done = state.done[job.label]
            if state.progress:
                state.progress(job.label, min(done, state.total[job.label]), state.total[job.label])

        chunks = iter(job.feed) if job.feed is not None else job.reader.iter_chunks(per_disk)
        try:
            while True:
                try:
                    item = next(chunks, None)
                except Exception as e:
                    raise DiskWriteFailed(STEP, f"{job.label}: reading the backup failed: {e}",
                                          label=job.label, offset=getattr(e, "offset", start or 0),
                                          cause=e) from e
                if item is None or state.failed.is_set():
                    break
                offset, data = item
                if start is not None and (offset != start + size or size + len(data) > target):
                    write()
                    start, parts, size = None, [], 0
                if start is None:
                    start = offset
                parts.append(data)
                size += len(data)
            if not state.failed.is_set():
                write()
        except BaseException:
            state.failed.set()
            raise
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # stops its fetch workers
            if job.feed is not None:
                job.feed.close()

    with ThreadPoolExecutor(len(opened), thread_name_prefix="restore-stream") as pool:
        futures = [pool.submit(drain, job, disk) for job, disk in opened]
        wait(futures)
    failure = _first_error(set(futures))
    if failure is not None:
        raise failure


def _interleave(lists: list[list[Any]]) -> Iterator[Any]:
    """Round-robin over the disks, so that all of them progress from the start."""
    iters = [iter(x) for x in lists]
    while iters:
        alive = []
        for it in iters:
            item = next(it, None)
            if item is not None:
                yield item
                alive.append(it)
        iters = alive


def _runs(data: bytes, block: int, is_zero: Callable[[memoryview], bool]) -> list[tuple[int, int]]:
    """(start, length) of the maximal runs of ``block``-sized pieces of ``data`` not all zeros."""
    view = memoryview(data)
    runs: list[tuple[int, int]] = []
    for start in range(0, len(data), block):
        part = view[start:start + block]
        if is_zero(part):
            continue
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + len(part))
        else:
            runs.append((start, len(part)))
    return runs


def _run(work: Iterator[Any], threads: int, state: _State) -> None:
    zero_blocks: dict[int, bytes] = {}

    def is_zero(part: memoryview) -> bool:
        zero = zero_blocks.get(len(part))
        if zero is None:
            zero = zero_blocks.setdefault(len(part), bytes(len(part)))
        return part == zero

    def one(job: DiskJob, disk: Any, offset: int, length: int, block: int) -> None:
        if state.failed.is_set():
            return
        try:
            data = job.reader.read(offset, length)
        except Exception as e:
            raise DiskWriteFailed(STEP, f"{job.label}: reading the backup at offset {offset} failed: {e}",
                                  label=job.label, offset=offset, cause=e) from e
        if len(data) < length:  # the tail of a disk whose capacity is not whole sectors
            data = bytes(data) + bytes(length - len(data))
        view = memoryview(data)
        written = 0
        for start, n in _runs(data, block, is_zero):
            at = offset + start
            try:
                disk.write_from(at, view[start:start + n])
            except Exception as e:
                raise DiskWriteFailed(STEP, f"{job.label}: VixDiskLib write at offset {at} "
                                      f"({job.path}) failed: {e}", label=job.label, offset=at,
                                      cause=e) from e
            written += n
            if state.read_back:
                back = bytearray(n)
                try:
                    disk.read_into(at, back)
                except Exception as e:
                    raise DiskWriteFailed(STEP, f"{job.label}: reading back offset {at} failed: {e}",
                                          label=job.label, offset=at, cause=e) from e
                if back != view[start:start + n]:
                    raise DiskWriteFailed(STEP, f"{job.label}: the {n} bytes written at offset "
                                          f"{at} read back different", label=job.label, offset=at)
        with state.lock:
            state.written[job.label] += written
            state.zero[job.label] += length - written
            state.done[job.label] += length
            done = state.done[job.label]
        if state.progress:
            state.progress(job.label, min(done, state.total[job.label]), state.total[job.label])

    failure: BaseException | None = None
    with ThreadPoolExecutor(threads, thread_name_prefix="restore-write") as pool:
        pending: set[Future[None]] = set()
        for item in work:
            if len(pending) >= 2 * threads:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                failure = failure or _first_error(finished)
                if failure is not None:
                    break
            pending.add(pool.submit(one, *item))
        if failure is not None:
            state.failed.set()
        finished, _ = wait(pending)
        failure = failure or _first_error(finished)
    if failure is not None:
        raise failure


def _first_error(futures: set[Future[None]]) -> BaseException | None:
    for f in futures:
        e = f.exception()
        if e is not None:
            return e
    return None
