"""Fuzzing the repository's parsers: config, key store, fixed index, manifest, sealed object.

Each gets arbitrary bytes and valid documents with one field mutated; it must return a
well-formed value or raise its documented error (format.errors), nothing else, and never
allocate beyond what the input bounds. CI runs the seeded ``ci`` profile (tests/conftest.py);
``REPOFS_FUZZ=long`` runs the long one:

    REPOFS_FUZZ=long .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_fuzz_format.py
"""
from __future__ import annotations

import json
import os
import resource

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from format import frames
from format.errors import CorruptObject, KeyMissing, RepositoryNotFound, UnsupportedFormat
from format.fixedindex import FixedIndex
from format.keys import KeyMaterial, KeyStore, wrap
from format.manifest import DiskEntry, Manifest
from format.repository import RepoConfig
from format.sealed import HEADER as SEALED_HEADER
from format.sealed import MAGIC_CHUNK, MAGIC_INDEX, Sealer

LONG = os.environ.get("REPOFS_FUZZ") == "long"
# the long run; the CI pass; under mutation testing (mutmut sets MUTANT_UNDER_TEST), a few
EXAMPLES = 20000 if LONG else 40 if os.environ.get("MUTANT_UNDER_TEST") else 300

KEYS = KeyMaterial.generate(True)
SEALER = Sealer(KEYS)
FAST = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12)


def mutate_json(doc: dict, path: list, value) -> bytes:
    """``doc`` with the field at ``path`` (keys or indexes, followed while they exist)
    replaced by ``value``."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[key % len(node)]]
        elif isinstance(node, list) and node:
            node = node[key % len(node)]
    if isinstance(node, dict) and node:
        node[sorted(node)[path[-1] % len(node)]] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return json.dumps(doc).encode()


paths = st.lists(st.integers(0, 50), min_size=1, max_size=4)


@pytest.fixture(autouse=True, scope="module")
def bounded_memory():
    """Every parser runs under an address-space limit (3 GiB, or four times what the process
    already uses): an allocation an input asks for beyond that fails the test (MemoryError is
    not a documented error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 * 4,
                                                3 << 30), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# -- config -----------------------------------------------------------------------------------

CONFIG = json.loads(RepoConfig("0" * 32, 1 << 20, "aes-256-gcm").encode())


def _config(data: bytes) -> None:
    try:
        c = RepoConfig.decode(data)
    except (CorruptObject, UnsupportedFormat, RepositoryNotFound):
        return
    assert isinstance(c.id, str) and type(c.chunk_size) is int and c.cipher in ("aes-256-gcm", "none")


@given(st.binary(max_size=400))
@settings(max_examples=EXAMPLES)
def test_fuzz_config_any_bytes(data):
    _config(data)


@given(paths, json_values)
@settings(max_examples=EXAMPLES)
def test_fuzz_config_mutated_field(path, value):
    _config(mutate_json(CONFIG, path, value))


# -- key store --------------------------------------------------------------------------------

KEYSTORE = json.loads(wrap(KEYS, "0" * 32, b"pw", FAST))


def _keystore(data: bytes) -> None:
    try:
        store = KeyStore.decode(data)
    except (KeyMissing, UnsupportedFormat):   # KeyStoreInvalid is a KeyMissing
        return
    assert store.cipher in ("aes-256-gcm", "none") and (store.slots or store.id_key)


@given(st.binary(max_size=600))
@settings(max_examples=EXAMPLES)
def test_fuzz_keystore_any_bytes(data):
    _keystore(data)


@given(paths, json_values)
@settings(max_examples=EXAMPLES)
def test_fuzz_keystore_mutated_field(path, value):
    _keystore(mutate_json(KEYSTORE, path, value))


# -- fixed index ------------------------------------------------------------------------------

def _valid_index() -> bytes:
    from format.fixedindex import Copies
    index = FixedIndex.empty((5 << 16) + 4096, 1 << 16)
    index.set(0, b"\x01" * 32)
    index.set(5, b"\x02" * 32)
    index.set_pieces(1, [(0, 4096, b"\x03" * 32), (8192, 4096, None)])
    index.copies = Copies([(0, 5000), (1 << 17, 3000)], [b"\x04" * 32], 1 << 16)
    return index.encode()


VALID_INDEX = _valid_index()


def _gapped_index() -> bytes:
    """An index whose copy table has gaps (flag bit 2, an incremental's cut copies)."""
    from format.fixedindex import Copies
    index = FixedIndex.empty((5 << 16) + 4096, 1 << 16)
    index.set(0, b"\x01" * 32)
    copies = Copies([(0, 5000), (1 << 17, 3000), (3 << 16, 70000)],
                    [b"\x04" * 32, b"\x05" * 32], 1 << 16).cut([(4096, 4096), (1 << 17, 100)])
    assert copies is not None and copies.gaps is not None
    index.copies = copies
    return index.encode()


GAPPED_INDEX = _gapped_index()


def _index(data: bytes) -> None:
    try:
        index = FixedIndex.decode(data, "i")
    except CorruptObject:
        return
    # a decoded index is safe to use: every slot and piece lies inside the disk
    for n in index.occupied():
        start, length = index.chunk_range(n)
        assert 0 < length <= index.chunk_size and start < index.capacity
        for off, plen, _cid in index.pieces(n):
            assert 0 <= off and 0 < plen and off + plen <= length
    list(index.references())
    if index.copies is not None:        # every copied range reads from chunks of the stream
        copies = index.copies
        for off, n in copies.ranges:
            pos = copies.stream_pos(off, n)
            assert pos is not None and 0 <= pos and pos + n <= copies.stream_size
            for k, _inner, _take in copies.stream_parts(pos, n):
                assert k < len(copies.ids)


@given(st.binary(max_size=2000))
@settings(max_examples=EXAMPLES)
def test_fuzz_index_any_bytes(data):
    _index(data)


@pytest.mark.parametrize("valid", [VALID_INDEX, GAPPED_INDEX], ids=["dense", "gapped"])
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 255), st.integers(0, 8))
@settings(max_examples=EXAMPLES)
def test_fuzz_index_flipped_byte(valid, where, xor, width):
    """Bytes flipped anywhere in an index (its copy table dense, or with gaps)."""
    data = bytearray(valid)
    start = int(where * len(data))
    for i in range(start, min(len(data), start + width + 1)):
        data[i] ^= xor
    _index(bytes(data))


@given(st.sampled_from([0, 8, 12, 16, 24 + 6 * 32, 24 + 6 * 32 + 8, 24 + 6 * 32 + 20, 24 + 6 * 32 + 24,
                        len(VALID_INDEX) - 32 - 8, len(VALID_INDEX) - 32 - 8 - 16 - 16 - 8]),
       st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]))
@settings(max_examples=EXAMPLES)
def test_fuzz_index_field_set_to_extremes(offset, value):
    data = bytearray(VALID_INDEX)
    width = 8 if offset in (0, 16) or offset >= 24 + 6 * 32 and (offset - 24 - 6 * 32) % 40 == 0 else 4
    data[offset:offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    _index(bytes(data))


def test_valid_index_round_trips():
    assert FixedIndex.decode(VALID_INDEX, "i").encode() == VALID_INDEX


# -- manifest ---------------------------------------------------------------------------------

MANIFEST = json.loads(Manifest("vm", "g", "t", 1, None, [DiskEntry("d", 1 << 20, 1 << 16, "ab" * 32)],
                               {"k": [1, 2]}).encode())


def _manifest(data: bytes) -> None:
    try:
        m = Manifest.decode(data, "m")
    except (CorruptObject, UnsupportedFormat):
        return
    assert isinstance(m.vm, str) and type(m.time_ns) is int
    for d in m.disks:
        assert type(d.capacity) is int and type(d.chunk_size) is int and d.chunk_size > 0
        bytes.fromhex(d.index)


@given(st.binary(max_size=400))
@settings(max_examples=EXAMPLES)
def test_fuzz_manifest_any_bytes(data):
    _manifest(data)


@given(paths, json_values)
@settings(max_examples=EXAMPLES)
def test_fuzz_manifest_mutated_field(path, value):
    _manifest(mutate_json(MANIFEST, path, value))


def test_deeply_nested_manifest_is_corrupt_not_a_crash():
    with pytest.raises(CorruptObject):
        Manifest.decode(b"[" * 100_000 + b"]" * 100_000, "m")


# -- sealed objects ---------------------------------------------------------------------------

SEALED = SEALER.seal(MAGIC_CHUNK, b"name", b"some bytes that compress " * 40)


def _open(data: bytes, max_plain: int = 1 << 20) -> None:
    try:
        plain = SEALER.open(MAGIC_CHUNK, b"name", data, "c", max_plain=max_plain)
    except (CorruptObject, UnsupportedFormat):
        return
    assert len(plain) <= max_plain


@given(st.binary(max_size=300))
@settings(max_examples=EXAMPLES)
def test_fuzz_sealed_any_bytes(data):
    _open(data)


@given(st.integers(0, 35), st.integers(0, 2**64 - 1), st.sampled_from([1, 2, 4, 8]))
@settings(max_examples=EXAMPLES)
def test_fuzz_sealed_header_field(offset, value, width):
    data = bytearray(SEALED)
    data[offset:offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    _open(bytes(data))


@given(st.sampled_from([b"", b"\x28\xb5\x2f\xfd", b"junk"]), st.binary(max_size=64), st.integers(0, 2**40))
@settings(max_examples=EXAMPLES)
def test_fuzz_authenticated_payload_with_lying_lengths(prefix, body, plain_len):
    """Valid tag, hostile payload: what only someone with the key could write, but the
    reader must still stay bounded."""
    import secrets
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from format.sealed import HEADER
    payload = prefix + body
    for compression in (0, 1):
        nonce = secrets.token_bytes(12)
        header = HEADER.pack(MAGIC_INDEX, 1, compression, 1, 0, plain_len, len(payload), nonce)
        obj = header + AESGCM(KEYS.enc_key).encrypt(nonce, payload, header + b"n")
        try:
            SEALER.open(MAGIC_INDEX, b"n", obj, "i", max_plain=1 << 20)
        except (CorruptObject, UnsupportedFormat):
            pass


@given(st.integers(0, (len(GAPPED_INDEX) - 24 - 6 * 32) // 4 - 1),
       st.sampled_from([0, 1, 4095, 2**31, 2**32 - 1]))
@settings(max_examples=EXAMPLES)
def test_fuzz_gapped_index_word_set_to_extremes(word, value):
    """Any 4-byte word of the tables (gaps, lengths, the stream's length, counts) set to an
    extreme value."""
    data = bytearray(GAPPED_INDEX)
    at = 24 + 6 * 32 + 4 * word
    data[at:at + 4] = value.to_bytes(4, "little")
    _index(bytes(data))


# -- framed chunks (chunk object version 2) ----------------------------------------------------

FRAMED_PLAIN = (b"compresses " * 9000)[:70_000] + os.urandom(70_000)       # 3 frames, mixed
FRAMED_ID = SEALER.object_id(FRAMED_PLAIN)
FRAMED = bytes(frames.seal_chunk(SEALER, FRAMED_ID, FRAMED_PLAIN))


def _framed(data: bytes, offset: int = 0, length: int = 1 << 20) -> None:
    """Whole and in part: only CorruptObject or UnsupportedFormat, never more than asked."""
    try:
        plain = frames.open_chunk(SEALER, FRAMED_ID, data, "c", 1 << 20)
        assert len(plain) <= 1 << 20
    except (CorruptObject, UnsupportedFormat):
        pass
    try:
        part = frames.open_part(SEALER, FRAMED_ID, lambda pos, n: (data[pos:pos + n], len(data)),
                                "c", 1 << 20, offset, length)
        assert part is None or len(part) <= length
    except (CorruptObject, UnsupportedFormat):
        pass


@given(st.integers(0, len(FRAMED) - 1), st.integers(1, 255), st.integers(0, 200_000))
@settings(max_examples=EXAMPLES)
def test_fuzz_framed_chunk_flipped_byte(where, xor, offset):
    data = bytearray(FRAMED)
    data[where] ^= xor
    _framed(bytes(data), offset, 5000)


@given(st.integers(0, (SEALED_HEADER.size + 8 + 3 * 8) // 4 - 1),
       st.sampled_from([0, 1, 4095, 4096, 65536, 2**31, 2**32 - 1]), st.integers(0, 200_000))
@settings(max_examples=EXAMPLES)
def test_fuzz_framed_chunk_table_word_set_to_extremes(word, value, offset):
    """Any 4-byte word of the header and frame table (frame size, count, stored lengths)
    set to an extreme value."""
    data = bytearray(FRAMED)
    data[4 * word:4 * word + 4] = value.to_bytes(4, "little")
    _framed(bytes(data), offset, 70_000)


@given(st.binary(max_size=400), st.integers(0, 2**20))
@settings(max_examples=EXAMPLES)
def test_fuzz_framed_chunk_any_bytes_after_a_valid_header(tail, offset):
    _framed(FRAMED[:36] + tail, offset, 100)


def test_valid_framed_chunk_round_trips():
    assert frames.open_chunk(SEALER, FRAMED_ID, FRAMED, "c", 1 << 20) == FRAMED_PLAIN
    read = lambda pos, n: (FRAMED[pos:pos + n], len(FRAMED))  # noqa: E731
    assert frames.open_part(SEALER, FRAMED_ID, read, "c", 1 << 20, 65_000, 10_000) == FRAMED_PLAIN[65_000:75_000]
