"""An index fed to the streaming decoder (format/fixedindex.py, ``IndexDecoder``) in pieces of
any size — one byte, a page and a bit, everything at once — decodes to exactly the index that
was encoded, over many id pages (``PAGE_SLOTS`` slots each) and a short last page, with its
patch table after the ids; ``on_ids`` sees every page of ids once, in order, and
``keep_ids=False`` keeps none of them. This is how a mount, a restore and prune read a large
index without holding its plaintext whole.
"""
from __future__ import annotations

import random

import pytest

from format.fixedindex import COUNT, HEADER, HOLE, PIECE, SLOT_HEADER, FixedIndex, IndexDecoder
from format.idtable import PAGE_SLOTS, IdTable

CS = 4096
SLOTS = 3 * PAGE_SLOTS + 17          # three whole pages and a short one


def _ids(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # holes now and then, and a whole page of them (pages of holes are not held)
    return [HOLE if (i % 7 == 3 or PAGE_SLOTS <= i < 2 * PAGE_SLOTS) else rng.randbytes(32)
            for i in range(SLOTS)]


def _plain(ids: list[bytes], patched: bool) -> bytes:
    capacity = SLOTS * CS - 100      # a short last slot
    tail = b""
    if patched:
        tail = (COUNT.pack(1) + SLOT_HEADER.pack(SLOTS - 1, 2, 0)
                + PIECE.pack(0, 10, b"\x11" * 32) + PIECE.pack(50, 10, HOLE))
    return HEADER.pack(capacity, CS, 1 if patched else 0, SLOTS) + b"".join(ids) + tail


def _pieces(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 7, 31, 32, 33, 500, 8192, 8193, 20000])
        out.append(data[pos:pos + n])
        pos += n
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("patched", [False, True])
def test_fed_in_pieces_it_decodes_to_the_same_index(seed: int, patched: bool) -> None:
    ids = _ids(seed)
    plain = _plain(ids, patched)
    whole = FixedIndex.decode(plain, "whole")
    seen: list[bytes] = []
    decoder = IndexDecoder("pieces", on_ids=lambda page: seen.append(bytes(page)))
    for piece in _pieces(plain, seed):
        decoder.feed(piece)
    index = decoder.finish()
    assert b"".join(seen) == b"".join(ids)                      # every page once, in order
    assert [len(p) for p in seen] == [PAGE_SLOTS * 32] * 3 + [17 * 32]
    for n in range(SLOTS):
        expected = None if ids[n] == HOLE else ids[n]
        assert index.get(n) == expected == whole.get(n), n
    assert index.count == SLOTS and index.capacity == SLOTS * CS - 100
    assert index.encode() == plain == whole.encode()
    if patched:
        assert index.pieces(SLOTS - 1) == ((0, 10, b"\x11" * 32), (50, 10, None))


def test_a_whole_page_in_one_piece_and_the_rest_byte_by_byte() -> None:
    ids = _ids(4)
    plain = _plain(ids, True)
    head = HEADER.size
    decoder = IndexDecoder("x")
    decoder.feed(plain[:head + PAGE_SLOTS * 32])                 # the header and one page
    for k in range(head + PAGE_SLOTS * 32, len(plain)):
        decoder.feed(plain[k:k + 1])
    assert decoder.finish().encode() == plain


def test_ids_seen_but_not_kept() -> None:
    ids = _ids(5)
    plain = _plain(ids, False)
    seen: list[bytes] = []
    decoder = IndexDecoder("x", keep_ids=False, on_ids=lambda page: seen.append(bytes(page)))
    for piece in _pieces(plain, 5):
        decoder.feed(piece)
    index = decoder.finish()
    assert b"".join(seen) == b"".join(ids)
    assert all(index.get(n) is None for n in range(SLOTS))


def test_pages_are_kept_as_they_were_fed_when_the_buffer_is_used_again() -> None:
    """A reader feeds the decoder from one buffer it refills (a file read into the same
    memory): the decoded ids are what was fed, not what the buffer holds later."""
    ids = _ids(6)
    plain = _plain(ids, False)
    buffer = bytearray(PAGE_SLOTS * 32)              # a page a read: pages pass uncopied
    decoder = IndexDecoder("x")
    decoder.feed(plain[:HEADER.size])
    for pos in range(HEADER.size, len(plain), len(buffer)):
        piece = plain[pos:pos + len(buffer)]
        buffer[:len(piece)] = piece
        decoder.feed(memoryview(buffer)[:len(piece)])
        buffer[:] = b"\xee" * len(buffer)           # the next read overwrites it
    assert decoder.finish().encode() == plain


def test_an_id_table_refuses_slots_past_its_end() -> None:
    table = IdTable(3)
    table.set(2, b"\x01" * 32)
    with pytest.raises(IndexError):
        table.set(3, b"\x02" * 32)
    with pytest.raises(IndexError):
        table.get(3)
    assert table.get(2) == b"\x01" * 32
