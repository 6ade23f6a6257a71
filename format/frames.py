"""Framed chunks (chunk object version 2): a chunk sealed as independent frames, so that a
reader of a few KiB opens and authenticates one frame of 128 KiB instead of the whole 1 MiB
chunk — a random read of a mounted disk, or a Quick Rollback writing back pieces of a
generation, reads an eighth of the chunk.

The object keeps the sealed-object framing (``format.sealed``: header, payload, tag; its
size ``36 + payload length + tag size``) with version 2 and compression 0 in the header;
its payload is a frame table followed by the sealed frames::

    table   u32 frame size F · u32 frame count N = ceil(plaintext length / F)
            N × (u32 stored length, tag included · u8 compression 0/1 · 3 reserved zero bytes)
    frames  N × (data ‖ tag): frame i's plaintext bytes [i·F, min((i+1)·F, plaintext
            length)), compressed (one zstd frame recording its content size) or not

Frame i is sealed like a whole object (cipher 1: AES-256-GCM, cipher 0: BLAKE3) with the
nonce ``frame_nonce(nonce, i + 1)`` and the associated data ``header ‖ name ‖ table ‖
u32 i``; the object's tag seals no data under the header's nonce and ``header ‖ name ‖
table``. So each frame alone proves, with the key, that it is frame i of this chunk under
this table; a whole read also checks the object's tag and the chunk's id. Unencrypted
repositories have no key in their tags, so their readers read chunks whole (the keyed id
is what they can trust).

Which chunks a repository frames is ``chunk_object``'s choice: those that do not compress.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from .errors import CorruptObject
from .sealed import (COMPRESSION_NONE, COMPRESSION_ZSTD, HEADER, MAGIC_CHUNK, TAG_SIZE, Sealer,
                     worth_compressing)

CHUNK_VERSION_FRAMED = 2
FRAME_SIZE = 128 * 1024
MIN_FRAME_SIZE = 4096
TABLE_HEAD = struct.Struct("<II")
TABLE_ENTRY = struct.Struct("<IB3s")
FRAME_NUMBER = struct.Struct("<I")
# what a reader of part of a chunk reads first: the header, the table of a 1 MiB chunk of
# 128 KiB frames (72 bytes) and, usually, the first frame's first bytes
FIRST_READ = 4096


def frame_nonce(nonce: bytes, i: int) -> bytes:
    """The nonce of frame ``i - 1`` (``i = 0``: the object's own tag): the header's nonce
    with ``i`` added to its last 4 bytes (little-endian, modulo 2³²)."""
    low = (int.from_bytes(nonce[8:], "little") + i) & 0xFFFFFFFF
    return nonce[:8] + low.to_bytes(4, "little")


def chunk_object(sealer: Sealer, cid: bytes, plaintext: bytes | memoryview) -> bytearray:
    """The object a repository stores for chunk ``cid``: framed (version 2, frames stored as
    they are) when the repository is encrypted, the chunk is longer than a frame and a sample
    of it does not compress (media, archives, encrypted guest data); otherwise sealed whole
    (version 1). Frames of a chunk that compresses would each compress on their own, and
    worse: +1.3% stored on the benchmark data set at 128 KiB frames, +2.7% at 64 KiB
    (``bench/bench_frames.py``). An unencrypted repository's readers read chunks whole
    (section 5 of docs/format.md), so frames would only cost there."""
    compress = worth_compressing(plaintext)
    if sealer.encrypted and len(plaintext) > FRAME_SIZE and not compress:
        return seal_chunk(sealer, cid, plaintext, compress=False)
    return sealer.seal(MAGIC_CHUNK, cid, plaintext, compress=compress)


def seal_chunk(sealer: Sealer, cid: bytes, plaintext: bytes | memoryview,
               frame_size: int = FRAME_SIZE, compress: bool | None = None) -> bytearray:
    """The framed chunk object of ``plaintext`` (named ``cid``): with ``compress`` (by
    default when a sample of the chunk compresses, ``worth_compressing``) each frame
    compressed where that shrinks it."""
    view = memoryview(plaintext)
    count = -(-len(view) // frame_size)
    tag = TAG_SIZE[sealer.cipher]
    if compress is None:
        compress = worth_compressing(view)
    bodies: list[tuple[int, bytes | memoryview]] = []
    for i in range(count):
        part = view[i * frame_size:(i + 1) * frame_size]
        body: bytes | memoryview = part
        kind = COMPRESSION_NONE
        if compress:
            packed = sealer.compress(part)
            if len(packed) < len(part):
                kind, body = COMPRESSION_ZSTD, packed
        bodies.append((kind, body))
    table = TABLE_HEAD.pack(frame_size, count) + b"".join(
        TABLE_ENTRY.pack(len(body) + tag, kind, bytes(3)) for kind, body in bodies)
    payload_len = len(table) + sum(len(body) + tag for _, body in bodies)
    nonce = sealer.new_nonce()
    out = bytearray(HEADER.size + payload_len + tag)
    HEADER.pack_into(out, 0, MAGIC_CHUNK, CHUNK_VERSION_FRAMED, COMPRESSION_NONE, sealer.cipher, 0,
                     len(view), payload_len, nonce)
    aad = bytes(out[:HEADER.size]) + cid + table
    dest = memoryview(out)
    pos = HEADER.size
    dest[pos:pos + len(table)] = table
    pos += len(table)
    for i, (_kind, body) in enumerate(bodies):
        sealer.seal_into(frame_nonce(nonce, i + 1), body, aad + FRAME_NUMBER.pack(i),
                         dest[pos:pos + len(body) + tag])
        pos += len(body) + tag
    sealer.seal_into(nonce, b"", aad, dest[pos:])
    return out


@dataclass
class Layout:
    """A framed chunk's header and table, checked: where each frame lies in the object."""
    plain_len: int
    nonce: bytes
    frame_size: int
    kinds: list[int]
    starts: list[int]            # object offset of each frame, and the end of the last
    aad: bytes                   # header ‖ name ‖ table

    def frame_len(self, i: int) -> int:
        return min(self.frame_size, self.plain_len - i * self.frame_size)


def _layout(sealer: Sealer, cid: bytes, head: bytes | memoryview, size: int, label: str,
            max_plain: int, more: Callable[[int], bytes] | None = None,
            whole: bool = False) -> Layout | None:
    """The layout of the chunk object of ``size`` bytes that starts with ``head`` (the header
    and, with ``more(n)`` to read the object's bytes up to ``n``, maybe not all of the
    table), or None for a version 1 object. CorruptObject for anything the format forbids.
    ``whole``: ``head`` is the whole object, whose tag is checked before the table is used."""
    if len(head) >= HEADER.size and head[4] != CHUNK_VERSION_FRAMED:
        sealer.check_header(MAGIC_CHUNK, head[:HEADER.size], size, label, max_plain)
        return None
    compression, cipher, plain_len, payload_len, nonce = sealer.check_header(
        MAGIC_CHUNK, head[:HEADER.size], size, label, max_plain, versions=(CHUNK_VERSION_FRAMED,))
    if compression != COMPRESSION_NONE:
        raise CorruptObject(label, f"a framed chunk's header says compression {compression}, not 0")
    if len(head) < HEADER.size + TABLE_HEAD.size and more is not None:
        head = more(HEADER.size + TABLE_HEAD.size)
    if len(head) < HEADER.size + TABLE_HEAD.size or payload_len < TABLE_HEAD.size:
        raise CorruptObject(label, "shorter than its frame table")
    frame_size, count = TABLE_HEAD.unpack_from(head, HEADER.size)
    table_end = HEADER.size + TABLE_HEAD.size + count * TABLE_ENTRY.size
    if table_end > HEADER.size + payload_len:
        raise CorruptObject(label, "frame table longer than the payload")
    if len(head) < table_end and more is not None:
        head = more(table_end)
    if len(head) < table_end:
        raise CorruptObject(label, "shorter than its frame table")
    aad = bytes(head[:HEADER.size]) + cid + bytes(head[HEADER.size:table_end])
    tag = TAG_SIZE[cipher]
    if whole:
        sealer.open_sealed(nonce, memoryview(head)[size - tag:], aad, label)
    if not MIN_FRAME_SIZE <= frame_size <= max(MIN_FRAME_SIZE, max_plain) or \
            count != -(-plain_len // frame_size):
        raise CorruptObject(label, f"frame table of {count} frames of {frame_size} bytes "
                                   f"does not fit {plain_len} bytes")
    kinds, starts, pos = [], [], table_end
    for i in range(count):
        stored, kind, reserved = TABLE_ENTRY.unpack_from(head, HEADER.size + TABLE_HEAD.size + i * TABLE_ENTRY.size)
        if kind not in (COMPRESSION_NONE, COMPRESSION_ZSTD) or reserved != bytes(3) or stored < tag:
            raise CorruptObject(label, f"frame {i}: stored length {stored}, compression {kind}")
        kinds.append(kind)
        starts.append(pos)
        pos += stored
    starts.append(pos)
    if pos != HEADER.size + payload_len:
        raise CorruptObject(label, "frame lengths do not add up to the payload")
    return Layout(plain_len, nonce, frame_size, kinds, starts, aad)


def _open_frame(sealer: Sealer, lay: Layout, i: int, body: bytes | memoryview, label: str) -> bytes:
    data = sealer.open_sealed(frame_nonce(lay.nonce, i + 1), body, lay.aad + FRAME_NUMBER.pack(i),
                              f"{label} frame {i}")
    want = lay.frame_len(i)
    if lay.kinds[i] == COMPRESSION_ZSTD:
        return sealer.decompress(data, want, f"{label} frame {i}")
    if len(data) != want:
        raise CorruptObject(f"{label} frame {i}", f"holds {len(data)} bytes, not {want}")
    return bytes(data)


def open_chunk(sealer: Sealer, cid: bytes, data: bytes, label: str, max_plain: int) -> bytes:
    """The plaintext of chunk object ``data`` of either version, every tag checked (not the
    id: the repository checks it)."""
    lay = _layout(sealer, cid, data, len(data), label, max_plain, whole=True)
    if lay is None:
        return sealer.open(MAGIC_CHUNK, cid, data, label, max_plain)
    view = memoryview(data)
    # every frame opened into one buffer: a join of 16 frames' own buffers costs more than
    # the frames (fresh memory faulted in twice)
    out = bytearray(lay.plain_len)
    dest = memoryview(out)
    tag = TAG_SIZE[sealer.cipher]
    for i, kind in enumerate(lay.kinds):
        body = view[lay.starts[i]:lay.starts[i + 1]]
        at, want = i * lay.frame_size, lay.frame_len(i)
        if kind == COMPRESSION_NONE and len(body) - tag == want:
            sealer.open_sealed_into(frame_nonce(lay.nonce, i + 1), body, lay.aad + FRAME_NUMBER.pack(i),
                                    f"{label} frame {i}", dest[at:at + want])
        else:
            dest[at:at + want] = _open_frame(sealer, lay, i, body, label)
    return bytes(out)


def open_part(sealer: Sealer, cid: bytes, read: Callable[[int, int], tuple[bytes, int]], label: str,
              max_plain: int, offset: int, length: int,
              layouts: MutableMapping[bytes, Layout] | None = None) -> bytes | None:
    """Plaintext bytes [offset, offset + length) of a framed chunk, reading the object with
    ``read(position, bytes)`` → (bytes, object size): the header and table, then only the
    frames holding them, each authenticated. None for a version 1 chunk (read it whole).
    ``layouts``: tables read before, by chunk id (kept there for the next read of the same
    chunk, which then reads its frames alone); a frame that fails under a table kept there
    is read again with the table read anew (the object may have been stored again)."""
    lay = layouts.get(cid) if layouts is not None else None
    have = bytearray()
    if lay is None:
        first, size = read(0, FIRST_READ)
        have += first

        def more(n: int) -> bytes:
            if n > len(have):
                have.extend(read(len(have), n - len(have))[0])
            return bytes(have)
        lay = _layout(sealer, cid, first, size, label, max_plain, more)
        if lay is None:
            return None
        if layouts is not None:
            layouts[cid] = lay
    elif layouts is not None:
        try:
            return _frames(sealer, lay, read, label, offset, length, have)
        except CorruptObject:
            layouts.pop(cid, None)
            return open_part(sealer, cid, read, label, max_plain, offset, length, layouts)
    return _frames(sealer, lay, read, label, offset, length, have)


def _frames(sealer: Sealer, lay: Layout, read: Callable[[int, int], tuple[bytes, int]], label: str,
            offset: int, length: int, have: bytearray) -> bytes:
    """Plaintext bytes [offset, offset + length) from the frames holding them: from ``have``
    (the object's first bytes, already read) or read."""
    end = min(offset + length, lay.plain_len)
    if offset >= end:
        return b""
    lo, hi = offset // lay.frame_size, (end - 1) // lay.frame_size
    a, b = lay.starts[lo], lay.starts[hi + 1]
    if b <= len(have):
        span = memoryview(have)[a:b]
    else:
        got = read(a, b - a)[0]
        if len(got) != b - a:
            raise CorruptObject(label, "shorter than its frame table says")
        span = memoryview(got)
    parts = [_open_frame(sealer, lay, i, span[lay.starts[i] - a:lay.starts[i + 1] - a], label)
             for i in range(lo, hi + 1)]
    inner = offset - lo * lay.frame_size
    joined = parts[0] if len(parts) == 1 else b"".join(parts)
    return joined[inner:inner + end - offset]
