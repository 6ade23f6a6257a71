"""A copy table without some of its stream chunks (``Copies.without``, ``chunks_meeting``;
docs/format.md section 6, "what writers do" of the copy table): an incremental whose changes
fall inside the copies leaves out the stream chunks holding them and keeps the others under
their ids. That is only right if the table left is one the format allows and its stream,
cut at the chunk size as a reader cuts it, is exactly the kept chunks' bytes — checked here
on seeded random tables over a random disk, with each chunk named by the hash of its bytes.
"""
from __future__ import annotations

import hashlib
import random

import pytest

from format.fixedindex import HOLE, Copies, FixedIndex, chunk_count

CS = 4 << 10
CAPACITY = 1 << 20


def named(data: bytes) -> bytes:
    return HOLE if not any(data) else hashlib.blake2b(data, digest_size=32).digest()


def table(rng: random.Random, disk: bytes) -> Copies:
    """Random ranges, apart, of 1 byte to 5 chunks; ids named after the stream's chunks."""
    ranges, pos = [], rng.randrange(0, 2 * CS)
    while pos < CAPACITY - 1 and len(ranges) < rng.randrange(1, 24):
        length = min(rng.randrange(1, 5 * CS), CAPACITY - pos)
        ranges.append((pos, length))
        pos += length + rng.randrange(1, 3 * CS)
    return Copies(ranges, stream_ids(ranges, disk), CS)


def stream_ids(ranges: list[tuple[int, int]], disk: bytes) -> list[bytes]:
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    return [named(stream[k:k + CS]) for k in range(0, len(stream), CS)]


def covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {b for o, n in ranges for b in range(o, o + n)}


def random_disk(rng: random.Random) -> bytes:
    disk = bytearray(rng.randbytes(CAPACITY))
    for _ in range(8):                       # some zero runs: hole ids among the chunks
        at = rng.randrange(0, CAPACITY - 3 * CS)
        disk[at:at + 3 * CS] = bytes(3 * CS)
    return bytes(disk)


@pytest.mark.parametrize("seed", range(40))
def test_a_table_without_chunks_is_valid_and_its_stream_is_the_kept_chunks(seed: int):
    rng = random.Random(seed)
    disk = random_disk(rng)
    old = table(rng, disk)
    old.validate(CAPACITY)
    count = len(old.ids)
    dropped = set(rng.sample(range(count), rng.randrange(0, count + 1)))
    new = old.without(dropped)
    if len(dropped) == count:
        assert new is None
        return
    assert new is not None
    new.validate(CAPACITY)                   # ascending, apart, inside, count matches
    assert new.ids == [cid for k, cid in enumerate(old.ids) if k not in dropped]
    assert stream_ids(new.ranges, disk) == new.ids    # the same bytes under the same ids
    gone = {old.disk_offset(p) for k in dropped
            for p in range(k * CS, k * CS + old.chunk_length(k))}
    assert covered(new.ranges) == covered(old.ranges) - gone
    # it encodes and decodes as any copy table
    index = FixedIndex.empty(CAPACITY, CS)
    index.copies = new
    again = FixedIndex.decode(index.encode(), "disk").copies
    assert again is not None and again.ranges == new.ranges and again.ids == new.ids
    # a read through the table left gives the disk's bytes
    stream = b"".join(disk[o:o + n] for o, n in new.ranges)
    for o, n in new.ranges:
        inner = rng.randrange(0, n)
        size = rng.randrange(1, n - inner + 1)
        assert new.read(o + inner, size, lambda k: stream[k * CS:(k + 1) * CS]) == \
            disk[o + inner:o + inner + size]


@pytest.mark.parametrize("seed", range(40))
def test_the_chunks_a_change_meets_are_those_holding_its_bytes(seed: int):
    rng = random.Random(1000 + seed)
    old = table(rng, random_disk(rng))
    spans = []
    for _ in range(rng.randrange(0, 6)):
        at = rng.randrange(0, CAPACITY)
        spans.append((at, rng.randrange(1, 6 * CS)))
    want = set()
    for i, (o, n) in enumerate(old.ranges):
        base = sum(length for _o, length in old.ranges[:i])
        for b in range(o, o + n):
            if any(so <= b < so + sn for so, sn in spans):
                want.add((base + b - o) // CS)
    assert old.chunks_meeting(spans) == want


def test_dropping_a_middle_chunk_splits_its_range_and_keeps_the_rest():
    disk = random.Random(7).randbytes(CAPACITY)
    old = Copies([(0, 3 * CS), (5 * CS, CS + 100)], [], CS)
    old = Copies(old.ranges, stream_ids(old.ranges, disk), CS)
    assert chunk_count(old.stream_size, CS) == 5
    new = old.without({1, 3})
    assert new is not None
    assert new.ranges == [(0, CS), (2 * CS, CS), (6 * CS, 100)]
    assert new.ids == [old.ids[0], old.ids[2], old.ids[4]]
    assert old.without({0, 1, 2, 3, 4}) is None
