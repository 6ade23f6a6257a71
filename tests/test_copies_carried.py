"""A copy table with changed bytes cut out (``Copies.cut``; docs/format.md section 6, the
copy table's gaps and "what writers do"): an incremental whose changes fall inside the copies
cuts exactly those bytes out of the ranges and keeps every other byte where it lies in the
stream, every chunk under its id. That is only right if the table left is one the format
allows, reads the disk's bytes wherever it still claims to, and encodes and decodes to itself
— checked here on seeded random tables over a random disk, cut again and again, each chunk
named by the hash of its bytes.
"""
from __future__ import annotations

import hashlib
import random

import pytest

from format.errors import CorruptObject
from format.fixedindex import COPY_RANGE, FLAG_COPY_GAPS, HEADER, HOLE, Copies, FixedIndex

CS = 4 << 10
CAPACITY = 1 << 20


def named(data: bytes) -> bytes:
    return HOLE if not any(data) else hashlib.blake2b(data, digest_size=32).digest()


def table(rng: random.Random, disk: bytes) -> tuple[Copies, bytes]:
    """Random ranges, apart, of 1 byte to 5 chunks; ids named after the stream's chunks:
    (table, stream)."""
    ranges, pos = [], rng.randrange(0, 2 * CS)
    while pos < CAPACITY - 1 and len(ranges) < rng.randrange(1, 24):
        length = min(rng.randrange(1, 5 * CS), CAPACITY - pos)
        ranges.append((pos, length))
        pos += length + rng.randrange(1, 3 * CS)
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    return Copies(ranges, [named(stream[k:k + CS]) for k in range(0, len(stream), CS)], CS), stream


def covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {b for o, n in ranges for b in range(o, o + n)}


def random_disk(rng: random.Random) -> bytes:
    disk = bytearray(rng.randbytes(CAPACITY))
    for _ in range(8):                       # some zero runs: hole ids among the chunks
        at = rng.randrange(0, CAPACITY - 3 * CS)
        disk[at:at + 3 * CS] = bytes(3 * CS)
    return bytes(disk)


def roundtrip(copies: Copies) -> Copies:
    index = FixedIndex.empty(CAPACITY, CS)
    index.copies = copies
    again = FixedIndex.decode(index.encode(), "disk").copies
    assert again is not None
    return again


@pytest.mark.parametrize("seed", range(40))
def test_cuts_leave_a_valid_table_that_reads_the_disk_under_the_same_ids(seed: int):
    rng = random.Random(seed)
    disk = random_disk(rng)
    copies, stream = table(rng, disk)
    first = copies
    for _ in range(4):                       # cuts on cuts, as incrementals make them
        spans = [(rng.randrange(0, CAPACITY), rng.randrange(1, 6 * CS)) for _ in range(rng.randrange(0, 5))]
        gone = covered(spans)
        new = copies.cut(spans)
        if new is copies:                    # nothing met: the same table
            assert not covered(copies.ranges) & gone
            continue
        if new is None:                      # nothing left
            assert covered(copies.ranges) <= gone
            return
        new.validate(CAPACITY)               # ascending, apart, inside, counts, dead chunks holes
        assert covered(new.ranges) == covered(copies.ranges) - gone
        assert new.stream_size == first.stream_size and len(new.ids) == len(first.ids)
        assert new.copied_size == len(covered(new.ranges))
        for k, cid in enumerate(new.ids):    # the same chunks, or holes where nothing is left
            assert cid in (first.ids[k], HOLE)
        assert roundtrip(new) == new
        for o, n in new.ranges:              # read through the first stream: the disk's bytes
            inner = rng.randrange(0, n)
            size = rng.randrange(1, n - inner + 1)
            assert new.read(o + inner, size, lambda k: stream[k * CS:(k + 1) * CS]) == \
                disk[o + inner:o + inner + size]
        for o, n in spans:                   # and nothing inside a cut
            assert all(new.stream_pos(b, 1) is None for b in range(o, o + n, 512))
        copies = new


def test_a_cut_in_a_range_splits_it_and_a_chunk_left_empty_becomes_a_hole():
    disk = random.Random(7).randbytes(CAPACITY)
    ranges = [(0, 3 * CS), (5 * CS, CS + 100)]
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    old = Copies(ranges, [named(stream[k:k + CS]) for k in range(0, len(stream), CS)], CS)
    new = old.cut([(CS, CS), (5 * CS, CS)])
    assert new is not None
    assert new.ranges == [(0, CS), (2 * CS, CS), (6 * CS, 100)] and new.gaps == [0, CS, CS]
    assert new.ids == [old.ids[0], HOLE, old.ids[2], HOLE, old.ids[4]]
    assert new.stream_size == old.stream_size and new.copied_size == 2 * CS + 100
    assert new.disk_offset(CS) == 2 * CS          # a gap's byte: the next copied one's offset
    assert old.cut([(7 * CS, CS)]) is old
    assert old.cut([(0, 8 * CS)]) is None


def encoded(copies: Copies) -> bytearray:
    index = FixedIndex.empty(CAPACITY, CS)
    index.copies = copies
    return bytearray(index.encode())


def test_the_format_rules_of_gaps_are_the_readers():
    disk = random.Random(8).randbytes(CAPACITY)
    ranges = [(0, 3 * CS), (5 * CS, 2 * CS)]
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    old = Copies(ranges, [named(stream[k:k + CS]) for k in range(0, len(stream), CS)], CS)
    cut = old.cut([(CS, CS)])
    assert cut is not None
    data = encoded(cut)
    assert FixedIndex.decode(bytes(data), "d").copies == cut
    capacity, cs, flags, count = HEADER.unpack_from(data)
    table = HEADER.size + 32 * count + 8                  # the first copy range
    # a gap without flag bit 2 is a reserved field set: damaged
    plain = bytearray(data)
    HEADER.pack_into(plain, 0, capacity, cs, flags & ~FLAG_COPY_GAPS, count)
    with pytest.raises(CorruptObject):
        FixedIndex.decode(bytes(plain), "d")
    # flag bit 2 without a copy table: damaged
    bare = bytearray(encoded(old))[:HEADER.size + 32 * count]
    HEADER.pack_into(bare, 0, capacity, cs, FLAG_COPY_GAPS, count)
    with pytest.raises(CorruptObject, match="header"):
        FixedIndex.decode(bytes(bare), "d")
    # a gap that moves a range past the stream's length; a chunk holding no range byte with an
    # id; a stream length shorter than the ranges: damaged
    off, length, _gap = COPY_RANGE.unpack_from(data, table + COPY_RANGE.size)
    for mutate in (lambda b: COPY_RANGE.pack_into(b, table + COPY_RANGE.size, off, length, 9 * CS),
                   lambda b: b.__setitem__(slice(len(b) - 4 * 32, len(b) - 3 * 32), b"\x01" * 32),
                   lambda b: b.__setitem__(slice(table + 3 * COPY_RANGE.size, table + 3 * COPY_RANGE.size + 8),
                                           (CS).to_bytes(8, "little"))):
        bad = bytearray(data)
        mutate(bad)
        with pytest.raises(CorruptObject, match="copy table"):
            FixedIndex.decode(bytes(bad), "d")


@pytest.mark.parametrize("seed", range(20))
def test_segments_cut_a_read_where_copied_ranges_start_and_end(seed: int):
    """``segments`` covers the read in order, each part copied (at the stream position a
    range gives it) or not, and ``meets`` says whether any part is; ``cut_spans`` holds every
    byte a cut took out."""
    rng = random.Random(2000 + seed)
    disk = random_disk(rng)
    copies, stream = table(rng, disk)
    cut = copies.cut([(rng.randrange(0, CAPACITY), rng.randrange(1, 6 * CS)) for _ in range(3)])
    for c in (copies, cut):
        if c is None:
            continue
        inside = covered(c.ranges)
        for _ in range(50):
            off = rng.randrange(0, CAPACITY - 1)
            n = rng.randrange(1, min(8 * CS, CAPACITY - off) + 1)
            segments = c.segments(off, n)
            assert segments[0][0] == off and sum(s[1] for s in segments) == n
            assert all(a[0] + a[1] == b[0] for a, b in zip(segments, segments[1:], strict=False))
            for s_off, s_n, pos in segments:
                assert all((b in inside) == (pos is not None) for b in range(s_off, s_off + s_n, 97))
                if pos is not None:
                    assert c.read_stream(pos, s_n, lambda k: stream[k * CS:(k + 1) * CS]) == disk[s_off:s_off + s_n]
            assert c.meets(off, n) == any(pos is not None for *_x, pos in segments)
    # bytes cut out of the middle of a range lie in the spans a reader loads ahead for them
    (start, length) = max(copies.ranges, key=lambda r: r[1])
    if length > 2:
        middle = copies.cut([(start + length // 3, max(1, length // 3))])
        assert middle is not None and middle is not copies
        gone = covered(copies.ranges) - covered(middle.ranges)
        assert gone and gone <= covered(middle.cut_spans())

