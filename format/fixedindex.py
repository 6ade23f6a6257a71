"""The fixed index of one disk in one generation: chunk number -> chunk id, or a hole,
optionally patches (small changed pieces laid over a slot's chunk) and copies (byte ranges of
the disk stored a second time, packed together, for readers of the guest's metadata).

Disks are cut into chunks of ``chunk_size`` bytes aligned to disk offsets, so the slot
holding an offset is ``offset // chunk_size`` — arithmetic, never a scan. The last slot may
be short (capacity not a multiple of the chunk size). A hole (an all-zero chunk) is stored
as 32 zero bytes and is never read from storage.

A slot's bytes are its base (the chunk the id names, or zeros for a hole) with its pieces,
if any, copied over it in order. A piece is ``(offset inside the slot, length, id)``: the id
names a chunk object of exactly ``length`` bytes, or is None for zeros. Pieces let an
incremental backup with a change list store only the changed bytes of a slot instead of the
whole chunk around them; the writer decides when a slot is better rewritten whole.

Copies (``Copies``) repeat the disk's bytes at some ranges — the guest file systems' metadata,
chosen by the writer — in a *stream* of their own chunks, so that a reader of those ranges
(a walk of a guest's tree) fetches a few MiB of packed metadata instead of every 1 MiB chunk
that holds a directory block or an inode table. They add nothing: the bytes are the disk's.

An index grows with its disk (32 bytes per slot: 64 MiB at 2 TiB), mostly holes on a sparse
disk: the ids are an ``IdTable`` (``format.idtable``) that holds the pages of written slots
only, ``encoding`` hands the plaintext out in pieces and ``IndexDecoder`` takes it in pieces,
so that no reader or writer joins it whole (``format.indexobject`` seals and opens them).

Plaintext encoding (inside a sealed object with magic ``RFIX``), little-endian::

    0   8  capacity      disk size in bytes
    8   4  chunk size    bytes
    12  4  flags         bit 0: a patch table follows the ids; bit 1: a copy table follows
                         (after the patch table, if any); bit 2 (only with bit 1): the copy
                         ranges' third field is a gap; other bits: damaged
    16  8  count         ceil(capacity / chunk size)
    24  32*count         base chunk ids, in disk order; 32 zero bytes for a hole
    then, when bit 0 is set, the patch table:
        8  patched       number of patched slots (>= 1)
        per patched slot, slot numbers strictly ascending:
            8  slot      slot number (< count)
            4  pieces    number of pieces (>= 1)
            4  reserved  0
            per piece, applied in this order:
                4   offset   inside the slot
                4   length   > 0; offset + length <= the slot's length
                32  id       chunk id of the piece's bytes; 32 zero bytes = zeros
    then, when bit 1 is set, the copy table:
        8  ranges        r >= 1
        r times, offsets strictly ascending, ranges apart and inside the disk:
            8  offset    disk offset
            4  length    > 0
            4  gap       bit 2: stream bytes no range uses, before this range; else 0
        8  length        only with bit 2: the stream's length, at least the sum of the
                         ranges' lengths and gaps (the rest: unused); without bit 2 the
                         stream's length is the sum of the ranges' lengths
        8  chunks        c = ceil(stream length / chunk size)
        32*c             ids of the stream's chunks: the ranges' bytes (after their gaps),
                         in order, cut every ``chunk size`` bytes (the last chunk may be
                         short); a chunk holding no range byte: 32 zero bytes
    An index with bit 2 is sealed as version 2 (``format.indexobject``), so that readers
    older than gaps refuse it as unsupported instead of reading it wrong.
"""
from __future__ import annotations

import bisect
import hashlib
import heapq
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from . import spans as spans_
from .errors import CorruptObject
from .idtable import HOLE, ID_SIZE, PAGE_SLOTS, IdTable

HEADER = struct.Struct("<QIIQ")
COUNT = struct.Struct("<Q")              # patched slots; copied ranges; stream chunks
SLOT_HEADER = struct.Struct("<QII")
PIECE = struct.Struct("<II32s")
FLAG_PATCHES = 1
FLAG_COPIES = 2
FLAG_COPY_GAPS = 4                       # the copy ranges' third field is the gap before each
COPY_RANGE = struct.Struct("<QII")

Piece = tuple[int, int, "bytes | None"]   # (offset inside the slot, length, chunk id or None = zeros)


@dataclass
class Copies:
    """Disk ranges ``(offset, length)`` — ascending, apart — whose bytes are also stored in
    the stream chunks ``ids``: the ranges' bytes in order, cut every ``chunk_size``. With
    ``gaps`` (an index with flag bit 2), ``gaps[i]`` stream bytes that no range uses lie
    before range ``i``: what an incremental cut out of the copies (``cut``), so that every
    other byte keeps its place and every chunk its id. A chunk holding no range byte is a
    hole (zeros, never read)."""
    ranges: list[tuple[int, int]]
    ids: list[bytes]
    chunk_size: int
    gaps: list[int] | None = None
    length: int | None = None          # with gaps: the stream's length, its tail maybe unused

    def __post_init__(self) -> None:
        self._starts = [off for off, _ in self.ranges]
        self._stream: list[int] = []       # where each range starts in the stream
        pos = 0
        gaps = self.gaps if self.gaps is not None else [0] * len(self.ranges)
        for (_, length), gap in zip(self.ranges, gaps, strict=True):
            pos += gap
            self._stream.append(pos)
            pos += length
        self.ranges_end = pos
        self.stream_size = pos if self.length is None else max(pos, self.length)

    @property
    def copied_size(self) -> int:
        """The disk bytes the copies hold (the stream less its gaps)."""
        return sum(length for _, length in self.ranges)

    def validate(self, capacity: int) -> None:
        """Raise ValueError unless the ranges (and gaps) are what the format allows on a disk
        of ``capacity`` bytes and the ids are as many as the stream's chunks, those that
        hold no range byte holes."""
        end = -1
        for off, length in self.ranges:
            if length <= 0 or off <= end or off + length > capacity or length >= 1 << 32:
                raise ValueError(f"copy range ({off}, {length}) is out of order, empty or outside the disk")
            end = off + length
        if self.gaps is not None and (len(self.gaps) != len(self.ranges)
                                      or any(not 0 <= g < 1 << 32 for g in self.gaps)):
            raise ValueError("copy table gaps do not match its ranges")
        if (self.length is not None) != (self.gaps is not None) or \
                (self.length is not None and not self.ranges_end <= self.length < 1 << 63):
            raise ValueError("copy table stream length is missing, or shorter than its ranges")
        if not self.ranges or len(self.ids) != chunk_count(self.stream_size, self.chunk_size):
            raise ValueError("copy table without ranges, or its chunk count does not match them")
        if self.gaps is not None:
            used = _chunks_holding([(length, pos) for (_, length), pos
                                    in zip(self.ranges, self._stream, strict=True)], self.chunk_size)
            if any(cid != HOLE for k, cid in enumerate(self.ids) if k not in used):
                raise ValueError("a stream chunk that holds no copied byte is not a hole")

    def stream_pos(self, offset: int, length: int) -> int | None:
        """Where disk bytes [offset, offset + length) start in the stream, or None unless one
        range holds them all."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0 or length <= 0:
            return None
        start, size = self.ranges[i]
        if offset + length > start + size:
            return None
        return self._stream[i] + offset - start

    def stream_parts(self, pos: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(stream chunk number, offset in it, bytes) covering stream bytes [pos, pos+length)."""
        cs = self.chunk_size
        end = pos + length
        while pos < end:
            k, inner = divmod(pos, cs)
            take = min(cs - inner, end - pos)
            yield k, inner, take
            pos += take

    def disk_offset(self, pos: int) -> int:
        """The disk offset of stream byte ``pos``, or of the first copied byte after it when
        ``pos`` lies in a gap."""
        i = bisect.bisect_right(self._stream, pos) - 1
        if i < 0:
            return self.ranges[0][0]
        start, length = self.ranges[i]
        if pos < self._stream[i] + length or i + 1 == len(self.ranges):
            return start + pos - self._stream[i]
        return self.ranges[i + 1][0]

    def chunk_length(self, k: int) -> int:
        return min(self.chunk_size, self.stream_size - k * self.chunk_size)

    def chunk(self, k: int, fetch: Callable[[bytes], "bytes | None"]) -> bytes | None:
        """Stream chunk ``k``: ``fetch(id)`` (None: not at hand), zeros for a hole id.
        CorruptObject unless it holds exactly the chunk's length."""
        cid = self.ids[k]
        if cid == HOLE:
            return bytes(self.chunk_length(k))
        data = fetch(cid)
        if data is not None and len(data) != self.chunk_length(k):
            raise CorruptObject(f"copy stream chunk {k}", f"holds {len(data)} bytes, not {self.chunk_length(k)}")
        return data

    def read(self, offset: int, length: int, chunk: Callable[[int], "bytes | None"]) -> bytes | None:
        """Disk bytes [offset, offset + length) from the stream, its chunk ``k`` given by
        ``chunk(k)``; None unless one range holds them all and every chunk is at hand."""
        pos = self.stream_pos(offset, length)
        if pos is None:
            return None
        return self.read_stream(pos, length, chunk)

    def segments(self, offset: int, length: int) -> list[tuple[int, int, int | None]]:
        """Disk bytes [offset, offset + length) cut where copied ranges start and end, in
        order: (disk offset, bytes, stream position; None where not copied)."""
        out: list[tuple[int, int, int | None]] = []
        end = offset + length
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        pos = offset
        while pos < end:
            while i < len(self.ranges) and sum(self.ranges[i]) <= pos:
                i += 1
            if i == len(self.ranges) or self.ranges[i][0] >= end:
                out.append((pos, end - pos, None))
                break
            start, size = self.ranges[i]
            if start > pos:
                out.append((pos, start - pos, None))
                pos = start
            take = min(start + size, end) - pos
            out.append((pos, take, self._stream[i] + pos - start))
            pos += take
        return out

    def cut_spans(self) -> list[tuple[int, int]]:
        """Disk spans ``(offset, length)`` where the bytes cut out of the copies most likely
        lie — where a reader finds the guest metadata an incremental stored as pieces, to
        load ahead. A gap's bytes lie between the two ranges it separates: all the space
        between them when it is at most twice the gap (a range cut in the middle: exactly
        it), else that much at each end of it; the table does not say where ranges cut out
        whole lay, so those may be missed (a hint only: readers fetch what they miss)."""
        if self.gaps is None:
            return []
        out: list[tuple[int, int]] = []
        prev_end = 0
        for (start, length), gap in zip(self.ranges, self.gaps, strict=True):
            if gap:
                if start - prev_end <= 2 * gap:
                    out.append((prev_end, start - prev_end))
                else:
                    out += [(prev_end, gap), (start - gap, gap)]
            prev_end = start + length
        return [(o, n) for o, n in out if n > 0]

    def meets(self, offset: int, length: int) -> bool:
        """Whether any byte of [offset, offset + length) is copied."""
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while i < len(self.ranges) and self.ranges[i][0] < offset + length:
            if sum(self.ranges[i]) > offset:
                return True
            i += 1
        return False

    def read_stream(self, pos: int, length: int, chunk: Callable[[int], "bytes | None"]) -> bytes | None:
        """Stream bytes [pos, pos + length), chunk ``k`` given by ``chunk(k)``; None unless
        every chunk is at hand."""
        parts = []
        for k, inner, take in self.stream_parts(pos, length):
            data = chunk(k)
            if data is None:
                return None
            parts.append(data[inner:inner + take])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def cut(self, spans: Iterable[tuple[int, int]]) -> "Copies | None":
        """This table with the disk bytes of ``spans`` (``(offset, length)``) no longer
        copied: they leave the ranges (a range may split) and become gaps, every other byte
        keeps its place in the stream (whose length stays) and every chunk its id, but a
        chunk left without a copied byte becomes a hole. ``self`` when no span meets a
        range; None when nothing is left."""
        kept_spans = spans_.subtract(self.ranges, spans_.merge(spans))
        if sum(n for _, n in kept_spans) == self.copied_size:
            return self
        if not kept_spans:
            return None
        kept = []                                   # (disk offset, length, stream position)
        for off, n in kept_spans:
            i = bisect.bisect_right(self._starts, off) - 1
            kept.append((off, n, self._stream[i] + off - self.ranges[i][0]))
        ranges = [(off, length) for off, length, _ in kept]
        gaps, last = [], 0
        for _off, length, pos in kept:
            gaps.append(pos - last)
            last = pos + length
        used = _chunks_holding([(length, pos) for _, length, pos in kept], self.chunk_size)
        ids = [cid if k in used else HOLE for k, cid in enumerate(self.ids)]
        return Copies(ranges, ids, self.chunk_size, gaps, self.stream_size)


def _chunks_holding(parts: list[tuple[int, int]], chunk_size: int) -> set[int]:
    """The numbers of the stream chunks that hold a byte of ``parts`` ((length, stream
    position) each)."""
    used = set[int]()
    for length, pos in parts:
        used.update(range(pos // chunk_size, (pos + length - 1) // chunk_size + 1))
    return used


@dataclass
class FixedIndex:
    capacity: int
    chunk_size: int
    ids: IdTable  # each slot's base (bytes-like given here: its encoding, converted)
    patches: dict[int, tuple[Piece, ...]] = field(default_factory=dict)
    copies: Copies | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ids, IdTable):
            self.ids = IdTable.from_bytes(self.ids)

    @classmethod
    def empty(cls, capacity: int, chunk_size: int) -> "FixedIndex":
        return cls(capacity, chunk_size, IdTable(chunk_count(capacity, chunk_size)))

    def copy(self) -> "FixedIndex":
        """The same slots (bases and pieces), without copies: those describe one generation."""
        return FixedIndex(self.capacity, self.chunk_size, self.ids.copy(), dict(self.patches))

    @property
    def count(self) -> int:
        return self.ids.count

    def chunk_from_offset(self, offset: int) -> tuple[int, int]:
        """(slot number, offset inside that slot)."""
        return divmod(offset, self.chunk_size)

    def chunk_range(self, number: int) -> tuple[int, int]:
        """(disk offset, length) of slot ``number``; the last may be short."""
        start = number * self.chunk_size
        return start, min(self.chunk_size, self.capacity - start)

    def get(self, number: int) -> bytes | None:
        """The slot's base chunk id (None: zeros). Its bytes are that only when ``pieces``
        of the slot is empty."""
        cid = self.ids.get(number)
        return None if cid == HOLE else cid

    def pieces(self, number: int) -> tuple[Piece, ...]:
        return self.patches.get(number, ())

    def set(self, number: int, chunk_id: bytes | None) -> None:
        """Make the slot exactly the chunk ``chunk_id`` (None: zeros); drops its pieces."""
        self.ids.set(number, chunk_id if chunk_id else HOLE)
        self.patches.pop(number, None)

    def set_pieces(self, number: int, pieces: Iterable[Piece]) -> None:
        """Lay ``pieces`` over the slot's base (replacing earlier pieces)."""
        pieces = tuple(pieces)
        _, length = self.chunk_range(number)
        for off, n, _cid in pieces:
            if n <= 0 or off < 0 or off + n > length:
                raise ValueError(f"piece ({off}, {n}) outside slot {number} of {length} bytes")
        if pieces:
            self.patches[number] = pieces
        else:
            self.patches.pop(number, None)

    def piece_covering(self, number: int, offset: int, length: int) -> Piece | None:
        """The piece of slot ``number`` that alone holds its bytes [offset, offset + length)
        — the last one laid over any of them, when it covers them all — else None."""
        for piece in reversed(self.patches.get(number, ())):
            off, n, _cid = piece
            if off < offset + length and offset < off + n:
                return piece if off <= offset and offset + length <= off + n else None
        return None

    def key(self, number: int) -> bytes | None:
        """A name for the slot's bytes, for caches: the base id when the slot has no pieces,
        else 33 bytes derived from base and pieces (never equal to a chunk id); None for zeros."""
        pieces = self.patches.get(number)
        if pieces is None:
            return self.get(number)
        h = hashlib.blake2b(self.ids.get(number), digest_size=32)
        for off, n, cid in pieces:
            h.update(PIECE.pack(off, n, cid or HOLE))
        return b"P" + h.digest()

    def assemble(self, number: int, fetch: Callable[[bytes], bytes]) -> bytes:
        """The slot's bytes, its chunks read with ``fetch(id)``: the base, pieces laid over it."""
        _, length = self.chunk_range(number)
        base = self.get(number)
        pieces = self.patches.get(number)
        if not pieces:
            return fetch(base) if base else bytes(length)
        buf = bytearray(fetch(base)) if base else bytearray(length)
        if len(buf) != length:
            raise CorruptObject(f"slot {number}", f"base chunk holds {len(buf)} bytes, not {length}")
        for off, n, cid in pieces:
            data = fetch(cid) if cid else bytes(n)
            if len(data) != n:
                raise CorruptObject(f"slot {number}", f"piece at {off} holds {len(data)} bytes, not {n}")
            buf[off:off + n] = data
        return bytes(buf)

    def occupied(self) -> Iterator[int]:
        """Numbers of the slots that are not all zeros by construction (a base or pieces),
        ascending. Visits the held pages of the id table only, not every slot of the disk."""
        last = -1
        for n in heapq.merge((n for n, _ in self.ids.stored()), sorted(self.patches)):
            if n != last:
                yield n
                last = n

    def stored(self) -> Iterator[tuple[int, bytes]]:
        """(slot number, base id) of every slot whose base is not a hole."""
        return self.ids.stored()

    def references(self) -> Iterator[tuple[int, bytes]]:
        """(disk offset, chunk id) of every stored object the index names: bases, pieces and
        copy chunks (at the disk offset of their first byte)."""
        for n, cid in self.stored():
            yield n * self.chunk_size, cid
        yield from self.table_references()

    def table_references(self) -> Iterator[tuple[int, bytes]]:
        """``references`` of the patch and copy tables alone (not the slots' bases)."""
        for n, pieces in sorted(self.patches.items()):
            for off, _len, piece in pieces:
                if piece is not None:
                    yield n * self.chunk_size + off, piece
        if self.copies is not None:
            yield from self.copy_references()

    def copy_references(self) -> Iterator[tuple[int, bytes]]:
        """(disk offset of its first byte, id) of every stored stream chunk of the copies."""
        copies = self.copies
        for k, cid in enumerate(copies.ids if copies else ()):
            if cid != HOLE:
                yield copies.disk_offset(k * copies.chunk_size), cid  # type: ignore[union-attr]

    def encoding(self) -> tuple[int, Iterator[bytes | bytearray]]:
        """(length, pieces) of the index's plaintext, the pieces in order: the header, the id
        table page by page (holes from one shared page of zeros), the tables. Nothing the
        size of the disk is joined (an index of a 2 TiB disk is 64 MiB)."""
        flags = (FLAG_PATCHES if self.patches else 0) | (FLAG_COPIES if self.copies else 0)
        if self.copies and self.copies.gaps is not None:
            flags |= FLAG_COPY_GAPS
        parts = []
        if self.patches:
            parts.append(COUNT.pack(len(self.patches)))
            for n in sorted(self.patches):
                pieces = self.patches[n]
                parts.append(SLOT_HEADER.pack(n, len(pieces), 0))
                parts.extend(PIECE.pack(off, length, cid or HOLE) for off, length, cid in pieces)
        if self.copies:
            self.copies.validate(self.capacity)
            parts.append(COUNT.pack(len(self.copies.ranges)))
            gaps = self.copies.gaps or [0] * len(self.copies.ranges)
            parts.extend(COPY_RANGE.pack(off, length, gap)
                         for (off, length), gap in zip(self.copies.ranges, gaps, strict=True))
            if self.copies.gaps is not None:
                parts.append(COUNT.pack(self.copies.stream_size))
            parts.append(COUNT.pack(len(self.copies.ids)))
            parts.extend(self.copies.ids)
        tables = b"".join(parts)
        head = HEADER.pack(self.capacity, self.chunk_size, flags, self.count)

        def stream() -> Iterator[bytes | bytearray]:
            yield head
            yield from self.ids.pages()
            if tables:
                yield tables
        return len(head) + self.ids.nbytes + len(tables), stream()

    def encode(self) -> bytes:
        """The plaintext whole (see ``encoding`` for a large index)."""
        return b"".join(self.encoding()[1])

    @classmethod
    def decode(cls, data: bytes, label: str) -> "FixedIndex":
        decoder = IndexDecoder(label)
        decoder.feed(data)
        return decoder.finish()


class IndexDecoder:
    """Decodes an index's plaintext fed in pieces of any size (``feed``, then ``finish``):
    the id table is kept page by page, pages of holes not held (``format.idtable``), so a
    reader never holds the plaintext of a large index whole. With ``on_ids`` each page of
    the id table (whole 32-byte ids) is also handed to it as it arrives; ``keep_ids=False``
    keeps none of them (a caller that only needs to see the ids: prune's marks). Every rule
    of the format is checked; CorruptObject names ``label`` and the cause."""

    def __init__(self, label: str, *, keep_ids: bool = True,
                 on_ids: Callable[[bytes | bytearray | memoryview], None] | None = None) -> None:
        self._label = label
        self._keep = keep_ids
        self._on_ids = on_ids
        self._head = bytearray()
        self._header: tuple[int, int, int, int] | None = None
        self._flags = 0
        self._table = IdTable(0)
        self._count = 0             # the header's slot count
        self._page = 0              # the next page of the id table
        self._carry = bytearray()   # the part of that page fed so far
        self._left = 0              # id table bytes still to come
        self._tail = bytearray()    # the patch and copy tables

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._header is None:
            take = HEADER.size - len(self._head)
            self._head += view[:take]
            view = view[take:]
            if len(self._head) < HEADER.size:
                return
            self._start()
        if self._left:
            take = min(self._left, len(view))
            self._feed_ids(view[:take])
            self._left -= take
            view = view[take:]
        if view:
            if not self._flags:         # no table follows the ids: nothing may
                raise CorruptObject(self._label, "index length does not match its entry count")
            self._tail += view

    def _start(self) -> None:
        capacity, chunk_size, flags, count = self._header = HEADER.unpack(self._head)
        self._flags = flags
        if (chunk_size == 0 or count != chunk_count(capacity, chunk_size)
                or flags & ~(FLAG_PATCHES | FLAG_COPIES | FLAG_COPY_GAPS)
                or (flags & FLAG_COPY_GAPS and not flags & FLAG_COPIES)):
            raise CorruptObject(self._label, "index header is inconsistent")
        self._table = IdTable(count)                # pages held only with keep_ids
        self._count = count
        self._left = count * ID_SIZE

    def _feed_ids(self, view: memoryview) -> None:
        while view:
            size = min(PAGE_SLOTS, self._count - self._page * PAGE_SLOTS) * ID_SIZE
            want = size - len(self._carry)
            if not self._carry and len(view) >= size:
                self._take_page(view[:size])        # a whole page in one piece: no copy here
            else:
                self._carry += view[:want]
                if len(self._carry) == size:
                    self._take_page(self._carry)
                    self._carry = bytearray()
            view = view[want:]

    def _take_page(self, page: bytes | bytearray | memoryview) -> None:
        if self._on_ids is not None:
            self._on_ids(page)
        if self._keep:
            self._table.put_page(self._page, page)
        self._page += 1

    def finish(self) -> "FixedIndex":
        label = self._label
        if self._header is None:
            raise CorruptObject(label, "index shorter than its header")
        if self._left:
            raise CorruptObject(label, "index length does not match its entry count")
        capacity, chunk_size, flags, _count = self._header
        index = FixedIndex(capacity, chunk_size, self._table)
        tail, pos = bytes(self._tail), 0
        self._tail = bytearray()
        if flags & FLAG_PATCHES:
            index.patches, pos = _decode_patches(tail, pos, index, label)
        if flags & FLAG_COPIES:
            index.copies, pos = _decode_copies(tail, pos, index, label, bool(flags & FLAG_COPY_GAPS))
        if pos != len(tail):
            raise CorruptObject(label, "index has trailing bytes")
        return index


def _decode_copies(data: bytes, pos: int, index: FixedIndex, label: str,
                   gapped: bool) -> tuple[Copies, int]:
    def bad(reason: str) -> CorruptObject:
        return CorruptObject(label, f"index copy table: {reason}")

    try:
        (count,) = COUNT.unpack_from(data, pos)
        pos += COUNT.size
        table = data[pos:pos + count * COPY_RANGE.size]
        if len(table) != count * COPY_RANGE.size:
            raise bad("truncated")
        entries = list(COPY_RANGE.iter_unpack(table))
        pos += len(table)
        if not gapped and any(reserved for _off, _length, reserved in entries):
            raise bad("a reserved field is set")
        length = None
        if gapped:
            (length,) = COUNT.unpack_from(data, pos)
            pos += COUNT.size
        (nids,) = COUNT.unpack_from(data, pos)
        pos += COUNT.size
        if len(data) < pos + nids * ID_SIZE:
            raise bad("truncated")
        ids = [bytes(data[p:p + ID_SIZE]) for p in range(pos, pos + nids * ID_SIZE, ID_SIZE)]  # HOLE: zeros
        pos += nids * ID_SIZE
    except struct.error:
        raise bad("truncated") from None
    copies = Copies([(off, length) for off, length, _ in entries], ids, index.chunk_size,
                    [gap for _off, _length, gap in entries] if gapped else None, length)
    try:
        copies.validate(index.capacity)          # the rules a writer keeps are the reader's
    except ValueError as e:
        raise bad(str(e)) from None
    return copies, pos


def _decode_patches(data: bytes, pos: int, index: FixedIndex, label: str) -> tuple[dict[int, tuple[Piece, ...]], int]:
    def bad(reason: str) -> CorruptObject:
        return CorruptObject(label, f"index patch table: {reason}")

    try:
        (patched,) = COUNT.unpack_from(data, pos)
        pos += COUNT.size
        if patched == 0 or patched > index.count:
            raise bad("slot count out of range")
        patches: dict[int, tuple[Piece, ...]] = {}
        last = -1
        for _ in range(patched):
            n, npieces, reserved = SLOT_HEADER.unpack_from(data, pos)
            pos += SLOT_HEADER.size
            if n <= last or n >= index.count or npieces == 0 or reserved:
                raise bad(f"slot entry {n} is out of order or malformed")
            last = n
            _, length = index.chunk_range(n)
            if len(data) < pos + npieces * PIECE.size:
                raise bad("truncated")
            pieces = []
            for off, plen, cid in PIECE.iter_unpack(data[pos:pos + npieces * PIECE.size]):
                if plen == 0 or off + plen > length:
                    raise bad(f"piece of slot {n} lies outside it")
                pieces.append((off, plen, None if cid == HOLE else cid))
            pos += npieces * PIECE.size
            patches[n] = tuple(pieces)
    except struct.error:
        raise bad("truncated") from None
    return patches, pos


def chunk_count(capacity: int, chunk_size: int) -> int:
    return -(-capacity // chunk_size)


def chunks_touched(extents: Iterable[tuple[int, int]], chunk_size: int, capacity: int) -> Iterator[int]:
    """Numbers of the chunks that the (offset, length) ``extents`` touch, ascending, each once."""
    last = -1
    limit = chunk_count(capacity, chunk_size)
    for offset, length in sorted(extents):
        if length <= 0:
            continue
        first = max(offset // chunk_size, last + 1)
        end = min((offset + length - 1) // chunk_size, limit - 1)
        yield from range(first, end + 1)
        last = max(last, end)


def slot_ranges(extents: Iterable[tuple[int, int]],
                chunk_size: int) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """(slot number, [(start, end) inside the slot, ascending]) for every slot the
    (offset, length) ``extents`` touch, slots ascending. The extents must be sorted, apart
    and inside the disk."""
    current, ranges = -1, []  # type: ignore[var-annotated]
    for offset, length in extents:
        pos, end = offset, offset + length
        while pos < end:
            n = pos // chunk_size
            base = n * chunk_size
            stop = min(end, base + chunk_size)
            if n != current:
                if ranges:
                    yield current, ranges
                current, ranges = n, []
            ranges.append((pos - base, stop - base))
            pos = stop
    if ranges:
        yield current, ranges
