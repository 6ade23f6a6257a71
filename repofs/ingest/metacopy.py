"""Copies of the guests' file-system metadata, written with each disk's index.

A walk of a guest's tree reads a few MiB of metadata — inode tables, directory blocks —
scattered over the disk's 1 MiB chunks: 150 of them for a 20,000-file ext4 tree, each
fetched, decrypted, decompressed and verified whole for a few KiB. So a backup stores those
bytes a second time, packed into a stream of their own chunks, and the index names both
(``format.fixedindex.Copies``); readers of those ranges fetch the stream instead
(``repofs.views.DiskView.read``), and the mount pushes exactly those ranges into the page
cache without searching the disk for them (``repofs.mount.prefill``).

What is copied, per disk with an ext2/3/4 volume, at most ``LIMIT`` bytes: the first 128 KiB
of the disk (partition tables), the first 64 KiB of every volume on it (what finding and
probing the volumes reads, LVM labels and metadata included; for ext the boot block,
superblock and group descriptors), and what ``repofs.guest.extmeta`` finds in each ext volume
(used inode tables, directory blocks and their maps), widened to whole 4 KiB pages of the
volume and of the disk (what page-aligned readers read).

The bytes are read from the new generation as stored — its index and chunks, never the source
again — so copies and chunks cannot disagree. A backup with a change list keeps the previous
generation's copies when no changed byte falls inside them (the metadata did not change, so
neither did what the search would find). When changed bytes fall inside them, it cuts exactly
those bytes — the change list's, widened to pages as pieces are — out of the copied ranges
and keeps everything else where it lies in the stream, every stream chunk under its id
(``Copies.cut``: the cut bytes become gaps of the stream, an index version 2): the changed
metadata is then read from the disk's slots — from the pieces this incremental stores for it,
which hold the changed bytes and little else — so no byte is stored twice and no search runs
(the search reads every inode table and directory through the generation, a quarter of a
second for the 8 GiB data set, whatever the change). A slot read whole (its pieces would be
too many) holds bytes beyond the change list: the copied ones among them are compared with
what was read, and any page that differs is cut too (``_verified``), so the copies never
disagree with the slots. Metadata the guest adds is written, so it lies in the changed bytes
too (a search would add little else: the blocks after a new directory's, which the kernel
reads ahead). Cuts add up over incrementals; once less than half of the stream is still
copied bytes, the backup searches again (the copies packed anew, as a full backup makes
them), with every read that lies inside the old copies and outside the changes served by the
old copies.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from format import spans
from format.fixedindex import HOLE, Copies, FixedIndex
from format.repository import Repository

LIMIT = 64 << 20            # bytes copied per disk at most
PAGE = 4096
HEAD = 64 << 10             # the start of each volume (boot block, superblock, descriptors)
DISK_HEAD = 128 << 10       # the start of the disk: partition tables, and what a probe of the
                            # whole disk reads (a Btrfs superblock's magic lies at 64 KiB)
SLOTS_KEPT = 24             # slots of the new generation held while reading
LOAD_THREADS = 2            # slots loaded at once from a local repository (its page cache)
STORE_LOAD_THREADS = 12     # ... from object storage, where each waits for a round trip
LIVE_SHARE = 2              # copies cut by changes are kept while at least 1/LIVE_SHARE of
                            # their stream is still copied bytes; less: search anew


def build(repo: Repository, label: str, index: FixedIndex, previous: FixedIndex | None,
          touched: list[tuple[int, int]] | None, store: Callable[[bytes], tuple[bytes | None, int]],
          changed: list[tuple[int, int]] | None = None) -> Copies | None:
    """The copies for the new ``index`` of disk ``label``. ``touched``: the disk ranges this
    backup wrote — ascending, none overlapping — when it started from ``previous`` (a change
    list), else None; ``changed``: those of them the change list names (ascending, apart;
    None: all of ``touched``) — a slot read whole is touched beyond its changes.
    ``store(data)`` stores a stream chunk: (id or None for zeros, bytes stored)."""
    old = previous.copies if previous is not None and touched is not None else None
    if old is not None:
        kept = old.cut(changed if changed is not None else touched or [])
        if kept is not None and changed is not None:
            kept = _verified(repo, label, index, kept, spans.subtract(touched or [], changed))
        if kept is old:             # no changed byte in the copies: kept as they are
            return old
        if kept is not None and kept.copied_size * LIVE_SHARE >= kept.stream_size:
            return kept
    with _GenerationReader(repo, label, index, old, touched or []) as reader:
        ranges = find_ranges(reader)
        if not ranges:
            return None
        ids = [store(chunk)[0] or HOLE for chunk in _cut(reader.read_ranges(ranges), repo.chunk_size)]
    return Copies(ranges, ids, repo.chunk_size)


def _verified(repo: Repository, label: str, index: FixedIndex, copies: Copies,
              reread: list[tuple[int, int]]) -> Copies | None:
    """``copies`` less the pages that differ from the new generation's where it read bytes
    again beyond its change list (``reread``: the rest of the slots it read whole). Those
    bytes were not said to change, so they should be the copies' — but the slots hold what
    was read, and the copies may never say otherwise."""
    check = spans.intersect(copies.ranges, reread)
    if not check:
        return copies
    stream: dict[int, bytes | None] = {}

    def chunk(k: int) -> bytes | None:
        if k not in stream:
            stream[k] = copies.chunk(k, repo.get_chunk)
        return stream[k]
    differ: list[tuple[int, int]] = []
    with _GenerationReader(repo, label, index, None, []) as reader:
        for (off, n), new in zip(check, reader.read_ranges(check), strict=True):
            old = copies.read(off, n, chunk)
            if old == new:
                continue
            for p in range(0, n, PAGE):
                if old is None or old[p:p + PAGE] != new[p:p + PAGE]:
                    differ.append((off + p, min(PAGE, n - p)))
    return copies.cut(differ) if differ else copies


def find_ranges(disk: "_GenerationReader") -> list[tuple[int, int]]:
    """The disk ranges to copy: sorted, apart, whole pages, at most ``LIMIT`` bytes."""
    from repofs.guest import extmeta, guestfs  # noqa: PLC0415 (only a backup of a disk needs them)
    found: list[tuple[int, int]] = [(0, DISK_HEAD)]
    try:
        volumes = guestfs.GuestGeneration(_OneDisk(disk)).volumes(disk.label)
    except guestfs.GuestError:
        return []
    for v in volumes:           # what finding the volumes reads: probes, LVM labels
        if v.offset is not None:
            found.append((v.offset - v.offset % HEAD, HEAD + v.offset % HEAD))
    volumes = [v for v in volumes if v.fstype == "ext" and v.offset is not None]
    for v in volumes:
        left = LIMIT - sum(n for _, n in found)
        if left <= 0:
            break
        fh = (v.open_pages or v.open)()
        base = v.offset
        assert base is not None             # kept above: contiguous volumes only

        def prefetch(o: int, n: int, base: int = base) -> None:
            disk.prefetch(base + o, n)
        for off, n in extmeta.metadata_ranges(fh, left, prefetch):
            start, end = off - off % PAGE, -(-(off + n) // PAGE) * PAGE        # volume pages
            start, end = base + start, base + end
            start, end = start - start % PAGE, -(-end // PAGE) * PAGE           # disk pages
            found.append((start, end - start))
    if not volumes:
        return []
    inside = [(off, min(off + n, disk.capacity) - off) for off, n in found if off < disk.capacity]
    ranges, total = [], 0
    for off, n in spans.merge(inside):     # apart: touching ranges become one
        n = min(n, LIMIT - total)
        if n <= 0:
            break
        ranges.append((off, n))
        total += n
    return ranges


def _cut(parts: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The concatenation of ``parts`` in pieces of ``size`` bytes (the last may be short)."""
    buf = bytearray()
    for part in parts:
        buf += part
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


@dataclass
class _OneDisk:
    """The one disk, as ``guestfs.GuestGeneration`` takes a generation."""
    disk: "_GenerationReader"
    vm: str = "backup"
    name: str = "new"
    time_ns: int = 0
    disks: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.disks = [self.disk]


class _GenerationReader:
    """The new generation's bytes of one disk, read from its index (slots assembled from
    stored chunks, a few kept) — or from the previous copies where no change touched them."""

    def __init__(self, repo: Repository, label: str, index: FixedIndex, old: Copies | None,
                 touched: list[tuple[int, int]]):
        self.repo, self.label, self.index, self.old, self.touched = repo, label, index, old, touched
        self.capacity = index.capacity
        self._touched_ends = [off + n for off, n in touched]   # ascending: none overlap
        self._slots: OrderedDict[int, Future] = OrderedDict()
        self._stream: dict[int, bytes] = {}
        # Object storage (a backend that says how many requests it runs at once) answers each
        # slot after a round trip: 84 slots of a 1 GiB disk fetched two at a time took 2.8 s
        # at 20 ms, longer than its uploads took to finish. More loads in flight hide that;
        # SLOTS_KEPT, not the threads, bounds the memory.
        threads = STORE_LOAD_THREADS if getattr(repo.backend, "parallelism", 0) else LOAD_THREADS
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="metacopy")
        self._ahead = min(threads + 1, SLOTS_KEPT - 1)   # slots loading ahead of the reader

    def __enter__(self) -> "_GenerationReader":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(cancel_futures=True)

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.capacity)
        if offset >= end:
            return b""
        old = self._from_old(offset, end - offset)
        if old is not None:
            return old
        cs = self.index.chunk_size
        parts = []
        for n in range(offset // cs, (end - 1) // cs + 1):
            start = n * cs
            data = self._slot(n)
            parts.append(data[max(offset, start) - start:min(end, start + cs) - start])
        return b"".join(parts)

    def prefetch(self, offset: int, size: int) -> None:
        if size <= 0 or self._old_covers(offset, size):
            return
        cs = self.index.chunk_size
        for n in range(offset // cs, (min(offset + size, self.capacity) - 1) // cs + 1):
            self._slot_future(n)

    def read_ranges(self, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
        """Each range's bytes, in order, while the next slots load: as many slots ahead of
        the range being read as there are loading threads (ranges are often a few KiB, many
        in one slot, so counting ranges would keep too few loads in flight)."""
        cs = self.index.chunk_size
        order: list[int] = []          # the slots the ranges need, in the order first needed
        first: list[int] = []          # per range: how many slots earlier ranges needed
        done_after: dict[int, list[int]] = {}   # range -> the slots no later range needs
        last: dict[int, int] = {}
        for i, (off, n) in enumerate(ranges):
            first.append(len(order))
            if n <= 0 or self._old_covers(off, n):
                continue
            for slot in range(off // cs, (min(off + n, self.capacity) - 1) // cs + 1):
                if slot not in last:
                    order.append(slot)
                last[slot] = i
        for slot, i in last.items():
            done_after.setdefault(i, []).append(slot)
        asked = 0
        for i, ((off, n), position) in enumerate(zip(ranges, first, strict=True)):
            while asked < min(len(order), position + self._ahead):
                self._slot_future(order[asked])
                asked += 1
            yield self.read(off, n)
            # read slots leave at once: kept, they would outlive the loads asked ahead
            # (the oldest are dropped first) and those would be made again
            for slot in done_after.get(i, ()):
                self._slots.pop(slot, None)

    def _old_covers(self, offset: int, size: int) -> bool:
        return self.old is not None and self.old.stream_pos(offset, size) is not None and \
            not self._touched(offset, size)

    def _touched(self, offset: int, size: int) -> bool:
        """Whether this backup wrote any byte of [offset, offset + size)."""
        i = bisect.bisect_right(self._touched_ends, offset)   # the first range ending past offset
        return i < len(self.touched) and self.touched[i][0] < offset + size

    def _from_old(self, offset: int, size: int) -> bytes | None:
        if not self._old_covers(offset, size):
            return None
        assert self.old is not None
        return self.old.read(offset, size, self._old_chunk)

    def _old_chunk(self, k: int) -> bytes | None:
        data = self._stream.get(k)
        if data is None:
            data = self._stream[k] = self.old.chunk(k, self.repo.get_chunk)  # type: ignore[union-attr,assignment]
        return data

    def _slot_future(self, n: int) -> Future:
        fut = self._slots.get(n)
        if fut is None:
            fut = self._slots[n] = self._pool.submit(self.index.assemble, n, self.repo.get_chunk)
            while len(self._slots) > SLOTS_KEPT:
                # a load not started yet is dropped: left queued, it would run before the
                # loads asked for since, and every read would wait behind it
                self._slots.popitem(last=False)[1].cancel()
        else:
            self._slots.move_to_end(n)
        return fut

    def _slot(self, n: int) -> bytes:
        return self._slot_future(n).result()
