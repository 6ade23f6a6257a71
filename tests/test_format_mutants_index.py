"""Indexes that are right in every field but one, in-process, so that the mutation run of
``format/`` sees them (docs/security.md, "Mutation testing of the format"; the layout:
docs/format.md and the docstring of format/fixedindex.py).

Every damaged table is refused with ``CorruptObject`` naming the index and the cause — a
patch table whose slot count, slot order, piece count, reserved field or piece bounds are
wrong, that is cut short; a copy table whose ranges overlap, touch, leave the disk or do not
match their chunk count — and the same tables one step inside the rules decode and read back
byte for byte. A piece or copy chunk that names a missing chunk, or one of the wrong length,
is an error at read time, never a short or shifted read.
"""
from __future__ import annotations

import struct

import pytest

from format.errors import CorruptObject, ObjectMissing
from format.fixedindex import (COPY_RANGE, COUNT, HEADER, HOLE, PIECE, SLOT_HEADER, Copies, FixedIndex,
                               chunks_touched, slot_ranges)

CS = 4096
A, B, C = (bytes([k]) * 32 for k in (0xA1, 0xB2, 0xC3))


def _plain(capacity: int, ids: list[bytes], *, flags: int = 0, tail: bytes = b"", count: int | None = None,
           chunk_size: int = CS) -> bytes:
    n = len(ids) if count is None else count
    return HEADER.pack(capacity, chunk_size, flags, n) + b"".join(ids) + tail


def _patches(*slots: tuple[int, list[tuple[int, int, bytes]]], patched: int | None = None,
             pieces: int | None = None, reserved: int = 0) -> bytes:
    out = [COUNT.pack(len(slots) if patched is None else patched)]
    for n, ps in slots:
        out.append(SLOT_HEADER.pack(n, len(ps) if pieces is None else pieces, reserved))
        out += [PIECE.pack(off, length, cid) for off, length, cid in ps]
    return b"".join(out)


def _copies(ranges: list[tuple[int, int]], ids: list[bytes], *, reserved: int = 0, nids: int | None = None) -> bytes:
    return (COUNT.pack(len(ranges)) + b"".join(COPY_RANGE.pack(o, n, reserved) for o, n in ranges)
            + COUNT.pack(len(ids) if nids is None else nids) + b"".join(ids))


def _refused(plain: bytes, reason: str) -> None:
    with pytest.raises(CorruptObject) as info:
        FixedIndex.decode(plain, "indexes/ab/abcd")
    assert (info.value.name, info.value.reason) == ("indexes/ab/abcd", reason)


# --- the header and the id table ---------------------------------------------------------------

def test_header_fields_each_checked():
    ok = _plain(2 * CS, [A, HOLE])
    assert FixedIndex.decode(ok, "x").ids == bytearray(A + HOLE)
    _refused(ok[:HEADER.size - 1], "index shorter than its header")
    _refused(_plain(2 * CS, [A, HOLE], chunk_size=0, count=2), "index header is inconsistent")
    _refused(_plain(2 * CS, [A]), "index header is inconsistent")                  # count != capacity's
    _refused(_plain(2 * CS + 1, [A, B]), "index header is inconsistent")           # a short third slot
    assert FixedIndex.decode(_plain(2 * CS + 1, [A, B, C]), "x").chunk_range(2) == (2 * CS, 1)
    _refused(_plain(CS, [A], flags=4), "index header is inconsistent")
    _refused(_plain(CS, [A], flags=1 << 31), "index header is inconsistent")
    _refused(ok + b"\0", "index length does not match its entry count")
    _refused(ok[:-1], "index length does not match its entry count")
    _refused(_plain(2 * CS, [A], flags=1, count=2), "index length does not match its entry count")
    empty = FixedIndex.decode(_plain(0, []), "x")
    assert (empty.capacity, empty.count, empty.patches, empty.copies) == (0, 0, {}, None)


# --- the patch table ---------------------------------------------------------------------------

def test_a_patch_table_within_the_rules_reads_back():
    plain = _plain(2 * CS + 100, [A, HOLE, B], flags=1,
                   tail=_patches((0, [(0, CS, C)]), (2, [(0, 1, HOLE), (99, 1, A)])))
    index = FixedIndex.decode(plain, "x")
    assert index.pieces(0) == ((0, CS, C),) and index.pieces(2) == ((0, 1, None), (99, 1, A))
    assert index.pieces(1) == () and index.encode() == plain


@pytest.mark.parametrize("table, reason", [
    (_patches(patched=0), "slot count out of range"),
    (_patches((0, [(0, 1, A)]), (1, [(0, 1, A)]), (2, [(0, 1, A)]), (3, [(0, 1, A)])), "slot count out of range"),
    (_patches((3, [(0, 1, A)])), "slot entry 3 is out of order or malformed"),            # no such slot
    (_patches((1, [(0, 1, A)]), (0, [(0, 1, A)])), "slot entry 0 is out of order or malformed"),
    (_patches((1, [(0, 1, A)]), (1, [(5, 1, A)])), "slot entry 1 is out of order or malformed"),
    (_patches((1, []), pieces=0), "slot entry 1 is out of order or malformed"),
    (_patches((1, [(0, 1, A)]), reserved=1), "slot entry 1 is out of order or malformed"),
    (_patches((1, [(0, 0, A)])), "piece of slot 1 lies outside it"),
    (_patches((1, [(CS - 10, 11, A)])), "piece of slot 1 lies outside it"),               # one past a full slot
    (_patches((2, [(50, 51, A)])), "piece of slot 2 lies outside it"),                    # past a short last slot
    (_patches((0, [(0, 0xFFFFFFFF, A)])), "piece of slot 0 lies outside it"),             # "-1" read signed
    (_patches((0, [(0xFFFFFFFF, 2, A)])), "piece of slot 0 lies outside it"),
    (_patches((0, [(0x80000000, 0x80000000, A)])), "piece of slot 0 lies outside it"),    # sums to 2**32
    (_patches((1, [(0, 1, A)]), pieces=2), "truncated"),                                  # a piece short
    (_patches((0, [(0, 1, A)]), (1, [(0, 1, A)]), patched=3), "truncated"),               # a slot short
    (COUNT.pack(1)[:5], "truncated"),
    (_patches((1, [(0, 1, A)]))[:-1], "truncated"),
])
def test_a_damaged_patch_table_is_refused(table, reason):
    _refused(_plain(2 * CS + 100, [A, B, C], flags=1, tail=table), f"index patch table: {reason}")


def test_the_last_piece_may_end_exactly_at_the_end_of_its_slot():
    for n, length in ((0, CS), (2, 100)):
        plain = _plain(2 * CS + 100, [A, B, C], flags=1, tail=_patches((n, [(length - 10, 10, A)])))
        assert FixedIndex.decode(plain, "x").pieces(n) == ((length - 10, 10, A),)


def test_trailing_bytes_after_the_tables_are_refused():
    patches = _patches((0, [(0, 1, A)]))
    _refused(_plain(CS, [A], flags=1, tail=patches + b"\0"), "index has trailing bytes")
    copies = _copies([(0, 10)], [B])
    _refused(_plain(CS, [A], flags=2, tail=copies + b"\0"), "index has trailing bytes")
    both = FixedIndex.decode(_plain(CS, [A], flags=3, tail=patches + copies), "x")
    assert both.pieces(0) == ((0, 1, A),) and both.copies is not None and both.copies.ids == [B]


# --- the copy table ------------------------------------------------------------------------------

@pytest.mark.parametrize("table, reason", [
    (_copies([], []), "copy table without ranges, or its chunk count does not match them"),
    (_copies([(0, 10)], [B, C]), "copy table without ranges, or its chunk count does not match them"),
    (_copies([(0, CS), (2 * CS, 1)], [B]), "copy table without ranges, or its chunk count does not match them"),
    (_copies([(0, 10)], [B], reserved=1), "a reserved field is set"),
    (_copies([(10, 0)], []), "copy range (10, 0) is out of order, empty or outside the disk"),
    (_copies([(100, 10), (50, 10)], [B]), "copy range (50, 10) is out of order, empty or outside the disk"),
    (_copies([(100, 10), (105, 10)], [B]), "copy range (105, 10) is out of order, empty or outside the disk"),
    (_copies([(100, 10), (110, 10)], [B]), "copy range (110, 10) is out of order, empty or outside the disk"),
    (_copies([(3 * CS - 5, 6)], [B]), f"copy range ({3 * CS - 5}, 6) is out of order, empty or outside the disk"),
    (_copies([(0, 10)], [B], nids=2), "truncated"),
    (_copies([(0, 10)], [B])[:-33], "truncated"),
    (_copies([(0, 10), (20, 10)], [B])[:COUNT.size + COPY_RANGE.size + 4], "truncated"),
    (COUNT.pack(1), "truncated"),
    (b"\1\0", "truncated"),
])
def test_a_damaged_copy_table_is_refused(table, reason):
    _refused(_plain(3 * CS, [A, B, C], flags=2, tail=table), f"index copy table: {reason}")


def test_copies_read_the_disk_bytes_from_their_stream():
    disk = bytes(range(256)) * 64                          # 16 KiB: four slots
    ranges = [(100, 3000), (5000, 6000), (16000, 384)]
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    chunks = [stream[k:k + CS] for k in range(0, len(stream), CS)]
    by_id = {bytes([k + 1]) * 32: c for k, c in enumerate(chunks)}
    copies = Copies(ranges, list(by_id), CS)
    copies.validate(len(disk))
    assert copies.stream_size == len(stream) == 9384
    plain = _plain(len(disk), [A] * 4, flags=2, tail=_copies(ranges, list(by_id)))
    decoded = FixedIndex.decode(plain, "x").copies
    assert decoded is not None and decoded.ranges == ranges and decoded.ids == list(by_id)

    def fetch(k: int) -> bytes | None:
        return decoded.chunk(k, by_id.get)
    for off, length in [(100, 3000), (100, 1), (3099, 1), (5000, 6000), (6000, 4000), (16383, 1), (16000, 384)]:
        assert decoded.read(off, length, fetch) == disk[off:off + length], (off, length)
    for off, length in [(99, 2), (3099, 2), (4000, 10), (11000, 1), (5000, 0), (0, 10)]:
        assert decoded.read(off, length, fetch) is None, (off, length)      # not inside one range
    assert [decoded.disk_offset(p) for p in (0, 2999, 3000, 8999, 9000)] == [100, 3099, 5000, 10999, 16000]
    assert decoded.chunk_length(2) == 9384 - 2 * CS
    assert list(decoded.stream_parts(4000, 5000)) == [(0, 4000, 96), (1, 0, CS), (2, 0, 808)]
    assert decoded.read(5000, 10, lambda k: None) is None                  # not at hand


def test_a_copy_chunk_of_the_wrong_length_or_a_hole_in_the_stream():
    copies = Copies([(0, 100), (200, 100)], [HOLE, B], 150)
    assert copies.chunk(0, lambda cid: pytest.fail("a hole is never fetched")) == bytes(150)
    assert copies.chunk(1, {B: b"x" * 50}.get) == b"x" * 50
    for wrong in (b"x" * 49, b"x" * 51):
        with pytest.raises(CorruptObject) as info:
            copies.chunk(1, {B: wrong}.get)
        assert (info.value.name, info.value.reason) == ("copy stream chunk 1", f"holds {len(wrong)} bytes, not 50")
    assert copies.chunk(1, {}.get) is None


# --- slots and pieces ----------------------------------------------------------------------------

def test_pieces_lay_over_their_slot_in_order_and_name_what_is_wrong():
    index = FixedIndex.empty(2 * CS + 100, CS)
    base, p1, p2, tail = b"b" * CS, b"1" * 300, b"2" * 100, b"t" * 100
    store = {A: base, B: p1, C: p2, HOLE: b"never"}
    index.set(0, A)
    index.set_pieces(0, [(10, 300, B), (200, 100, C), (250, 20, None)])     # overlapping: later wins
    expected = bytearray(base)
    expected[10:310] = p1
    expected[200:300] = p2
    expected[250:270] = bytes(20)
    assert index.assemble(0, store.__getitem__) == bytes(expected)
    index.set_pieces(1, [(CS - 1, 1, C[:0] or None)])
    assert index.assemble(1, store.__getitem__) == bytes(CS)                # pieces over a hole
    index.set(2, A)
    index.set_pieces(2, [(0, 100, C)])
    with pytest.raises(CorruptObject) as info:
        index.assemble(2, store.__getitem__)                                # a base of CS bytes
    assert (info.value.name, info.value.reason) == ("slot 2", f"base chunk holds {CS} bytes, not 100")
    index.set(2, None)
    index.set_pieces(2, [(0, 100, C), (0, 100, A)])
    store[C] = tail
    with pytest.raises(CorruptObject) as info:
        index.assemble(2, store.__getitem__)
    assert info.value.reason == f"piece at 0 holds {CS} bytes, not 100"

    def missing(cid: bytes) -> bytes:
        raise ObjectMissing(f"chunks/{cid.hex()[:2]}/{cid.hex()}")
    with pytest.raises(ObjectMissing):
        index.assemble(2, missing)
    index.set(2, B)
    assert index.pieces(2) == () and index.assemble(2, store.__getitem__) == p1   # set drops pieces


@pytest.mark.parametrize("piece", [(0, 0), (-1, 5), (CS - 4, 5), (0, CS + 1)])
def test_a_piece_outside_its_slot_is_not_set(piece):
    index = FixedIndex.empty(2 * CS, CS)
    with pytest.raises(ValueError, match=rf"piece \({piece[0]}, {piece[1]}\) outside slot 1 of {CS} bytes"):
        index.set_pieces(1, [(0, 1, A), (*piece, A)])
    assert index.patches == {}
    short = FixedIndex.empty(CS + 10, CS)
    with pytest.raises(ValueError, match="outside slot 1 of 10 bytes"):
        short.set_pieces(1, [(5, 6, A)])
    short.set_pieces(1, [(5, 5, A)])
    short.set_pieces(1, [])
    assert short.patches == {}
    short.set_pieces(0, [])                                                  # none to empty: fine


def test_slot_keys_name_the_bytes_of_the_slot():
    index = FixedIndex.empty(3 * CS, CS)
    index.set(0, A)
    index.set(1, A)
    assert index.key(0) == A and index.key(2) is None
    index.set_pieces(1, [(0, 1, B)])
    k1 = index.key(1)
    assert k1 is not None and len(k1) == 33 and k1[:1] == b"P" and k1 != A
    index.set_pieces(1, [(0, 1, C)])
    assert index.key(1) not in (k1, A)
    index.set_pieces(1, [(1, 1, B)])
    assert index.key(1) not in (k1, A)
    index.set_pieces(2, [(0, 1, B)])
    index.set_pieces(1, [(0, 1, B)])
    assert index.key(1) == k1 and index.key(2) != k1                        # the base counts too
    assert list(index.occupied()) == [0, 1, 2]
    assert list(FixedIndex.empty(2 * CS, CS).occupied()) == []
    copy = index.copy()
    assert (copy.capacity, copy.chunk_size, copy.ids, copy.patches) == (index.capacity, index.chunk_size,
                                                                        index.ids, index.patches)
    copy.set(0, C)
    assert index.get(0) == A and copy.pieces(1) == index.pieces(1) and copy.copies is None


def test_references_name_every_stored_object_at_its_disk_offset():
    index = FixedIndex.empty(3 * CS, CS)
    index.set(0, A)
    index.set(2, B)
    index.set_pieces(2, [(7, 3, C), (20, 1, None)])
    index.set_pieces(1, [(9, 1, A)])
    index.copies = Copies([(CS + 5, 10), (2 * CS, CS)], [C, HOLE], CS)
    assert list(index.stored()) == [(0, A), (2, B)]
    assert list(index.references()) == [(0, A), (2 * CS, B), (CS + 9, A), (2 * CS + 7, C), (CS + 5, C)]
    assert list(index.copy_references()) == [(CS + 5, C)]
    assert FixedIndex.decode(index.encode(), "x") == index


def test_chunks_touched_and_slot_ranges_cover_each_slot_once():
    assert list(chunks_touched([(0, 1), (CS - 1, 2), (5 * CS, 10), (0, 0), (3 * CS, -1)], CS, 4 * CS + 1)) == [0, 1]
    assert list(chunks_touched([(CS, 3 * CS)], CS, 10 * CS)) == [1, 2, 3]
    assert list(chunks_touched([(CS, 3 * CS + 1)], CS, 10 * CS)) == [1, 2, 3, 4]
    assert list(chunks_touched([(2 * CS, CS), (0, 3 * CS)], CS, 10 * CS)) == [0, 1, 2]
    assert list(chunks_touched([(0, 100 * CS)], CS, 2 * CS + 1)) == [0, 1, 2]
    assert list(slot_ranges([(10, 5), (CS - 2, 4), (3 * CS, 2 * CS)], CS)) == [
        (0, [(10, 15), (CS - 2, CS)]), (1, [(0, 2)]), (3, [(0, CS)]), (4, [(0, CS)])]
    assert list(slot_ranges([], CS)) == []
    assert list(slot_ranges([(0, 1), (1, 1)], CS)) == [(0, [(0, 1), (1, 2)])]


def test_the_format_is_little_endian_and_unsigned():
    assert HEADER.format == "<QIIQ" and SLOT_HEADER.format == "<QII" and PIECE.format == "<II32s"
    assert COUNT.format == "<Q" and COPY_RANGE.format == "<QII"
    assert struct.calcsize(PIECE.format) == 40 and HOLE == bytes(32)


# --- check: an index against its manifest, its chunks, its copies --------------------------------

from fixtures_mount import CHEAP_KDF, PASSPHRASE  # noqa: E402
from format import verified  # noqa: E402
from format.check import Problem, check  # noqa: E402
from format.manifest import DiskEntry, Manifest  # noqa: E402
from format.repository import Repository, chunk_name, manifest_name  # noqa: E402
from format.sealed import MAGIC_MANIFEST  # noqa: E402

RCS = 64 << 10


@pytest.fixture
def repo(tmp_path):
    Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=RCS)
    return Repository.open(tmp_path / "r", PASSPHRASE)


def _slots(repo, datas: list[bytes | None], capacity: int | None = None) -> FixedIndex:
    index = FixedIndex.empty(capacity or len(datas) * RCS, RCS)
    for n, data in enumerate(datas):
        if data is not None:
            cid = repo.chunk_id(data)
            repo.put_chunk(cid, data)
            index.set(n, cid)
    return index


def _put(repo, data: bytes) -> bytes:
    cid = repo.chunk_id(data)
    repo.put_chunk(cid, data)
    return cid


def _generation(repo, index: FixedIndex, gen: str = "g", parent: str | None = None, disks: int = 1) -> str:
    iid = repo.put_index(index)
    return repo.put_manifest(Manifest("v", gen, "t", 1, parent,
                                      [DiskEntry(f"d{k}", index.capacity, RCS, iid) for k in range(disks)]))


def test_check_counts_what_no_generation_references(repo):
    rng = __import__("random").Random(1)
    _generation(repo, _slots(repo, [rng.randbytes(RCS), None]))
    strays = [_put(repo, rng.randbytes(1000 + k)) for k in range(2)]
    repo.backend.put("chunks/ab/notes-not-a-chunk", b"x")
    report = check(repo)
    assert report.ok and (report.chunks, report.unreferenced_chunks) == (1, 2)
    assert report.unreferenced_bytes == sum(repo.backend.size(chunk_name(c)) for c in strays)


def test_check_goes_on_past_each_problem(repo):
    rng = __import__("random").Random(2)
    repo.backend.put("manifests/000-stray", b"x")                       # sorts first
    good = _slots(repo, [rng.randbytes(RCS)])
    iid = repo.put_index(good)
    other = _slots(repo, [rng.randbytes(RCS), rng.randbytes(RCS)])
    oid = repo.put_index(other)
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [
        DiskEntry("a", RCS, RCS, "ee" * 32),                             # a missing index
        DiskEntry("b", 2 * RCS, RCS, iid),                               # another capacity
        DiskEntry("c", 2 * RCS, RCS, oid)]))
    report = check(repo)
    assert report.generations == 1 and report.disks == 3 and report.chunks == 2
    assert report.problems == [
        Problem("manifests/000-stray", "not a manifest name (a stray file)"),
        Problem(f"indexes/{'ee' * 32}", "missing", "v", "g", "a"),
        Problem(f"indexes/{iid}", "index does not match the disk's capacity or chunk size", "v", "g", "b")]


def test_check_names_a_manifest_of_another_format(repo):
    name = "ab" * 16
    repo.backend.put(manifest_name(name), repo.sealer.seal(MAGIC_MANIFEST, name.encode(), b'{"format": 2}'))
    (problem,) = check(repo).problems
    assert problem.object == manifest_name(name) and problem.reason.endswith("has format 2")


def _read_prefixes(repo) -> set[bytes]:
    return set(verified.load(repo))


def test_check_reads_the_chunks_it_is_asked_to(repo):
    rng = __import__("random").Random(3)
    datas = [rng.randbytes(RCS // 4) + bytes(RCS - RCS // 4) for _ in range(12)]
    index = _slots(repo, datas)
    _generation(repo, index)
    ids = [cid for _n, cid in index.stored()]
    groups = []
    for n in (1, 2, 3):
        before = _read_prefixes(repo)
        report = check(repo, read_data=True, subset=(n, 3), record=False)
        assert _read_prefixes(repo) == before                            # not recorded
        expected = {cid for cid in ids if int.from_bytes(cid[:4], "big") % 3 == n - 1}
        assert report.chunks_read == len(expected)
        check(repo, read_data=True, subset=(n, 3))
        groups.append({cid[:8] for cid in expected})
        assert _read_prefixes(repo) == set().union(*groups)
    assert set().union(*groups) == {cid[:8] for cid in ids} and sum(map(len, groups)) == len(ids)
    assert check(repo, read_data=True, subset=0.0).chunks_read == 0
    assert check(repo, read_data=True, subset=1.0).chunks_read == len(ids)
    assert check(repo, read_data=True, only_unverified=True).chunks_read == 0          # all verified now
    verified.record(repo, ids[:5], when_ns=1)                                          # long ago
    assert check(repo, read_data=True, only_unverified=True).chunks_read == 0
    assert check(repo, read_data=True, older_than_ns=3600 * 10**9).chunks_read == 5
    assert check(repo, read_data=True, older_than_ns=3600 * 10**9).chunks_read == 0    # read: recorded
    assert check(repo).chunks_read == 0


def test_check_compares_copies_in_every_slot_they_cross(repo):
    rng = __import__("random").Random(4)
    slots = [rng.randbytes(RCS) for _ in range(4)] + [None]
    index = _slots(repo, slots)
    disk = b"".join(s or bytes(RCS) for s in slots)

    def problems(ranges: list[tuple[int, int]], stream: bytes, ids: list[bytes] | None = None) -> list:
        ids = ids or [_put(repo, stream[k:k + RCS]) for k in range(0, len(stream), RCS)]
        index.copies = Copies(list(ranges), ids, RCS)
        name = _generation(repo, index, gen=f"g{len(repo.manifest_names())}")
        found = check(repo, read_data=True).problems
        repo.backend.delete(manifest_name(name))
        repo._manifests.clear()
        return found

    # the first range lies in slot 1 alone; the second crosses the two stream chunks and
    # slots 1 to 3, ending one byte into slot 3; the third lies in slot 4's zeros
    ranges = [(RCS + 100, 50), (RCS + 1000, 2 * RCS - 999), (4 * RCS + 10, 20)]
    good = b"".join(disk[o:o + n] for o, n in ranges)
    assert len(good) == 2 * RCS - 929 and problems(ranges, good) == []
    for at, offset in [(0, RCS + 100), (50, RCS + 1000), (RCS, 2 * RCS + 950), (2 * RCS - 950, 3 * RCS),
                       (2 * RCS - 949, 4 * RCS + 10), (2 * RCS - 930, 4 * RCS + 29)]:
        bad = bytearray(good)
        bad[at] ^= 0xFF
        assert problems(ranges, bytes(bad)) == [
            Problem("copy table", "the copied bytes differ from the disk's at this offset", "v",
                    f"g{len(repo.manifest_names())}", "d0", offset)], at
    short = good[:-1]                                  # the second stream chunk a byte short
    ids = [_put(repo, short[:RCS]), _put(repo, short[RCS:])]
    assert [p.offset for p in problems(ranges, b"", ids)] == [2 * RCS + 950]
    zeros = [(4 * RCS + 10, 20)]
    assert problems(zeros, b"", [HOLE]) == []                                 # zeros over zeros
    index.set(4, _put(repo, rng.randbytes(RCS)))
    assert [p.offset for p in problems(zeros, b"", [HOLE])] == [4 * RCS + 10]  # zeros over data


def test_a_slot_key_depends_on_that_slot_alone():
    one, two = FixedIndex.empty(3 * CS, CS), FixedIndex.empty(3 * CS, CS)
    for index, next_base in ((one, B), (two, C)):
        index.set(0, A)
        index.set_pieces(0, [(5, 5, B)])
        index.set(1, next_base)
    assert one.key(0) == two.key(0) and one.key(1) != two.key(1)
    assert list(FixedIndex.empty(CS, CS).copy_references()) == []


def test_an_empty_extent_touches_no_chunk_wherever_it_is():
    assert list(chunks_touched([(5 * CS + 1, 0), (2 * CS + 7, 0)], CS, 10 * CS)) == []
    assert list(chunks_touched([(5 * CS + 1, 0), (5 * CS + 2, 1)], CS, 10 * CS)) == [5]
