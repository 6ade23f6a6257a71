"""Round-trip properties of the frozen encodings: sealed objects, fixed indexes, manifests."""
from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from format.errors import CorruptObject, UnsupportedFormat
from format.fixedindex import Copies, FixedIndex, chunk_count
from format.keys import KeyMaterial
from format.manifest import DiskEntry, Manifest
from format.sealed import MAGIC_CHUNK, MAGIC_INDEX, Sealer


def _examples(n: int) -> int:
    """A quarter of the examples for each mutant of a mutation run (docs/security.md); the full
    number in the test run."""
    return max(10, n // 4) if os.environ.get("MUTANT_UNDER_TEST") else n


SEALERS = {
    "aes": Sealer(KeyMaterial.generate(encrypted=True)),
    "none": Sealer(KeyMaterial.generate(encrypted=False)),
}


@pytest.mark.parametrize("kind", SEALERS)
@given(data=st.binary(max_size=70_000)
       | st.builds(lambda n, b: b * n, st.integers(0, 5000), st.binary(min_size=1, max_size=16)))
@settings(max_examples=_examples(60), suppress_health_check=[HealthCheck.too_slow])
def test_chunk_codec_round_trip(kind, data):
    s = SEALERS[kind]
    cid = s.object_id(data)
    sealed = s.seal(MAGIC_CHUNK, cid, data)
    assert s.open(MAGIC_CHUNK, cid, sealed, "c") == data


@pytest.mark.parametrize("kind", SEALERS)
@given(data=st.binary(min_size=1, max_size=5000), where=st.integers(min_value=0), bit=st.integers(0, 7))
@settings(max_examples=_examples(80))
def test_any_flipped_bit_is_detected(kind, data, where, bit):
    s = SEALERS[kind]
    cid = s.object_id(data)
    sealed = bytearray(s.seal(MAGIC_CHUNK, cid, data))
    sealed[where % len(sealed)] ^= 1 << bit
    # a flipped version byte reads as an object from another format version: also refused
    with pytest.raises((CorruptObject, UnsupportedFormat)):
        s.open(MAGIC_CHUNK, cid, bytes(sealed), "c")


@given(data=st.binary(min_size=1, max_size=2000))
@settings(max_examples=_examples(30))
def test_object_bound_to_its_name_and_kind(data):
    s = SEALERS["aes"]
    cid = s.object_id(data)
    sealed = s.seal(MAGIC_CHUNK, cid, data)
    with pytest.raises(CorruptObject):
        s.open(MAGIC_CHUNK, bytes(32), sealed, "renamed")
    with pytest.raises(CorruptObject):
        s.open(MAGIC_INDEX, cid, sealed, "wrong kind")
    with pytest.raises(CorruptObject):
        s.open(MAGIC_CHUNK, cid, sealed[:-1], "truncated")


@given(capacity=st.integers(0, 1 << 40), chunk_pow=st.integers(16, 24),
       picks=st.lists(st.integers(min_value=0), max_size=20))
@settings(max_examples=_examples(60))
def test_fixed_index_round_trip_and_arithmetic(capacity, chunk_pow, picks):
    cs = 1 << chunk_pow
    if chunk_count(capacity, cs) > 200_000:
        capacity = 200_000 * cs - 7
    idx = FixedIndex.empty(capacity, cs)
    expected = {}
    for p in picks:
        if idx.count:
            n = p % idx.count
            cid = p.to_bytes(32, "little") if p else None
            idx.set(n, cid)
            expected[n] = cid
    back = FixedIndex.decode(idx.encode(), "i")
    assert (back.capacity, back.chunk_size, back.count) == (capacity, cs, chunk_count(capacity, cs))
    for n, cid in expected.items():
        assert back.get(n) == cid
    assert sum(back.chunk_range(n)[1] for n in range(back.count)) == capacity
    if capacity:
        off = picks[0] % capacity if picks else capacity - 1
        n, inner = back.chunk_from_offset(off)
        start, length = back.chunk_range(n)
        assert start + inner == off and inner < length


@st.composite
def _patched_index(draw):
    cs = 1 << draw(st.integers(12, 20))
    capacity = draw(st.integers(1, 40 * cs))
    idx = FixedIndex.empty(capacity, cs)
    content = {}
    for n in draw(st.lists(st.integers(0, idx.count - 1), max_size=12)):
        _, length = idx.chunk_range(n)
        pieces = []
        for _ in range(draw(st.integers(1, 4))):
            off = draw(st.integers(0, length - 1))
            plen = draw(st.integers(1, length - off))
            # a piece's id, in this test, spells its length and its fill byte
            fill = draw(st.integers(1, 255))
            cid = draw(st.sampled_from([None, struct.pack("<QB", plen, fill) + bytes(23)]))
            pieces.append((off, plen, cid))
        idx.set(n, draw(st.sampled_from([None, struct.pack("<QB", length, 7) + bytes(23)])))
        idx.set_pieces(n, pieces)
        content[n] = tuple(pieces)
    return idx, content


@given(_patched_index())
@settings(max_examples=_examples(80))
def test_index_patches_round_trip_and_assemble(case):
    idx, content = case
    back = FixedIndex.decode(idx.encode(), "i")
    assert back.patches == {n: p for n, p in content.items()}
    assert back.ids == idx.ids
    assert back.encode() == idx.encode()
    # assembling: the base, then each piece over it in order
    def fetch(cid: bytes) -> bytes:
        size, fill = struct.unpack_from("<QB", cid)
        return bytes([fill]) * size

    for n in range(back.count):
        _, length = back.chunk_range(n)
        want = bytearray(fetch(back.get(n)) if back.get(n) else bytes(length))
        for off, plen, cid in back.pieces(n):
            want[off:off + plen] = fetch(cid) if cid else bytes(plen)
        assert back.assemble(n, fetch) == bytes(want)
        assert (back.key(n) is None) == (not back.get(n) and not back.pieces(n))
    refs = list(back.references())
    assert len(refs) == sum(1 for _ in back.stored()) + sum(
        1 for p in content.values() for _o, _l, cid in p if cid)


def test_index_rejects_malformed_patch_tables():
    idx = FixedIndex.empty(4 << 20, 1 << 20)
    idx.set_pieces(1, [(4096, 4096, b"\x01" * 32)])
    idx.set_pieces(3, [(0, 8192, None)])
    good = idx.encode()
    assert FixedIndex.decode(good, "i").patches == idx.patches
    with pytest.raises(ValueError):
        idx.set_pieces(2, [((1 << 20) - 10, 20, None)])      # past the slot's end
    base = 24 + 4 * 32
    bad_cases = [
        good[:-1],                                            # truncated
        good + b"\0",                                         # trailing bytes
        good[:12] + bytes([4, 0, 0, 0]) + good[16:],          # unknown flag
        good[:12] + bytes(4) + good[16:],                     # a table without the flag
        good[:base] + (0).to_bytes(8, "little") + good[base + 8:],      # zero patched slots
        good[:base + 8] + (9).to_bytes(8, "little") + good[base + 16:],  # slot past the end
    ]
    second = base + 8 + 16 + 40
    bad_cases.append(good[:second] + (1).to_bytes(8, "little") + good[second + 8:])  # not ascending
    piece = base + 8 + 16
    bad_cases.append(good[:piece + 4] + (0).to_bytes(4, "little") + good[piece + 8:])  # empty piece
    bad_cases.append(good[:piece] + ((1 << 20) - 100).to_bytes(4, "little") + good[piece + 4:])  # outside
    for bad in bad_cases:
        with pytest.raises(CorruptObject):
            FixedIndex.decode(bad, "i")


@st.composite
def _copied_index(draw):
    """An index with copies over random ranges of a disk, and the disk's bytes."""
    cs = draw(st.sampled_from([4096, 1 << 16]))
    capacity = draw(st.integers(1, 6 * cs))
    disk = bytes(draw(st.binary(min_size=capacity, max_size=capacity)))
    cuts = sorted(draw(st.sets(st.integers(0, capacity), min_size=2, max_size=12)))
    ranges = [(a, b - a) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]
    ranges = [r for i, r in enumerate(ranges) if i == 0 or r[0] > ranges[i - 1][0] + ranges[i - 1][1]]
    if not ranges:
        ranges = [(0, capacity)]
    stream = b"".join(disk[o:o + n] for o, n in ranges)
    chunks = {}
    ids = []
    for k in range(0, len(stream), cs):
        data = stream[k:k + cs]
        cid = hashlib.blake2b(data, digest_size=32).digest()
        chunks[cid] = data
        ids.append(cid)
    idx = FixedIndex.empty(capacity, cs)
    idx.copies = Copies(ranges, ids, cs)
    return idx, disk, chunks


@given(_copied_index(), st.data())
@settings(max_examples=_examples(80))
def test_index_copies_round_trip_and_locate(case, data):
    idx, disk, chunks = case
    back = FixedIndex.decode(idx.encode(), "i")
    assert back.copies.ranges == idx.copies.ranges and back.copies.ids == idx.copies.ids
    assert back.encode() == idx.encode()
    assert back.copy().copies is None          # an incremental's starting point has none
    # every read inside one range is found in the stream, with the disk's bytes
    off = data.draw(st.integers(0, idx.capacity - 1))
    length = data.draw(st.integers(1, idx.capacity - off))
    pos = back.copies.stream_pos(off, length)
    inside = any(o <= off and off + length <= o + n for o, n in back.copies.ranges)
    assert (pos is not None) == inside
    if pos is not None:
        got = b"".join(chunks[back.copies.ids[k]][inner:inner + take]
                       for k, inner, take in back.copies.stream_parts(pos, length))
        assert got == disk[off:off + length]
    for disk_off, cid in back.copy_references():   # each stream chunk starts at its disk offset
        assert chunks[cid][:1] == disk[disk_off:disk_off + 1]


def test_index_rejects_malformed_copy_tables():
    idx = FixedIndex.empty(4 << 20, 1 << 20)
    idx.copies = Copies([(4096, 8192), (1 << 20, 4096)], [b"\x01" * 32], 1 << 20)
    good = idx.encode()
    assert FixedIndex.decode(good, "i").copies.ranges == idx.copies.ranges
    base = 24 + 4 * 32
    r0, r1 = base + 8, base + 8 + 16

    def at(pos: int, value: int, size: int) -> bytes:
        return good[:pos] + value.to_bytes(size, "little") + good[pos + size:]
    bad_cases = [
        good[:-1], good + b"\0",                                  # truncated, trailing
        at(base, 0, 8),                                           # no ranges
        at(r0 + 8, 0, 4),                                         # empty range
        at(r0 + 12, 1, 4),                                        # reserved set
        at(r1, 4096, 8),                                          # overlapping the first
        at(r1, 12288, 8),                                         # touching the first
        at(r1, (4 << 20) - 100, 8),                               # past the disk's end
        at(r1 + 16, 2, 8),                                        # chunk count off
        good[:12] + bytes(4) + good[16:],                         # a table without the flag
    ]
    for bad in bad_cases:
        with pytest.raises(CorruptObject):
            FixedIndex.decode(bad, "i")
    # and a writer cannot encode what a reader would reject
    for ranges in ([(0, 4096), (4096, 4096)], [((4 << 20) - 100, 4096)], [(8192, 0)], []):
        idx.copies = Copies(ranges, [b"\x01" * 32] * (1 if ranges else 0), 1 << 20)
        with pytest.raises(ValueError):
            idx.encode()


def test_index_rejects_inconsistent_headers():
    idx = FixedIndex.empty(10 << 20, 1 << 20)
    enc = bytearray(idx.encode())
    with pytest.raises(CorruptObject):
        FixedIndex.decode(bytes(enc[:-1]), "i")
    enc[16] = 99  # entry count
    with pytest.raises(CorruptObject):
        FixedIndex.decode(bytes(enc), "i")


@given(vm=st.text(min_size=1, max_size=40),
       meta=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=5))
@settings(max_examples=_examples(40))
def test_manifest_round_trip(vm, meta):
    m = Manifest(vm=vm, generation="2026-11-25T140300Z", time="t", time_ns=5, parent=None,
                 disks=[DiskEntry("disk0", 123, 1 << 20, "ab" * 32, source={"type": "file"})], metadata=meta)
    assert Manifest.decode(m.encode(), "m") == m
