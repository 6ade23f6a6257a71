"""What the mutation run of ``format/fixedindex.py`` found untested (docs/security.md,
"Mutation testing of the format"): the copy stream's error names the stream chunk, reads that
span stream chunks, and the arithmetic at the edges of the last, short chunk."""
from __future__ import annotations

import pytest

from format.errors import CorruptObject
from format.fixedindex import HOLE, Copies

CS = 4096


def _copies() -> tuple[Copies, bytes, dict[bytes, bytes]]:
    disk = bytes(range(256)) * 64                            # 16 KiB
    ranges = [(10, 5000), (8000, 3000)]                      # a stream of 8000 bytes: 2 chunks
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    ids = [bytes([1]) * 32, bytes([2]) * 32]
    store = {ids[0]: stream[:CS], ids[1]: stream[CS:]}
    return Copies(ranges, ids, CS), disk, store


def test_copy_stream_reads_across_its_chunks_and_ranges():
    c, disk, store = _copies()
    assert c.stream_size == 8000 and c.chunk_length(0) == CS and c.chunk_length(1) == 8000 - CS
    chunk = lambda k: c.chunk(k, store.get)                  # noqa: E731
    assert c.read(10, 5000, chunk) == disk[10:5010]          # both stream chunks
    assert c.read(100, 50, chunk) == disk[100:150]           # one
    assert c.read(4000, 200, chunk) == disk[4000:4200]       # across the chunk boundary
    assert c.read(8000, 3000, chunk) == disk[8000:11000]
    assert c.read(5000, 20, chunk) is None                   # leaves the range
    assert c.read(9, 2, chunk) is None
    assert c.read(100, 50, lambda k: None) is None           # not at hand
    assert [c.disk_offset(p) for p in (0, 4999, 5000, 7999)] == [10, 5009, 8000, 10999]


def test_a_copy_stream_chunk_of_the_wrong_length_names_the_chunk():
    c, _disk, store = _copies()
    store[c.ids[1]] = store[c.ids[1]] + b"x"
    with pytest.raises(CorruptObject) as info:
        c.chunk(1, store.get)
    assert info.value.name == "copy stream chunk 1"
    assert info.value.reason == f"holds {8000 - CS + 1} bytes, not {8000 - CS}"
    assert c.chunk(0, store.get) == store[c.ids[0]]


def test_a_hole_in_the_copy_stream_reads_as_zeros():
    c, _disk, store = _copies()
    c.ids[1] = HOLE
    assert c.chunk(1, lambda cid: pytest.fail("a hole is not fetched")) == bytes(8000 - CS)
