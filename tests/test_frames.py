"""Framed chunks (``format.frames``, chunk object version 2): a part of a chunk is read by
reading only the frames that hold it, each authenticated on its own — what makes a random
read of a mounted disk fetch an eighth of a 1 MiB chunk. Checked byte for byte against
the plaintext, with what was read counted, and against every kind of damage."""
from __future__ import annotations

import random

import pytest

from format import frames
from format.errors import CorruptObject
from format.keys import KeyMaterial
from format.repository import Repository, chunk_name
from format.sealed import HEADER, MAGIC_CHUNK, Sealer

F = frames.FRAME_SIZE
FAST = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}
SEALERS = {"aes-gcm": Sealer(KeyMaterial.generate(True)), "none": Sealer(KeyMaterial.generate(False))}


def plaintext(rng: random.Random, size: int) -> bytes:
    """Random and compressible runs mixed, so some frames are compressed and some not."""
    out = bytearray()
    while len(out) < size:
        n = rng.randrange(1, 3 * F)
        out += rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * n
    return bytes(out[:size])


def reader(obj: bytes, log: list[tuple[int, int]]):
    def read(pos: int, n: int) -> tuple[bytes, int]:
        log.append((pos, n))
        return obj[pos:pos + n], len(obj)
    return read


@pytest.mark.parametrize("cipher", sorted(SEALERS))
@pytest.mark.parametrize("seed", range(6))
def test_a_framed_chunk_reads_whole_and_in_parts_as_its_plaintext(cipher: str, seed: int):
    sealer, rng = SEALERS[cipher], random.Random(seed)
    data = plaintext(rng, rng.choice([1, F - 1, F, F + 1, 1 << 20, (1 << 20) - 3]))
    cid = sealer.object_id(data)
    obj = bytes(frames.seal_chunk(sealer, cid, data))
    assert obj[4] == frames.CHUNK_VERSION_FRAMED and obj[5] == 0
    assert frames.open_chunk(sealer, cid, obj, "c", 1 << 20) == data
    for _ in range(30):
        offset = rng.randrange(len(data))
        length = rng.randrange(1, 3 * F)
        log: list[tuple[int, int]] = []
        got = frames.open_part(sealer, cid, reader(obj, log), "c", 1 << 20, offset, length)
        assert got == data[offset:offset + length]
        frames_read = (min(offset + length, len(data)) - 1) // F - offset // F + 1
        # the header and table, then the frames: never the whole chunk for a small part
        assert sum(n for _, n in log) <= frames.FIRST_READ + frames_read * (F + 64)
    assert frames.open_part(sealer, cid, reader(obj, []), "c", 1 << 20, len(data), 10) == b""


def test_a_version_1_chunk_is_left_to_the_whole_read():
    sealer = SEALERS["aes-gcm"]
    obj = bytes(sealer.seal(MAGIC_CHUNK, b"i" * 32, b"x" * 5000))
    assert frames.open_part(sealer, b"i" * 32, reader(obj, []), "c", 1 << 20, 0, 10) is None
    assert frames.open_chunk(sealer, b"i" * 32, obj, "c", 1 << 20) == b"x" * 5000


def test_a_damaged_frame_fails_alone_and_damage_to_the_table_fails_every_read():
    sealer = SEALERS["aes-gcm"]
    data = random.Random(1).randbytes(1 << 20)           # no frame compresses: all one length
    cid = sealer.object_id(data)
    obj = bytearray(frames.seal_chunk(sealer, cid, data))
    table_end = HEADER.size + frames.TABLE_HEAD.size + ((1 << 20) // F) * frames.TABLE_ENTRY.size
    stored = F + 16
    hit = bytearray(obj)
    hit[table_end + 5 * stored + 100] ^= 1                 # inside frame 5
    with pytest.raises(CorruptObject, match="frame 5.*authentication failed"):
        frames.open_part(sealer, cid, reader(bytes(hit), []), "c", 1 << 20, 5 * F + 10, 10)
    assert frames.open_part(sealer, cid, reader(bytes(hit), []), "c", 1 << 20, 6 * F, 10) == data[6 * F:6 * F + 10]
    with pytest.raises(CorruptObject):
        frames.open_chunk(sealer, cid, bytes(hit), "c", 1 << 20)
    # frames 2 and 3 swapped: each is sealed for its place
    swapped = bytearray(obj)
    a, b = table_end + 2 * stored, table_end + 3 * stored
    swapped[a:b], swapped[b:b + stored] = obj[b:b + stored], obj[a:b]
    with pytest.raises(CorruptObject, match="authentication failed"):
        frames.open_part(sealer, cid, reader(bytes(swapped), []), "c", 1 << 20, 2 * F, 10)
    # a byte of the table: the whole read fails on the object's tag, a part read on its frame
    for at in range(HEADER.size, table_end):
        bad = bytearray(obj)
        bad[at] ^= 0x40
        with pytest.raises(CorruptObject):
            frames.open_chunk(sealer, cid, bytes(bad), "c", 1 << 20)
        with pytest.raises(CorruptObject):
            frames.open_part(sealer, cid, reader(bytes(bad), []), "c", 1 << 20, 7 * F, 10)
    # another chunk's name
    with pytest.raises(CorruptObject):
        frames.open_part(sealer, b"\0" * 32, reader(bytes(obj), []), "c", 1 << 20, 0, 10)


def text(rng: random.Random, size: int) -> bytes:
    """Log-like lines: a chunk of them compresses about threefold."""
    words = [b"error", b"session", b"request", b"kernel", b"status", b"the", b"of"]
    out = bytearray()
    while len(out) < size:
        out += b"%d host%d " % (rng.randrange(1 << 30), rng.randrange(64)) + \
            b" ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))) + b"\n"
    return bytes(out[:size])


@pytest.mark.parametrize("encrypted", [True, False])
def test_the_repository_frames_the_chunks_that_do_not_compress_and_reads_their_parts(tmp_path, encrypted: bool):
    repo = Repository.init(tmp_path / "r", b"pw" if encrypted else None, encrypted=encrypted, kdf=FAST)
    rng = random.Random(5)
    big, small, texty = rng.randbytes(1 << 20), rng.randbytes(F), text(rng, 1 << 20)
    for data in (big, small, texty):
        repo.put_chunk(repo.chunk_id(data), data)
    big_id, small_id, text_id = (repo.chunk_id(d) for d in (big, small, texty))
    version = {cid: repo.backend.get(chunk_name(cid))[4] for cid in (big_id, small_id, text_id)}
    # framed: a chunk of an encrypted repository longer than a frame that does not compress;
    # whole (as before): one frame's worth, one that compresses (its frames would compress
    # worse), and every chunk of an unencrypted repository (read whole anyway)
    assert version == {big_id: frames.CHUNK_VERSION_FRAMED if encrypted else 1, small_id: 1, text_id: 1}
    sealed_text = repo.backend.get(chunk_name(text_id))
    assert len(sealed_text) < len(texty) // 2                     # compressed whole
    assert len(sealed_text) == len(repo.sealer.seal(MAGIC_CHUNK, text_id, texty))
    assert repo.get_chunk(big_id) == big and repo.get_chunk(small_id) == small and repo.get_chunk(text_id) == texty
    for offset, length in ((0, 4096), (F - 10, 20), (700_000, 300_000), ((1 << 20) - 1, 5)):
        # a part of a framed chunk; else not in part (read it whole)
        assert repo.get_chunk_part(big_id, offset, length) == (big[offset:offset + length] if encrypted else None)
        assert repo.get_chunk_part(small_id, offset % F, length) is None
        assert repo.get_chunk_part(text_id, offset, length) is None
    repo.backend.delete(chunk_name(big_id))
    assert repo.get_chunk_part(big_id, 0, 10) is None


def test_a_kept_table_makes_a_later_part_one_read_and_a_stale_one_is_read_anew():
    sealer, rng = SEALERS["aes-gcm"], random.Random(9)
    data = plaintext(rng, 1 << 20)
    cid = sealer.object_id(data)
    obj = bytes(frames.seal_chunk(sealer, cid, data))
    kept: dict[bytes, frames.Layout] = {}
    log: list[tuple[int, int]] = []
    assert frames.open_part(sealer, cid, reader(obj, log), "c", 1 << 20, 5 * F, 100, kept) == data[5 * F:5 * F + 100]
    assert len(log) == 2 and cid in kept                   # the table, then the frame
    log.clear()
    assert frames.open_part(sealer, cid, reader(obj, log), "c", 1 << 20, 7 * F, 100, kept) == data[7 * F:7 * F + 100]
    assert len(log) == 1                                    # the frame alone
    # the chunk stored again meanwhile (another nonce, other frame places): read anew
    again = bytes(frames.seal_chunk(sealer, cid, data))
    log.clear()
    assert frames.open_part(sealer, cid, reader(again, log), "c", 1 << 20, 7 * F, 100, kept) == data[7 * F:7 * F + 100]
    assert len(log) == 3
