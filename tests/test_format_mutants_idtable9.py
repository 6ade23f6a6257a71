"""The id table of a fixed index (``format/idtable.py``) as a reader of an index and a user of
the table rely on it, in-process for the mutation run (docs/security.md, "Mutation testing of
the format"): decoding the table's bytes (docs/format.md section 6: 32 bytes a slot, a hole
is 32 zero bytes) over several pages and a short last page gives every slot back, the table
encodes to those same bytes, letting go of pages of holes keeps every id, and ``in`` answers
for whole slots only.
"""
from __future__ import annotations

import random

import pytest

from format.fixedindex import FixedIndex
from format.idtable import HOLE, ID_SIZE, PAGE_SLOTS, IdTable


def _ids(seed: int, count: int, holes: set[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [HOLE if n in holes else rng.randbytes(ID_SIZE) for n in range(count)]


def test_a_table_decoded_from_its_bytes_has_every_slot_over_pages_and_a_short_last_page():
    count = 3 * PAGE_SLOTS + 5                      # three whole pages and five slots
    holes = set(range(PAGE_SLOTS, 2 * PAGE_SLOTS)) | {0, 2 * PAGE_SLOTS + 3, count - 1}
    ids = _ids(1, count, holes)                     # page 1: all holes
    data = b"".join(ids)
    table = IdTable.from_bytes(data)
    assert table.count == count and len(table) == len(data)
    assert [table.get(n) for n in range(count)] == ids
    assert bytes(table) == data and b"".join(table.pages()) == data
    assert [k for k, _page in table.held_pages()] == [0, 2, 3]       # the page of holes is not held
    assert list(table.stored()) == [(n, cid) for n, cid in enumerate(ids) if cid != HOLE]
    index = FixedIndex(count * 4096, 4096, data)                     # an index given the encoding
    assert index.ids == table and index.key(PAGE_SLOTS + 1) is None
    assert index.key(3 * PAGE_SLOTS + 2) == ids[3 * PAGE_SLOTS + 2]


@pytest.mark.parametrize("source", [bytes, bytearray, memoryview])
def test_a_table_decodes_from_any_bytes_like_object(source):
    ids = _ids(2, PAGE_SLOTS + 1, {3})
    table = IdTable.from_bytes(source(b"".join(ids)))
    assert [table.get(n) for n in range(len(ids))] == ids


def test_a_table_of_a_length_that_is_not_whole_slots_is_refused():
    with pytest.raises(ValueError):
        IdTable.from_bytes(bytes(ID_SIZE * 3 + 1))
    assert IdTable.from_bytes(b"").count == 0


def test_compact_lets_go_of_pages_of_holes_and_keeps_every_id():
    count = 4 * PAGE_SLOTS
    ids = _ids(3, count, set())
    table = IdTable.from_bytes(b"".join(ids))
    for n in range(PAGE_SLOTS, 2 * PAGE_SLOTS):     # page 1 becomes all holes
        table.set(n, HOLE)
    table.compact()
    assert [k for k, _page in table.held_pages()] == [0, 2, 3]
    expected = ids[:PAGE_SLOTS] + [HOLE] * PAGE_SLOTS + ids[2 * PAGE_SLOTS:]
    assert [table.get(n) for n in range(count)] == expected
    assert bytes(table) == b"".join(expected)


def test_in_answers_for_whole_slots_only():
    a, b = bytes([1]) * ID_SIZE, bytes([2]) * ID_SIZE
    table = IdTable.from_bytes(a + HOLE + a)
    assert a in table and b not in table
    assert HOLE in table                            # slot 1 is a hole
    assert HOLE not in IdTable.from_bytes(a + b)    # every slot written: no hole
    assert HOLE not in IdTable.from_bytes(a + b + a)
    assert a[:31] not in table and a + b"\x01" not in table
    assert (a + b)[16:48] not in IdTable.from_bytes(a + b)          # ids are slot-aligned
    assert None not in table and 7 not in table and "x" * ID_SIZE not in table
    assert bytearray(a) in table


def test_tables_are_equal_when_their_slots_are_whatever_pages_they_hold():
    a, b = bytes([1]) * ID_SIZE, bytes([2]) * ID_SIZE
    count = 2 * PAGE_SLOTS + 3
    table = IdTable.from_bytes(a + HOLE + a)
    assert table == a + HOLE + a and table == bytearray(a + HOLE + a) and table == memoryview(a + HOLE + a)
    assert table != a + a + HOLE and table != a + HOLE and table != a + HOLE + a + HOLE
    held_holes = IdTable(count)
    held_holes.set(PAGE_SLOTS + 1, a)
    held_holes.set(PAGE_SLOTS + 1, HOLE)             # page 1 held, all holes
    assert held_holes == IdTable(count) and IdTable(count) == held_holes
    one = IdTable(count)
    one.set(PAGE_SLOTS + 1, a)
    assert one != IdTable(count) and IdTable(count) != one     # a page held on one side only
    other = IdTable(count)
    other.set(PAGE_SLOTS + 1, b)
    assert one != other                              # the same page held on both, one id differs
    assert IdTable(2) != IdTable(3) and IdTable(count) != IdTable(count + 1)
    same = IdTable(count)
    same.set(PAGE_SLOTS + 1, a)
    assert one == same


def test_occupied_lists_every_slot_with_a_base_or_pieces_from_the_first():
    index = FixedIndex.empty(5 * 4096, 4096)
    index.set(1, bytes([1]) * ID_SIZE)                       # slot 0 is a hole
    index.set_pieces(3, [(0, 10, bytes([2]) * ID_SIZE)])
    index.set(3, bytes([3]) * ID_SIZE)                       # base and pieces: listed once
    assert list(index.occupied()) == [1, 3]


def test_ids_added_a_page_at_a_time_are_all_members_even_in_one_crowded_bucket():
    """Prune marks an index's id table a page at a time (``add_ids``); ids that share their
    first two bytes share a bucket, which is re-sorted as it grows."""
    from format.idset import IdSet
    rng = random.Random(8)
    crowded = [b"\xab\xcd" + rng.randbytes(ID_SIZE - 2) for _ in range(200)]
    others = [rng.randbytes(ID_SIZE) for _ in range(50)]
    marks = IdSet()
    marks.add_ids(b"".join(crowded[:100] + [HOLE] + others), skip=HOLE)
    marks.add_ids(b"".join(crowded[100:]), skip=HOLE)
    marks.freeze()
    assert all(cid in marks for cid in crowded + others)
    assert HOLE not in marks and len(marks) == 250
    assert b"\xab\xcd" + bytes(ID_SIZE - 2) not in marks
