"""What the mutation run of the views' tree found untested (docs/security.md, "Mutation
testing of the format"): extents, restore reads, chunk ranges, the slot split of change
lists, and the copy stream that restore and mount reads take guest metadata from."""
from __future__ import annotations

import random

import pytest

from fixtures_mount import PASSPHRASE, backup_image, make_repo
from format.errors import CorruptObject
from format.fixedindex import HOLE, Copies, slot_ranges
from format.repository import Repository
from repofs.view.tree import RepositoryView

CS = 64 << 10
STORED = (0, 3, 4, 7, 19, 20)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("views")
    rng = random.Random(12)
    data = bytearray(20 * CS + 333)
    for n in STORED:
        data[n * CS:(n + 1) * CS] = rng.randbytes(CS)[:len(data[n * CS:(n + 1) * CS])]
    (tmp / "d.img").write_bytes(bytes(data))
    make_repo(tmp / "repo", chunk_size=CS)
    backup_image(tmp / "repo", tmp / "d.img", vm="v", label="d")
    view = RepositoryView(Repository.open(tmp / "repo", PASSPHRASE), 4 << 20)
    return view.generation("v").disk("d"), bytes(data)


def test_extents_are_the_stored_runs(disk):
    d, data = disk
    assert d.extents() == [(0, CS), (3 * CS, 2 * CS), (7 * CS, CS), (19 * CS, CS + 333)]


@pytest.mark.parametrize("workers,lookahead", [(1, 1), (2, 8), (3, 2)])
def test_iter_chunks_gives_every_stored_slot_in_order(disk, workers, lookahead):
    d, data = disk
    got = list(d.iter_chunks(workers=workers, lookahead=lookahead))
    assert [off for off, _ in got] == [n * CS for n in STORED]
    for off, chunk in got:
        assert chunk == data[off:off + len(chunk)] and len(chunk) == min(CS, len(data) - off)


def test_chunks_for(disk):
    d, _ = disk
    assert d.chunks_for(0, 0) == range(0)
    assert d.chunks_for(CS + 100, 0) == range(0)                    # empty, inside a slot
    assert d.chunks_for(0, 1) == range(0, 1)
    assert d.chunks_for(CS - 1, 2) == range(0, 2)
    assert d.chunks_for(CS, CS) == range(1, 2)
    assert d.chunks_for(20 * CS, 10_000) == range(20, 21)          # clipped at the end
    assert d.chunks_for(21 * CS, 5) == range(0)


def test_slot_ranges_split_extents_at_slot_boundaries():
    assert list(slot_ranges([], 100)) == []
    assert list(slot_ranges([(10, 20)], 100)) == [(0, [(10, 30)])]
    assert list(slot_ranges([(90, 20), (150, 10), (300, 100)], 100)) == [
        (0, [(90, 100)]), (1, [(0, 10), (50, 60)]), (3, [(0, 100)])]
    assert list(slot_ranges([(0, 250)], 100)) == [(0, [(0, 100)]), (1, [(0, 100)]), (2, [(0, 50)])]


# --- the copy stream (format/fixedindex.py Copies) ---------------------------------------------

SCS = 4096


def _copies() -> tuple[Copies, bytes, dict[bytes, bytes]]:
    disk = bytes(range(256)) * 64                            # 16 KiB
    ranges = [(10, 5000), (8000, 3000)]                      # a stream of 8000 bytes: 2 chunks
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    ids = [bytes([1]) * 32, bytes([2]) * 32]
    store = {ids[0]: stream[:SCS], ids[1]: stream[SCS:]}
    return Copies(ranges, ids, SCS), disk, store


def test_copy_stream_reads_across_its_chunks_and_ranges():
    c, disk, store = _copies()
    assert c.stream_size == 8000 and c.chunk_length(0) == SCS and c.chunk_length(1) == 8000 - SCS
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
    assert info.value.reason == f"holds {8000 - SCS + 1} bytes, not {8000 - SCS}"
    assert c.chunk(0, store.get) == store[c.ids[0]]


def test_a_hole_in_the_copy_stream_reads_as_zeros():
    c, _disk, store = _copies()
    c.ids[1] = HOLE
    assert c.chunk(1, lambda cid: pytest.fail("a hole is not fetched")) == bytes(8000 - SCS)


@pytest.mark.parametrize("piece", [(0, 0, None), (10, -1, None), (-1, 5, None), (SCS - 4, 5, None)])
def test_a_piece_outside_its_slot_or_empty_is_refused(piece):
    from format.fixedindex import FixedIndex
    index = FixedIndex.empty(2 * SCS, SCS)
    with pytest.raises(ValueError) as info:
        index.set_pieces(1, [(0, 4, None), piece])
    assert str(info.value) == f"piece ({piece[0]}, {piece[1]}) outside slot 1 of {SCS} bytes"
    assert index.pieces(1) == ()


def test_setting_no_pieces_drops_the_earlier_ones():
    from format.fixedindex import FixedIndex
    index = FixedIndex.empty(2 * SCS, SCS)
    index.set_pieces(0, [(0, 4, None)])
    index.set_pieces(1, [(SCS - 4, 4, bytes([3]) * 32)])
    index.set_pieces(1, [])
    assert index.pieces(1) == () and index.pieces(0) == ((0, 4, None),) and 1 not in index.patches
