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
files) is drained by one thread per disk that copies contiguous chunks into requests of a piece,
in buffers the disk writes without another copy (``writepipe``: shared with the VDDK worker),
while a second thread per disk writes the previous request.
A failure stops the submission of new pieces, lets those under way finish, closes the disks
and raises ``DiskWriteFailed`` naming the disk and the offset.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, TypeGuard

from .errors import DiskWriteFailed
from .writepipe import WritePipe
from .generation import DiskReader, block_size, piece_size

SECTOR = 512
STEP = "write the disks"
MAX_THREADS = 8

Progress = Callable[[str, int, int], None]


@dataclass
class DiskJob:
    label: str
    path: str                # "[datastore] dir/disk.vmdk"
    reader: DiskReader
    feed: Any = None   # a streaming reader's chunks, already under way (prefetch.ChunkFeed)


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
                progress: Progress | None = None, read_back: bool = False,
                unbuffered: bool = False) -> list[WrittenDisk]:
    """Write every job's extents; ``read_back``: read each written piece back through
    VixDiskLib and compare (``DiskWriteFailed`` on a difference) — twice the I/O;
    ``unbuffered``: open the disks with VIXDISKLIB_FLAG_OPEN_UNBUFFERED (NBD only)."""
    threads = max(1, min(MAX_THREADS, threads))
    state = _State(jobs, progress)
    state.read_back = read_back
    opened: list[tuple[DiskJob, Any]] = []
    started = time.monotonic()
    try:
        for job in jobs:
            try:
                opened.append((job, conn.open(job.path, read_only=False, unbuffered=unbuffered)))
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


class StreamingReader(DiskReader, Protocol):
    """A reader that hands out its stored chunks in order, verified (``view.tree.DiskView``)."""

    def iter_chunks(self, workers: int = 2) -> Iterator[tuple[int, bytes]]: ...


def streams(reader: Any) -> TypeGuard[StreamingReader]:
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
        def write(start: int, data: memoryview) -> None:
            _write(job, disk, start, data, state.read_back)
            _account(state, job.label, len(data), 0, len(data))

        reader = job.reader
        assert streams(reader)          # only streaming readers come here; the others go to _run
        pipe = WritePipe(disk, piece_size(reader), write, name=f"restore-write {job.label}")
        chunks = iter(job.feed) if job.feed is not None else reader.iter_chunks(per_disk)
        offset = 0
        try:
            while not state.failed.is_set():
                try:
                    item = next(chunks, None)
                except Exception as e:
                    raise DiskWriteFailed(STEP, f"{job.label}: reading the backup failed: {e}",
                                          label=job.label, offset=getattr(e, "offset", offset),
                                          cause=e) from e
                if item is None:
                    break
                offset, data = item
                pipe.add(offset, data)
            if not state.failed.is_set():
                pipe.finish()
        except BaseException:
            state.failed.set()
            raise
        finally:
            pipe.abort()  # joins the writer: nothing writes once drain returns
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


def _write(job: DiskJob, disk: Any, offset: int, data: memoryview, read_back: bool) -> None:
    """One VixDiskLib write; with ``read_back`` (``--verify-written``) the range is read back
    and compared."""
    try:
        disk.write_from(offset, data)
    except Exception as e:
        raise DiskWriteFailed(STEP, f"{job.label}: VixDiskLib write at offset {offset} "
                              f"({job.path}) failed: {e}", label=job.label, offset=offset,
                              cause=e) from e
    if not read_back:
        return
    back = bytearray(len(data))
    try:
        disk.read_into(offset, back)
    except Exception as e:
        raise DiskWriteFailed(STEP, f"{job.label}: reading back offset {offset} failed: {e}",
                              label=job.label, offset=offset, cause=e) from e
    if back != data:
        raise DiskWriteFailed(STEP, f"{job.label}: the {len(data)} bytes written at offset "
                              f"{offset} read back different", label=job.label, offset=offset)


def _account(state: _State, label: str, written: int, zero: int, done: int) -> None:
    with state.lock:
        state.written[label] += written
        state.zero[label] += zero
        state.done[label] += done
        now = state.done[label]
    if state.progress:
        state.progress(label, min(now, state.total[label]), state.total[label])


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
            _write(job, disk, offset + start, view[start:start + n], state.read_back)
            written += n
        _account(state, job.label, written, length - written, length)

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
