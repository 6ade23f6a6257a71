"""Backup ingest: turn disk sources into a new generation of a repository.

For each disk the chunks to read are the chunk-aligned cover of the source's extents. Each
read chunk is checked for zeros (a hole: never stored), hashed, and stored unless the
repository already has it. Chunks not read come from the previous generation's index when
the extents are changes, and are holes otherwise. The disks of a VM are read in parallel.

When the extents are changes (a change list, vSphere CBT), a slot whose changed bytes are a
small part of it is not read whole: only its changed ranges are read and stored, as pieces
laid over the slot's previous content (``format.fixedindex``). A slot is read and stored
whole again once its pieces' lengths would add up to all of it or they would number more than
``MAX_PIECES``: an incremental stores only the bytes that changed (a slot changed whole is
its own new base), and a reader of a slot fetches less than twice its length (base +
pieces), in at most ``MAX_PIECES`` + 1 chunks.

Throughput: the calling thread reads; a pool of workers (one per core) hashes, compresses,
encrypts and writes, with a bounded number of chunks in flight so memory does not grow with
the disk. A local image's whole slots are read into reused page-aligned buffers, past the
page cache when they are not cached (``directread``); chunks are written through the page
cache, their writeback started at once (``format.backend``: written past the cache, each
worker would wait for the device on every chunk: tried more than once, slower each time,
docs/performance.md). Chunks
are written without a per-file fsync; one filesystem sync makes them durable before the
index and the manifest (each fsynced) refer to them. A crash therefore leaves, at worst,
unreferenced chunks.

A new index never names a chunk the backup has not seen whole. A chunk counts as stored
only once probed (its header read, its file's size compared with what the header declares:
``Repository.stored_size``) or written by this backup. A full backup probes each chunk it
reads (on the workers); the previous generation's chunks are not trusted blindly. A backup
with changed extents keeps the previous generation's chunks outside the changes, so it probes
each of those once while the disks are read, beside the workers (``parentprobe``: threads,
or worker processes for thousands of chunks on a local repository; the wall time hides the
probe, its CPU, ~8 us a chunk in the page cache, ~30-75 us out of it, remains); then a
slot that names one found missing or cut short is read again, whole, and guest-metadata
copies that name one are made anew. Chunks this backup wrote are stat-ed after the sync and must have the size that was
written, else the backup fails before its index and manifest are written.
"""
from __future__ import annotations

import collections
import logging
import mmap
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

from format.errors import ObjectMissing
from format.fixedindex import FixedIndex, Piece, chunks_touched, slot_ranges
from format.manifest import DiskEntry, Manifest
from format.repository import Repository, chunk_name

from . import metacopy
from .directread import AlignedBuffers, is_zero
from .parentprobe import ParentProbe, ProbeStopped
from .sources import DiskSource, clip_extents
from repofs.errors import RepofsError

log = logging.getLogger("repofs.backup")

Progress = Callable[[str, int, int], None]  # (disk label, bytes done, bytes to do)

MAX_PIECES = 16       # a slot's pieces number at most this many, their lengths add up to less than it
PIECE_ALIGN = 4096    # pieces start and end on these boundaries (VDDK reads whole sectors)

class Work(NamedTuple):
    """One slot to read."""
    slot: int
    ranges: tuple[tuple[int, int], ...] | None   # inside the slot, read as pieces; None: all of it
    kept: tuple[Piece, ...]                      # previous pieces that stay under the new ones
    changed: tuple[tuple[int, int], ...] = ()    # inside the slot: what the change list names,
                                                 # widened as pieces are (in ``ranges``, if any)


class IngestError(RepofsError):
    """The ingest cannot go on: a source answered other than it said it would."""


class StoredChunkLost(IngestError):
    """A chunk this backup wrote is not there whole after the sync (storage lost it)."""


class StoppedEarly(IngestError):
    """This disk's backup gave up because another disk's failed (that failure is the one
    reported)."""


@dataclass
class DiskReport:
    label: str
    capacity: int
    read_bytes: int = 0
    new_bytes: int = 0
    new_chunks: int = 0
    new_plain_bytes: int = 0    # the new chunks' bytes before compression and encryption
    patched_slots: int = 0      # slots stored as pieces over their previous content
    data_bytes: int = 0
    mode: str = "full"          # "full", "changed" or "full (reason)"
    copied_bytes: int = 0       # guest metadata kept copied in the index (repofs.metacopy)

    def summary(self) -> str:
        """One line for people: what was read and stored."""
        patched = f", {self.patched_slots} chunks updated by their changed pieces" if self.patched_slots else ""
        copied = f", {self.copied_bytes} bytes of guest metadata copied" if self.copied_bytes else ""
        return (f"{self.label}: {self.capacity} bytes, {self.mode}, read {self.read_bytes}, "
                f"stored {self.new_bytes} new in {self.new_chunks} chunks{patched}{copied}")


@dataclass
class BackupReport:
    vm: str
    generation: str
    manifest: str
    disks: list[DiskReport] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _DiskPlan:
    """One disk of a backup, from planning to its manifest entry."""
    source: DiskSource
    index: FixedIndex                 # the new index, filled as the slots are read
    work: list[Work]                  # the slots to read
    known: set[bytes]                 # chunk ids known to be stored whole (shared by the disks)
    report: DiskReport
    parent_index: FixedIndex | None   # the previous generation's, if any


def latest_generation(repo: Repository, vm: str) -> tuple[str, Manifest] | None:
    gens = [(m.time_ns, m.generation, name, m) for name, m in repo.manifests().items() if m.vm == vm]
    if not gens:
        return None
    _t, _g, name, manifest = max(gens)
    return name, manifest


class _DiskIngest:
    def __init__(self, repo: Repository, pool: ThreadPoolExecutor, in_flight: int):
        self.repo = repo
        self.pool = pool
        self.in_flight = in_flight
        self.zero = bytes(repo.chunk_size)
        self.stop = threading.Event()  # set when another disk failed: give up early
        self.copies_stored = False     # a copy of guest metadata stored a new chunk
        self.written: dict[bytes, int] = {}  # chunk id -> stored size, checked after the sync
        # whole slots of sources that read into memory of ours (local images): reused,
        # page-aligned, as many as the reads in flight (``directread``)
        self.buffers = AlignedBuffers(repo.chunk_size)

    def _store(self, data: bytes | memoryview, known: set[bytes]) -> tuple[bytes | None, int]:
        if is_zero(data) if isinstance(data, memoryview) else data == self.zero[:len(data)]:
            return None, 0
        cid = self.repo.chunk_id(data)
        if cid in known or self.repo.has_chunk(cid):
            return cid, 0
        return cid, self.repo.put_chunk(cid, data, sync=False)

    def _store_pieces(self, datas: list[bytes | memoryview],
                      known: set[bytes]) -> list[tuple[bytes | None, int]]:
        return [self._store(data, known) for data in datas]

    def copy_metadata(self, source: DiskSource, index: FixedIndex, previous: FixedIndex | None,
                      work: list[Work], known: set[bytes], report: DiskReport,
                      lost: set[bytes] | None = None) -> None:
        """Keep the guest's file-system metadata copied in the index (``repofs.ingest.metacopy``).
        Only an accelerator for readers: if it fails, the generation goes without. Previous
        copies that name a ``lost`` chunk are not kept: the search starts anew."""
        if previous is not None and previous.copies is not None and lost and \
                any(cid in lost for _o, cid in previous.copy_references()):
            previous = None
        def store(data: bytes) -> tuple[bytes | None, int]:
            cid, stored = self._store(data, known)
            if stored:
                self.copies_stored = True
                report.new_plain_bytes += len(data)
                self.written[cid] = stored  # type: ignore[index]
                report.new_bytes += stored
                report.new_chunks += 1
                known.add(cid)  # type: ignore[arg-type]
            return cid, stored
        # what this backup rewrote: in slot order, so ascending and never overlapping
        incremental = source.extents_are_changes and previous is not None
        touched = [read for item in work for read in _item_reads(index, item)] if incremental else None
        changed = [span for item in work for span in _item_changes(index, item)] if incremental else None
        try:
            index.copies = metacopy.build(self.repo, source.label, index, previous, touched, store, changed)
        except Exception as e:  # noqa: BLE001 (an optional copy never fails a backup)
            log.warning("disk %s: guest metadata not copied (%s)", source.label, e)
            index.copies = None
        report.copied_bytes = index.copies.copied_size if index.copies else 0

    def run(self, source: DiskSource, index: FixedIndex, work: list[Work],
            known: set[bytes], report: DiskReport, progress: Progress | None,
            again: Callable[[], list[Work]] | None = None) -> None:
        """Read and store the slots of ``work``; then, if given, the slots ``again()`` returns
        once the first pass is done (slots to read again whole)."""
        pending: collections.deque[tuple[Work, mmap.mmap | None, Future]] = collections.deque()
        patched: set[int] = set()     # slots this run laid pieces over
        total = 0
        read_into = getattr(source, "read_into", None)

        def settle(item: Work, buf: mmap.mmap | None, fut: Future) -> None:
            n, ranges, kept = item.slot, item.ranges, item.kept
            results = fut.result()
            if buf is not None:
                self.buffers.give(buf)
            plain = [index.chunk_range(n)[1]] if ranges is None else [hi - lo for lo, hi in ranges]
            for (cid, stored), length in zip(results, plain, strict=True):
                if stored:
                    report.new_plain_bytes += length
                    self.written[cid] = stored
                    report.new_bytes += stored
                    report.new_chunks += 1
                    known.add(cid)
            if ranges is None:
                index.set(n, results[0][0])
                if n in patched:        # read again whole: no longer patched
                    patched.discard(n)
                    report.patched_slots -= 1
                return
            pieces = kept + tuple((lo, hi - lo, cid) for (lo, hi), (cid, _) in zip(ranges, results, strict=True))
            if index.get(n) is None and not any(cid for _o, _l, cid in pieces):
                index.set(n, None)  # zeros over a hole: still a hole
            else:
                index.set_pieces(n, pieces)
                patched.add(n)
                report.patched_slots += 1

        def read(items: list[Work]) -> None:
            nonlocal total
            reads = [_item_reads(index, item) for item in items]
            source.prepare([read for item_reads in reads for read in item_reads])
            total += sum(n for item_reads in reads for _, n in item_reads)
            for item, item_reads in zip(items, reads, strict=True):
                if self.stop.is_set():
                    raise StoppedEarly(f"disk {source.label}: stopped because another disk failed")
                buf = None
                datas: list[bytes | memoryview]
                if read_into is not None and item.ranges is None:
                    (offset, length), = item_reads
                    buf = self.buffers.take()
                    datas = [memoryview(buf)[:length]]
                    read_into(offset, datas[0])
                else:
                    datas = [source.read(offset, length) for offset, length in item_reads]
                report.read_bytes += sum(map(len, datas))
                pending.append((item, buf, self.pool.submit(self._store_pieces, datas, known)))
                while len(pending) >= self.in_flight:
                    settle(*pending.popleft())
                if progress:
                    progress(source.label, report.read_bytes, total)
            while pending:
                settle(*pending.popleft())

        read(work)
        if again is not None and (redo := again()):
            read(redo)

    def verify_written(self) -> None:
        """After the sync: every chunk this backup wrote has the size it was written with."""
        for cid, size in self.written.items():
            found = self.repo.stored_size(cid)
            if found is None:
                found = self._held_by_prune(cid)
            if found != size:
                raise StoredChunkLost(f"chunk {cid.hex()} was written with {size} bytes but the storage "
                                      f"holds {'no whole copy' if found is None else found}: "
                                      "no generation written")


    def _held_by_prune(self, cid: bytes) -> int | None:
        """The size of a chunk a concurrent prune moved to a trash batch while this backup ran
        (it is put back once this backup's manifest names it: docs/format.md 9.3), or None."""
        try:
            return len(self.repo.get_object(chunk_name(cid)))
        except (ObjectMissing, OSError):
            return None


def _item_reads(index: FixedIndex, item: Work) -> list[tuple[int, int]]:
    """The (disk offset, length) reads one slot needs, in the order they are made."""
    start, length = index.chunk_range(item.slot)
    if item.ranges is None:
        return [(start, length)]
    return [(start + lo, hi - lo) for lo, hi in item.ranges]


def _item_changes(index: FixedIndex, item: Work) -> list[tuple[int, int]]:
    """The (disk offset, length) spans of one slot that its change list names, widened as
    pieces are: all of its reads, unless it is read whole."""
    start = index.chunk_range(item.slot)[0]
    return [(start + lo, hi - lo) for lo, hi in item.changed]


def backup(repo: Repository, vm: str, sources: Sequence[DiskSource], *,
           metadata: dict | None = None, progress: Progress | None = None,
           workers: int | None = None, time_ns: int | None = None) -> BackupReport:
    """Write a new generation of ``vm`` from ``sources``; returns what was done.
    ``time_ns`` records another time than now as the generation's (``backup --time``).

    The backup holds a lease (format/leases.py) from before it chooses its parent until its
    manifest is written, so a concurrent prune keeps what it reuses (docs/format.md 9.3)."""
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise IngestError(f"two disks share a label: {labels}")
    with repo.vm_lock(vm), repo.lease("backup", vm) as lease:
        return _backup(repo, vm, sources, metadata, progress, workers, time_ns, lease)


def _backup(repo: Repository, vm: str, sources: Sequence[DiskSource], metadata: dict | None,
            progress: Progress | None, workers: int | None, time_ns: int | None,
            lease) -> BackupReport:
    started = time.monotonic()
    workers = workers or max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
        parent = latest_generation(repo, vm)
        parent_manifest = parent[1] if parent else None
        written_ns = time.time_ns()
        when_ns = written_ns if time_ns is None else time_ns
        ingest = _DiskIngest(repo, pool, in_flight=workers * 3)
        known: set[bytes] = set()    # chunks seen whole: probed, or written by this backup
        plans = []
        for source in sources:
            entry_parent = parent_manifest.disk(source.label) if parent_manifest else None
            parent_index = repo.get_index(entry_parent.index) if entry_parent else None
            report = DiskReport(source.label, source.capacity)
            index, work = _plan(repo, source, parent_index, report)
            plans.append(_DiskPlan(source, index, work, known, report, parent_index))
        # what the new indexes keep of the previous ones, probed while the disks are read
        probe = ParentProbe(repo, known, ingest.stop,
                             {cid for plan in plans if plan.source.extents_are_changes
                              for cid in _kept(plan.index, plan.parent_index, plan.work)})

        def read_disk(plan: _DiskPlan) -> None:
            again = (lambda: _read_again(plan, probe.lost(), ingest.written)) \
                if plan.source.extents_are_changes else None
            ingest.run(plan.source, plan.index, plan.work, plan.known, plan.report, progress, again)
            plan.report.data_bytes = sum(plan.index.chunk_range(n)[1] for n in plan.index.occupied())

        def copy_metadata(plan: _DiskPlan) -> None:
            lost = probe.lost() if plan.source.extents_are_changes else set()
            ingest.copy_metadata(plan.source, plan.index, plan.parent_index, plan.work, plan.known,
                                 plan.report, lost - ingest.written.keys())

        # Disks are read in parallel (one reader thread each), sharing the workers. Then,
        # while the repository's file system writes their chunks out, the guests' metadata
        # is copied from them (the chunks are read back from the page cache).
        with probe, ThreadPoolExecutor(len(plans) + 1, thread_name_prefix="ingest-read") as readers:
            _all(readers, read_disk, plans, ingest.stop)
            syncing = readers.submit(repo.sync)
            _all(readers, copy_metadata, plans, ingest.stop)
            syncing.result()
        reports = [plan.report for plan in plans]
        if ingest.copies_stored:
            repo.sync()  # the copies' new chunks too: every chunk durable before an index names it
        ingest.verify_written()
        disks = []
        for plan in plans:
            source, report = plan.source, plan.report
            disks.append(DiskEntry(label=source.label, capacity=source.capacity,
                                   chunk_size=repo.chunk_size, index=repo.put_index(plan.index),
                                   data_bytes=report.data_bytes, new_bytes=report.new_bytes,
                                   new_chunks=report.new_chunks,
                                   source={**source.info, "mode": report.mode,
                                           "new_plain_bytes": report.new_plain_bytes}))
        manifest = Manifest(vm=vm, generation=repo.new_generation_name(vm, when_ns),
                            time=_iso(when_ns), time_ns=when_ns,
                            parent=parent[0] if parent else None, disks=disks,
                            metadata=metadata or {}, written_ns=written_ns)
        lease.assert_held()
        name = repo.put_manifest(manifest)
    return BackupReport(vm, manifest.generation, name, reports, time.monotonic() - started)


def _all(pool: ThreadPoolExecutor, fn: Callable[[_DiskPlan], None], plans: list[_DiskPlan],
         stop: threading.Event) -> None:
    """``fn(plan)`` for every plan in ``pool``. The first failure, on whichever disk, stops
    the others at once (``stop``: a disk that fails within seconds does not wait for the
    others to be read to their end), and is the one raised once they have stopped — not the
    "stopped" errors it caused in them."""
    futures = [pool.submit(fn, plan) for plan in plans]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed or not all(f.done() for f in futures):     # a failure, or Ctrl-C meanwhile
            stop.set()
            wait(futures)
    if failed:
        errors = [e for f in failed if (e := f.exception()) is not None]
        raise next((e for e in errors if not isinstance(e, (StoppedEarly, ProbeStopped))), errors[0])


def _kept(index: FixedIndex, parent: FixedIndex | None, work: list[Work]) -> Iterator[bytes]:
    """The ids of the previous generation's chunks that the new ``index`` (a copy of
    ``parent``'s slots) still names once ``work`` is done: bases and pieces of the slots not
    read whole, and the stream chunks of the guest-metadata copies it may keep."""
    whole = {item.slot for item in work if item.ranges is None}
    for n in index.occupied():
        if n in whole:
            continue
        base = index.get(n)
        if base is not None:
            yield base
        for _o, _l, cid in index.pieces(n):
            if cid is not None:
                yield cid
    if parent is not None:
        for _off, cid in parent.copy_references():
            yield cid


def _read_again(plan: _DiskPlan, lost: set[bytes], written: dict[bytes, int]) -> list[Work]:
    """The slots of ``plan``'s new index that name a chunk found lost (and not stored again
    by this backup since): to be read again, whole."""
    lost = lost - written.keys()
    if not lost:
        return []
    index = plan.index
    again = [Work(n, None, ()) for n in index.occupied()
             if index.get(n) in lost or any(cid in lost for _o, _l, cid in index.pieces(n))]
    log.warning("disk %s: %d chunks of the previous generation are missing or damaged; "
                "the %d slots that name them are read again", plan.source.label, len(lost), len(again))
    return again


def _plan(repo: Repository, source: DiskSource, parent_index: FixedIndex | None,
          report: DiskReport) -> tuple[FixedIndex, list[Work]]:
    """The starting index and the slots to read. Chunks the starting index names come from
    ``parent_index`` and are probed while the slots are read (``parentprobe``)."""
    cs = repo.chunk_size
    if source.extents_are_changes:
        if parent_index is None:
            raise IngestError(f"disk {source.label}: changed extents were given but there is "
                              "no previous generation of this disk to apply them to")
        if parent_index.capacity != source.capacity:
            raise IngestError(f"disk {source.label}: capacity changed from "
                              f"{parent_index.capacity} to {source.capacity}; read it in full")
        report.mode = "changed"
        index = parent_index.copy()
        work = [_patch_or_whole(index, n, ranges)
                for n, ranges in slot_ranges(clip_extents(source.extents(), source.capacity), cs)]
        return index, sorted(work, key=lambda item: item.slot)
    index = FixedIndex.empty(source.capacity, cs)
    return index, [Work(n, None, ()) for n in chunks_touched(source.extents(), cs, source.capacity)]


def _widened(changed: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """A slot's changed ``(start, end)`` ranges widened to ``PIECE_ALIGN`` boundaries, clipped
    to its ``length``, those that then touch joined."""
    ranges: list[tuple[int, int]] = []
    for lo, hi in changed:
        lo, hi = lo - lo % PIECE_ALIGN, min(length, -(-hi // PIECE_ALIGN) * PIECE_ALIGN)
        if ranges and lo <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], hi))
        else:
            ranges.append((lo, hi))
    return ranges


def _patch_or_whole(index: FixedIndex, n: int, changed: list[tuple[int, int]]) -> Work:
    """Slot ``n`` with ``changed`` ranges: as pieces over its previous content, with the earlier
    pieces they do not cover, while all of them add up to less than the slot and number at most
    ``MAX_PIECES``; else whole (then only the bytes the changes do not cover, if any, are
    stored again)."""
    _, length = index.chunk_range(n)
    ranges = _widened(changed, length)
    kept = tuple(p for p in index.pieces(n)
                 if not any(lo <= p[0] and p[0] + p[1] <= hi for lo, hi in ranges))
    covered = sum(hi - lo for lo, hi in ranges) + sum(p[1] for p in kept)
    if covered >= length or len(ranges) + len(kept) > MAX_PIECES:
        return Work(n, None, (), tuple(ranges))
    return Work(n, tuple(ranges), kept, tuple(ranges))


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + \
        f".{ns % 1_000_000_000 // 1000:06d}Z"
