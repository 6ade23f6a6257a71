"""Objects moved between repositories and objects valid but for one field: in-process tests
that the mutation run of ``format/`` sees (docs/security.md, "Mutation testing of the format").

- ``format/copy.py``: generations copied from one repository to another with its own keys,
  read back byte for byte, with the report a user reads (what was read, sent, skipped), the
  ids learned from an earlier copy, and the refusals of ``select`` and of another chunk size.
- sealed objects, manifests and records that are right in every field but one: each is
  refused with the cause named, and the right one reads back byte for byte.

Everything runs on real repositories in temporary folders; the command-line tests of the
same code (``test_copy.py``) run in subprocesses, which the mutation run does not see.
"""
from __future__ import annotations

import random

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from format.copy import CopyRefused, Copier, remap, select
from format.errors import GenerationNotFound, VMNotFound
from format.fixedindex import HOLE, Copies, FixedIndex
from format.manifest import DiskEntry, Manifest
from format.repository import Repository, chunk_name

CS = 64 << 10


def _repo(path, chunk_size: int = CS) -> Repository:
    Repository.init(path, PASSPHRASE, kdf=CHEAP_KDF, chunk_size=chunk_size)
    return Repository.open(path, PASSPHRASE)


def _disk_bytes(repo: Repository, manifest: Manifest, label: str) -> bytes:
    entry = manifest.disk(label)
    assert entry is not None
    index = repo.get_index(entry.index)
    return b"".join(index.assemble(n, repo.get_chunk) for n in range(index.count))


class _Source:
    """A source repository whose generations are built slot by slot, with the disk bytes each
    generation must read back as."""

    def __init__(self, path, seed: int = 1):
        self.repo = _repo(path)
        self.rng = random.Random(seed)
        self.images: dict[str, dict[str, bytes]] = {}      # manifest name -> label -> bytes

    def chunk(self, data: bytes) -> bytes:
        cid = self.repo.chunk_id(data)
        self.repo.put_chunk(cid, data)
        return cid

    def generation(self, vm: str, gen: str, t: int, slots: list[bytes | None], parent: str | None = None,
                   *, piece: bool = False, copies: bool = False, tail: int = 0) -> str:
        """A one-disk generation: ``slots`` (None: a hole), a last slot of ``tail`` bytes when
        given, a piece over slot 0 and a copy stream over its first bytes when asked."""
        capacity = len(slots) * CS + tail
        index = FixedIndex.empty(capacity, CS)
        image = bytearray(capacity)
        for n, data in enumerate(slots):
            if data is not None:
                index.set(n, self.chunk(data))
                image[n * CS:n * CS + len(data)] = data
        if tail:
            data = self.rng.randbytes(tail)
            index.set(len(slots), self.chunk(data))
            image[len(slots) * CS:] = data
        if piece:
            patch = self.rng.randbytes(300)
            index.set_pieces(0, [(100, 300, self.chunk(patch)), (1000, 24, None)])
            image[100:400] = patch
            image[1000:1024] = bytes(24)
        if copies:
            stream = bytes(image[0:5000])
            index.copies = Copies([(0, 5000)], [self.chunk(stream)], CS)
        manifest = Manifest(vm, gen, f"2026-01-0{t}T00:00:00Z", t, parent,
                            [DiskEntry("d0", capacity, CS, self.repo.put_index(index))],
                            metadata={"k": vm})
        name = self.repo.put_manifest(manifest)
        self.images[name] = {"d0": bytes(image)}
        return name


def _target_of(target: Repository, vm: str, gen: str) -> tuple[str, Manifest]:
    (hit,) = [(n, m) for n, m in target.manifests().items() if (m.vm, m.generation) == (vm, gen)]
    return hit


def test_copy_rebuilds_each_generation_in_the_target_byte_for_byte(tmp_path):
    src = _Source(tmp_path / "src")
    blocks = [src.rng.randbytes(CS) for _ in range(5)]
    g1 = src.generation("v", "g1", 1, [blocks[0], None, blocks[1]], piece=True, copies=True, tail=777)
    g2 = src.generation("v", "g2", 2, [blocks[0], blocks[2], blocks[1]], parent=g1)
    w1 = src.generation("w", "w1", 3, [blocks[3], blocks[0]])
    target = _repo(tmp_path / "dst")
    said: list[tuple[str, int, int]] = []
    names = select(src.repo, [], None)
    assert names == [g1, g2, w1]                              # oldest first, every VM
    report = Copier(src.repo, target, workers=1, progress=lambda *a: said.append(a)).copy(names)
    assert report.copied == [("v", "g1"), ("v", "g2"), ("w", "w1")] and report.skipped == []
    # g1: 3 base chunks (blocks 0, 1, the tail), the piece, the stream; g2: block 2; w1: block 3
    assert report.chunks_read == report.chunks_sent == 7 and report.chunks_present == 0
    sources = src.repo.manifests()
    sent_sizes = 0
    for name, (vm, gen) in zip(names, report.copied, strict=True):
        tname, copy = _target_of(target, vm, gen)
        original = sources[name]
        assert _disk_bytes(target, copy, "d0") == src.images[name]["d0"]
        assert (copy.time, copy.time_ns, copy.metadata) == (original.time, original.time_ns, original.metadata)
        assert copy.disks[0].index != original.disks[0].index      # the target's own ids
        t_index = target.get_index(copy.disks[0].index)
        s_index = src.repo.get_index(original.disks[0].index)
        assert [o for o, _c in t_index.references()] == [o for o, _c in s_index.references()]
        for _o, cid in t_index.references():
            assert not src.repo.has_chunk(cid)                 # another key, another name
    _, c1 = _target_of(target, "v", "g1")
    _, c2 = _target_of(target, "v", "g2")
    assert c2.parent == _target_of(target, "v", "g1")[0] and c1.parent is None
    t1 = target.get_index(c1.disks[0].index)
    assert t1.get(1) is None and t1.pieces(0)[1] == (1000, 24, None)     # holes stay holes
    assert t1.copies is not None and t1.copies.ranges == [(0, 5000)]
    for cid in {c for m in target.manifests().values()
                for _o, c in target.get_index(m.disks[0].index).references()}:
        sent_sizes += target.backend.size(chunk_name(cid))
    assert report.bytes_sent == sent_sizes
    assert said and said[-1][0] == "chunks" and all(done <= total for _l, done, total in said)
    assert [s for s in said if s[1] == s[2]]                  # each batch reported to its end

    again = Copier(src.repo, target).copy(select(src.repo, ["v"], None))
    assert again.copied == [] and again.chunks_read == again.chunks_sent == 0
    assert again.skipped == [("v", "g1", "already in the target"), ("v", "g2", "already in the target")]


def test_a_later_copy_reads_only_the_chunks_new_since_the_last(tmp_path):
    src = _Source(tmp_path / "src", seed=2)
    blocks = [src.rng.randbytes(CS) for _ in range(4)]
    g1 = src.generation("v", "g1", 1, [blocks[0], blocks[1], blocks[2]])
    target = _repo(tmp_path / "dst")
    Copier(src.repo, target).copy([g1])
    g2 = src.generation("v", "g2", 2, [blocks[0], blocks[3], blocks[2]], parent=g1)
    report = Copier(src.repo, target).copy(select(src.repo, ["v"], "latest"))
    assert report.copied == [("v", "g2")]
    assert (report.chunks_read, report.chunks_sent) == (1, 1)     # blocks 0 and 2 were learned
    assert _disk_bytes(target, _target_of(target, "v", "g2")[1], "d0") == src.images[g2]["d0"]


def test_chunks_the_target_holds_already_are_not_sent(tmp_path):
    src = _Source(tmp_path / "src", seed=3)
    a, b = src.rng.randbytes(CS), src.rng.randbytes(CS)
    g1 = src.generation("v", "g1", 1, [a, b])
    c = src.rng.randbytes(CS)
    g1 = src.generation("v", "g1b", 2, [a, b, c])
    target = _repo(tmp_path / "dst")
    for data in (a, c):
        target.put_chunk(target.chunk_id(data), data)        # the target has ``a`` and ``c`` of its own
    report = Copier(src.repo, target, verify=True).copy([g1])
    assert (report.chunks_read, report.chunks_sent, report.chunks_present) == (3, 1, 2)
    assert report.bytes_sent == target.backend.size(chunk_name(target.chunk_id(b)))
    assert _disk_bytes(target, _target_of(target, "v", "g1b")[1], "d0") == src.images[g1]["d0"]


def test_a_target_generation_of_the_same_name_is_not_overwritten(tmp_path):
    src = _Source(tmp_path / "src", seed=4)
    g1 = src.generation("v", "g1", 1, [src.rng.randbytes(CS)])
    target = _repo(tmp_path / "dst")
    other = Manifest("v", "g1", "2026-02-01T00:00:00Z", 9, None, [])
    name = target.put_manifest(other)
    g2 = src.generation("v", "g2", 2, [src.rng.randbytes(CS)])
    report = Copier(src.repo, target).copy([g1, g2])
    assert report.copied == [("v", "g2")] and report.chunks_read == 1
    assert report.skipped == [("v", "g1", "the target has another generation of that name")]
    assert target.manifests()[name] == other
    assert _disk_bytes(target, _target_of(target, "v", "g2")[1], "d0") == src.images[g2]["d0"]


def test_many_chunks_pass_through_a_bounded_window(tmp_path):
    src = _Source(tmp_path / "src", seed=5)
    slots = [src.rng.randbytes(CS // 8) + bytes(CS - CS // 8) for _ in range(11)]
    g1 = src.generation("v", "g1", 1, slots)
    target = _repo(tmp_path / "dst")
    said: list[tuple[str, int, int]] = []
    report = Copier(src.repo, target, workers=1, progress=lambda *a: said.append(a)).copy([g1])
    assert [done for _l, done, _t in said] == list(range(1, 12)) and {t for *_x, t in said} == {11}
    assert report.chunks_sent == 11
    assert _disk_bytes(target, _target_of(target, "v", "g1")[1], "d0") == src.images[g1]["d0"]


def test_copy_to_another_chunk_size_is_refused_naming_both(tmp_path):
    src = _repo(tmp_path / "src")
    target = _repo(tmp_path / "dst", chunk_size=2 * CS)
    with pytest.raises(CopyRefused) as info:
        Copier(src, target)
    assert str(info.value) == (f"the target's chunk size ({2 * CS}) differs from the source's ({CS}); "
                               f"create it with --chunk-size {CS}")


def test_select_names_what_it_cannot_find(tmp_path):
    src = _Source(tmp_path / "src", seed=6)
    data = src.rng.randbytes(CS)
    w1 = src.generation("w", "w1", 1, [data])
    v2 = src.generation("v", "g2", 3, [data])
    v1 = src.generation("v", "g1", 2, [data])
    assert select(src.repo, [], None) == [w1, v1, v2]
    assert select(src.repo, ["v"], "latest") == [v2]
    assert select(src.repo, ["v", "w"], "latest") == [w1, v2]
    assert select(src.repo, ["v"], "g1") == [v1]
    with pytest.raises(VMNotFound, match="no generations of 'x' in the source repository"):
        select(src.repo, ["x"], None)
    with pytest.raises(GenerationNotFound, match="v has no generation 'g9'"):
        select(src.repo, ["v"], "g9")


def test_remap_renames_every_reference_and_keeps_holes():
    index = FixedIndex.empty(3 * CS, CS)
    a, b, c, d = (bytes([k]) * 32 for k in (1, 2, 3, 4))
    index.set(0, a)
    index.set_pieces(2, [(0, 10, b), (10, 5, None)])
    index.copies = Copies([(0, 100), (CS, 100)], [c, HOLE], 150)
    new = remap(index, lambda cid: bytes([cid[0] + 16]) * 32)
    assert new.get(0) == bytes([17]) * 32 and new.get(1) is None and new.get(2) is None
    assert new.pieces(2) == ((0, 10, bytes([18]) * 32), (10, 5, None))
    assert new.copies is not None and new.copies.ids == [bytes([19]) * 32, HOLE]
    assert new.copies.ranges == [(0, 100), (CS, 100)] and new.copies.chunk_size == 150
    assert (new.capacity, new.chunk_size) == (3 * CS, CS)
    assert index.get(0) == a and d not in new.ids                # the original is left alone


# --- records kept beside the generations -------------------------------------------------------

def test_the_verification_record_says_which_chunks_are_due(tmp_path):
    from format import records, verified
    repo = _repo(tmp_path / "r")
    a, b, c = bytes([0x11]) * 32, bytes([0x11]) + bytes([0x22]) * 31, bytes([0x33]) * 32
    assert verified.load(repo) == {}
    verified.record(repo, [a, b], when_ns=1000)
    verified.record(repo, [a, c], when_ns=5000)
    seen = verified.load(repo)
    assert seen == {a[:8]: 5000, b[:8]: 1000, c[:8]: 5000}
    assert records.names(repo, verified.FOLDER) == ["11", "33"]
    assert records.get(repo, verified.FOLDER, "11", records.MAGIC_VERIFIED) == {       # docs/format.md 9.4
        "shard": "11", "chunks": sorted([[a[:8].hex(), 5000], [b[:8].hex(), 1000]])}
    assert verified.due(bytes([0x44]) * 32, seen, None, 10_000)              # never verified
    assert not verified.due(b, seen, None, 10_000)                           # verified: not again
    assert verified.due(b, seen, 8999, 10_000) and not verified.due(b, seen, 9000, 10_000)
    assert not verified.due(a, seen, 8999, 10_000)
    # malformed entries count as never verified; the newest of two entries for one id counts
    records.put(repo, verified.FOLDER, "44", records.MAGIC_VERIFIED, {"shard": "44", "chunks": [
        ["44" * 8, 9], ["zz", 1], ["44" * 8, 7], ["46" * 7, 1], ["55" * 8, 0], ["47" * 9, 1], [None, 1],
        ["48" * 8, "x"], ["49" * 8], "4a" * 8, 17, ["45" * 8, 2]]})
    records.put(repo, verified.FOLDER, "77", records.MAGIC_VERIFIED, {"shard": "77"})     # no chunks
    again = verified.load(repo)
    assert again[bytes([0x44]) * 8] == 9 and again[bytes([0x55]) * 8] == 0 and again[bytes([0x45]) * 8] == 2
    assert len(again) == 6                                    # a, b, c and those three
    repo.backend.put("verified/66", b"damaged")               # a damaged record: its chunks are due
    assert verified.load(repo) == again


def test_a_client_that_forgot_generations_itself_lowers_what_it_remembers(tmp_path):
    from format.security import KnownRepository
    known = KnownRepository(str(tmp_path / "sec"), "ab" * 8, str(tmp_path / "repo"))
    known.remember("web/01", 50, "g50")
    known.lower("web/01", (20, "g20"))
    assert known.latest("web/01") == (20, "g20")
    assert known.latest("other") is None
    known.remember("web/01", 30, "g30")
    assert known.latest("web/01") == (30, "g30")
    known.lower("web/01", None)
    assert known.latest("web/01") is None and known.snapshot() == {}
    known.lower("web/01", None)                               # nothing left to remove: fine
    known.lower("db", (7, "g7"))
    assert known.latest("db") == (7, "g7") and known.snapshot() == {"db": (7, "g7")}
    (tag,) = __import__("os").listdir(tmp_path / "sec" / ("ab" * 8) / "latest")
    assert len(tag) == 64 and "/" not in tag


def test_a_location_is_an_absolute_path_or_an_s3_address(tmp_path, monkeypatch):
    from format.location import is_remote, normalize
    monkeypatch.chdir(tmp_path)
    assert normalize("repo") == str(tmp_path / "repo") and normalize(tmp_path / "x") == str(tmp_path / "x")
    assert normalize("s3://bucket/p") == "s3://bucket/p" and is_remote("s3://b")
    assert not is_remote("s3:/b") and not is_remote("./s3://b")


def test_a_generation_needs_its_config_key_store_indexes_and_every_chunk(tmp_path):
    src = _Source(tmp_path / "src", seed=9)
    name = src.generation("v", "g", 1, [src.rng.randbytes(CS), None], piece=True, copies=True)
    manifest = src.repo.manifests()[name]
    objects = list(src.repo.generation_objects(manifest))
    index = src.repo.get_index(manifest.disks[0].index)
    assert objects[:3] == ["config", "keys/repokey", f"indexes/{manifest.disks[0].index[:2]}/{manifest.disks[0].index}"]
    assert objects[3:] == [chunk_name(cid) for _o, cid in index.references()] and len(objects) == 6
    assert all(src.repo.backend.exists(o) for o in objects)


# --- sealed objects valid but for one field -----------------------------------------------------

import io  # noqa: E402

import blake3  # noqa: E402
import zstandard  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from format.errors import CorruptObject, UnsupportedFormat  # noqa: E402
from format.keys import KeyMaterial  # noqa: E402
from format.sealed import (HEADER, MAGIC_CHUNK, MAGIC_INDEX, MAGIC_MANIFEST, MAX_PLAIN, Sealer,  # noqa: E402
                           worth_compressing)

SEALERS = {"aes": Sealer(KeyMaterial.generate(encrypted=True)), "none": Sealer(KeyMaterial.generate(encrypted=False))}
NAME = b"\x01" * 32


def _raw(kind: str, payload: bytes, *, magic: bytes = MAGIC_CHUNK, name: bytes = NAME, version: int = 1,
         compression: int = 0, cipher: int | None = None, reserved: int = 0, plain_len: int | None = None) -> bytes:
    """An object with any header fields, its tag right for them (made with the real key)."""
    sealer = SEALERS[kind]
    keys = sealer._keys
    cid = {"aes": 1, "none": 0}[kind] if cipher is None else cipher
    nonce = __import__("os").urandom(12) if kind == "aes" else bytes(12)
    header = HEADER.pack(magic, version, compression, cid, reserved,
                         len(payload) if plain_len is None else plain_len, len(payload), nonce)
    if kind == "aes":
        return header + AESGCM(keys.enc_key).encrypt(nonce, payload, header + name)
    return header + payload + blake3.blake3(header + name + payload).digest()


def _outcome(kind: str, data: bytes, *, name: bytes = NAME, max_plain: int = MAX_PLAIN,
             object_id: bytes | None = None, page: int = 1000) -> tuple[str, bytes | str]:
    """What ``open`` and ``open_pages`` make of ``data`` — they must agree: ("ok", the
    plaintext), ("CorruptObject", its reason) or ("UnsupportedFormat", its message)."""
    sealer = SEALERS[kind]
    outcomes: list[tuple[str, bytes | str]] = []
    for how in ("open", "pages"):
        try:
            if how == "open":
                got = sealer.open(MAGIC_CHUNK, name, data, "L", max_plain=max_plain)
                if object_id is not None and sealer.object_id(got) != object_id:
                    raise CorruptObject("L", "content does not match its id")
            else:
                got = b"".join(sealer.open_pages(MAGIC_CHUNK, name, io.BytesIO(data), len(data), "L",
                                                 object_id=object_id, max_plain=max_plain, page=page))
            outcomes.append(("ok", got))
        except CorruptObject as e:
            assert e.name == "L"
            # the library's words after "decompression failed (" differ between its two APIs
            reason = "decompression failed (…)" if e.reason.startswith("decompression failed (") else e.reason
            outcomes.append(("CorruptObject", reason))
        except UnsupportedFormat as e:
            outcomes.append(("UnsupportedFormat", str(e)))
    assert outcomes[0] == outcomes[1], outcomes
    return outcomes[0]


def _open_both(kind: str, data: bytes, **kw) -> bytes:
    what, value = _outcome(kind, data, **kw)
    assert what == "ok", value
    assert isinstance(value, bytes)
    return value


def _reason(kind: str, data: bytes, **kw) -> str:
    what, value = _outcome(kind, data, **kw)
    assert what != "ok"
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize("kind", ["aes", "none"])
@pytest.mark.parametrize("plain", [b"", b"x", bytes(5000), random.Random(3).randbytes(70_000),
                                   random.Random(4).randbytes(3000) * 40])
def test_a_sealed_object_reads_back_byte_for_byte(kind, plain):
    sealer = SEALERS[kind]
    sealed = bytes(sealer.seal(MAGIC_CHUNK, NAME, plain))
    head = HEADER.unpack_from(sealed)
    assert head[0] == MAGIC_CHUNK and head[1] == 1 and head[3] == {"aes": 1, "none": 0}[kind] and head[4] == 0
    assert head[5] == len(plain) and len(sealed) == HEADER.size + head[6] + {"aes": 16, "none": 32}[kind]
    assert (head[7] == bytes(12)) == (kind == "none")
    compressible = plain and len(zstandard.ZstdCompressor().compress(plain)) < len(plain) * 0.9
    assert head[2] == (1 if compressible else 0)
    assert _open_both(kind, sealed, object_id=sealer.object_id(plain)) == plain
    assert sealer.encrypted == (kind == "aes")


@pytest.mark.parametrize("kind", ["aes", "none"])
def test_each_header_field_is_checked(kind):
    tag_error = {"aes": "authentication failed", "none": "integrity tag mismatch"}[kind]
    other_cipher = {"aes": 0, "none": 1}[kind]
    assert _open_both(kind, _raw(kind, b"abc")) == b"abc"
    assert _reason(kind, _raw(kind, b"abc", magic=MAGIC_INDEX)) == "bad magic b'RFIX'"
    assert _reason(kind, _raw(kind, b"abc", version=2)) == "object L has format version 2"
    assert _reason(kind, _raw(kind, b"abc", version=0)) == "object L has format version 0"
    assert _reason(kind, _raw(kind, b"abc", compression=2)) == "unknown compression 2"
    assert _reason(kind, _raw(kind, b"abc", cipher=other_cipher)) == \
        f"sealed with cipher {other_cipher}, repository uses {1 - other_cipher}"
    assert _reason(kind, _raw(kind, b"abc", reserved=1)) == "reserved header byte is 1, not 0"
    assert _reason(kind, _raw(kind, b"abc", plain_len=4)) == "plaintext length does not match its header"
    assert _reason(kind, _raw(kind, b"abc", plain_len=2)) == "plaintext length does not match its header"
    assert _open_both(kind, _raw(kind, b"abc"), max_plain=3) == b"abc"
    assert _reason(kind, _raw(kind, b"abc"), max_plain=2) == "plaintext length 3 exceeds 2"
    good = _raw(kind, b"abc")
    assert _reason(kind, good + b"\0") == f"size {len(good) + 1} does not match its header"
    assert _reason(kind, good[:-1]) == f"size {len(good) - 1} does not match its header"
    assert _reason(kind, good[:HEADER.size - 1]) == "shorter than its header"
    assert _reason(kind, good, name=b"\x02" * 32) == tag_error
    for at in (HEADER.size, len(good) - 1, 30):                # payload, tag, nonce
        flipped = bytearray(good)
        flipped[at] ^= 1
        assert _reason(kind, bytes(flipped)) == tag_error
    assert _reason(kind, good, object_id=b"\0" * 32) == "content does not match its id"


@pytest.mark.parametrize("kind", ["aes", "none"])
def test_a_zstd_payload_must_declare_the_headers_length(kind):
    plain = b"compressible " * 500
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(plain)
    assert _open_both(kind, _raw(kind, frame, compression=1, plain_len=len(plain))) == plain
    assert _reason(kind, _raw(kind, frame, compression=1, plain_len=len(plain) - 1)) == \
        f"zstd frame declares {len(plain)} bytes, header {len(plain) - 1}"
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(plain)
    assert _reason(kind, _raw(kind, unsized, compression=1, plain_len=len(plain))).startswith("zstd frame declares ")
    assert _reason(kind, _raw(kind, b"not a frame at all", compression=1, plain_len=5)) == "payload is not a zstd frame"
    broken = bytearray(frame)
    broken[-5:] = b"\xff" * 5
    assert _reason(kind, _raw(kind, bytes(broken), compression=1, plain_len=len(plain))) == \
        "decompression failed (…)"


def test_pages_of_a_long_object_are_at_most_a_page():
    sealer = SEALERS["aes"]
    for plain in (random.Random(5).randbytes(9000), b"z" * 9000):
        sealed = bytes(sealer.seal(MAGIC_MANIFEST, b"m", plain))
        pages = list(sealer.open_pages(MAGIC_MANIFEST, b"m", io.BytesIO(sealed), len(sealed), "L", page=1000))
        assert b"".join(pages) == plain and all(0 < len(p) <= 1000 for p in pages) and len(pages) >= 9
    sealed = bytes(sealer.seal(MAGIC_MANIFEST, b"m", b"q" * 10))
    with pytest.raises(CorruptObject) as info:
        list(sealer.open_pages(MAGIC_MANIFEST, b"m", io.BytesIO(sealed[:-20]), len(sealed), "L"))
    assert (info.value.name, info.value.reason) == ("L", "shorter than its header says")
    with pytest.raises(CorruptObject) as info:                         # the tag cut off
        list(sealer.open_pages(MAGIC_MANIFEST, b"m", io.BytesIO(sealed[:-1]), len(sealed), "L"))
    assert (info.value.name, info.value.reason) == ("L", "authentication failed")


def test_only_what_compresses_is_compressed():
    rng = random.Random(8)
    assert worth_compressing(rng.randbytes(1000))                     # small objects are tried whole
    assert worth_compressing(rng.randbytes(64 * 1024 - 1))
    assert not worth_compressing(rng.randbytes(64 * 1024))
    assert worth_compressing(bytes(64 * 1024))
    mostly = bytearray(rng.randbytes(1 << 20))
    for k in range(8):                                                # the sample spans the whole
        start = k * (len(mostly) // 8)
        mostly[start:start + 4096] = bytes(4096)
    assert worth_compressing(bytes(mostly))
    sealer = SEALERS["none"]
    noise = rng.randbytes(200_000)
    assert HEADER.unpack_from(sealer.seal(MAGIC_CHUNK, NAME, noise))[2] == 0
    assert HEADER.unpack_from(sealer.seal(MAGIC_CHUNK, NAME, bytes(200_000)))[2] == 1
    assert HEADER.unpack_from(sealer.seal(MAGIC_CHUNK, NAME, rng.randbytes(100)))[2] == 0   # zstd would grow it


def test_object_ids_are_the_keyed_hash_of_the_content():
    a, b = SEALERS["aes"], SEALERS["none"]
    assert a.object_id(b"x") == blake3.blake3(b"x", key=a._keys.id_key).digest()
    assert a.object_id(b"x") != b.object_id(b"x") and len(a.object_id(memoryview(b"x"))) == 32


# --- manifests valid but for one field ----------------------------------------------------------

import json  # noqa: E402

_DISK = {"label": "d0", "capacity": 4096, "chunk_size": 4096, "index": "0a" * 32, "data_bytes": 1,
         "new_bytes": 2, "new_chunks": 3, "source": {"path": "x"}}
_DOC = {"format": 1, "vm": "v", "generation": "g", "time": "t", "time_ns": 5, "parent": None,
        "disks": [_DISK], "metadata": {"m": 1}, "written_ns": 9}


def _decoded(**changes):
    doc = json.loads(json.dumps(_DOC))
    disk_changes = changes.pop("disk", {})
    doc.update(changes)
    for key, value in disk_changes.items():
        if value is _DROP:
            del doc["disks"][0][key]
        else:
            doc["disks"][0][key] = value
    for key in [k for k, v in doc.items() if v is _DROP]:
        del doc[key]
    return Manifest.decode(json.dumps(doc).encode(), "manifests/ab")


_DROP = object()


def test_a_manifest_reads_back_field_for_field():
    m = _decoded()
    assert m == Manifest("v", "g", "t", 5, None, [DiskEntry("d0", 4096, 4096, "0a" * 32, 1, 2, 3, {"path": "x"})],
                         {"m": 1}, 9)
    assert m.written == 9 and m.disk("d0") is m.disks[0] and m.disk("d1") is None
    assert _decoded(written_ns=_DROP).written == 5 and _decoded(written_ns=None).written == 5
    assert json.loads(m.encode()) == _DOC
    assert m.encode() == json.dumps(_DOC, sort_keys=True, separators=(",", ":")).encode()
    old = _decoded(written_ns=_DROP)
    assert b"written_ns" not in old.encode() and Manifest.decode(old.encode(), "x") == old
    assert _decoded(time_ns=(1 << 63) - 1, parent="p", disks=[]).time_ns == (1 << 63) - 1
    defaults = _decoded(disk={"data_bytes": _DROP, "new_bytes": _DROP, "new_chunks": _DROP, "source": _DROP})
    assert defaults.disks[0] == DiskEntry("d0", 4096, 4096, "0a" * 32)


@pytest.mark.parametrize("data", [b"", b"nul", b"[]", b"[1]", b'"s"', b"{}", b'{"vm": "v"}', b"[" * 100000])
def test_what_is_not_a_manifest_object_is_refused(data):
    from format.errors import CorruptObject
    with pytest.raises(CorruptObject) as info:
        Manifest.decode(data, "manifests/ab")
    assert (info.value.name, info.value.reason) == ("manifests/ab", "manifest is not a JSON object with a format")


@pytest.mark.parametrize("fmt, shown", [(2, "2"), (0, "0"), ("1", "1"), (True, "True"), (1.0, "1.0"),
                                        ("x" * 30, "x" * 20), (None, "None")])
def test_another_manifest_format_is_unsupported(fmt, shown):
    from format.errors import UnsupportedFormat
    with pytest.raises(UnsupportedFormat) as info:
        _decoded(format=fmt)
    assert str(info.value) == f"manifest manifests/ab has format {shown}"


@pytest.mark.parametrize("changes", [
    {"disks": _DROP}, {"vm": _DROP}, {"extra": 1}, {"disk": {"extra": 1}}, {"disk": {"label": _DROP}},
    {"disks": [5]}, {"disks": 5},
])
def test_a_manifest_without_its_fields_is_malformed(changes):
    from format.errors import CorruptObject
    with pytest.raises(CorruptObject) as info:
        _decoded(**changes)
    assert (info.value.name, info.value.reason) == ("manifests/ab", "manifest fields are malformed")


def test_a_file_in_manifests_that_is_not_one_costs_nothing_else(tmp_path, caplog):
    src = _Source(tmp_path / "src", seed=13)
    src.repo.backend.put("manifests/000-not-a-manifest", b"x")           # sorts first
    src.repo.backend.put("manifests/001-not-one-either", b"x")
    name = src.generation("v", "g", 1, [src.rng.randbytes(CS)])
    fresh = Repository.open(tmp_path / "src", PASSPHRASE)
    with caplog.at_level("WARNING"):
        assert list(fresh.manifests()) == [name]
        assert list(fresh.manifests()) == [name]
    # one line per such file, once per repository opened, naming it
    assert [r.getMessage() for r in caplog.records] == [
        f"repofs: warning: manifests/{n!r} is not a manifest name; ignored (see `repofs check`)"
        for n in ("000-not-a-manifest", "001-not-one-either")]


@pytest.mark.parametrize("changes", [
    {"vm": 1}, {"generation": None}, {"time": 5}, {"time_ns": -1}, {"time_ns": 1 << 63}, {"time_ns": True},
    {"time_ns": 5.0}, {"time_ns": "5"}, {"parent": 5}, {"metadata": []}, {"metadata": None},
    {"disk": {"label": 1}}, {"disk": {"capacity": -1}}, {"disk": {"capacity": 1 << 63}},
    {"disk": {"chunk_size": 0}}, {"disk": {"chunk_size": -4096}}, {"disk": {"chunk_size": 4096.0}},
    {"disk": {"index": "0a" * 31}}, {"disk": {"index": "0a" * 32 + "0"}}, {"disk": {"index": "0A" * 32}},
    {"disk": {"index": "0g" * 32}}, {"disk": {"index": "X" * 64}}, {"disk": {"index": 5}}, {"disk": {"data_bytes": -1}},
    {"disk": {"new_bytes": "2"}}, {"disk": {"new_chunks": None}}, {"disk": {"source": []}},
    {"disks": [_DISK, _DISK]},
])
def test_a_manifest_field_of_the_wrong_type_or_range_is_refused(changes):
    from format.errors import CorruptObject
    with pytest.raises(CorruptObject) as info:
        _decoded(**changes)
    assert (info.value.name, info.value.reason) == ("manifests/ab", "manifest fields have the wrong types or ranges")


def test_two_disks_with_their_own_labels_are_fine():
    m = _decoded(disks=[_DISK, dict(_DISK, label="d1", index="f" * 64, capacity=0)])
    assert [d.label for d in m.disks] == ["d0", "d1"] and m.disk("d1").capacity == 0
    assert _decoded(disk={"chunk_size": 1}).disks[0].chunk_size == 1      # odd, but of the right type


# --- the key derived ahead ----------------------------------------------------------------------

def _join_derivations() -> None:
    import threading
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name == "kdf-ahead":
            thread.join()


def test_a_key_derived_ahead_saves_the_derivation_once_and_only_for_its_inputs(monkeypatch):
    """What derive_ahead buys is one Argon2id run fewer on the command's path; counted here
    as runs of the derivation (never as time)."""
    from format import keys
    material = KeyMaterial.generate(True)
    store = keys.wrap(material, "rid", b"right", CHEAP_KDF)
    other = keys.wrap(material, "rid", b"right", dict(CHEAP_KDF, time_cost=2))
    runs: list[tuple[bytes, tuple[int, int, int]]] = []
    real = keys._argon2id

    def counted(passphrase, params, salt):
        runs.append((passphrase, params))
        return real(passphrase, params, salt)
    monkeypatch.setattr(keys, "_argon2id", counted)
    monkeypatch.setattr(keys, "_ahead", None)
    keys.derive_ahead(store, b"right")
    keys.derive_ahead(store, b"right")                     # already under way: not twice
    assert keys.unwrap(store, "rid", b"right") == material
    _join_derivations()
    assert runs == [(b"right", (1, 8192, 1))]
    assert keys.unwrap(store, "rid", b"right") == material   # used once: derived again
    assert len(runs) == 2
    for ahead, doc, params in [(b"wrong", store, (1, 8192, 1)), (b"right", other, (2, 8192, 1))]:
        runs.clear()
        keys.derive_ahead(doc, ahead)
        assert keys.unwrap(store, "rid", b"right") == material
        _join_derivations()
        assert sorted(runs) == sorted([(ahead, params), (b"right", (1, 8192, 1))])
    runs.clear()
    plain = keys.wrap(KeyMaterial.generate(False), "rid", None)
    for doc in (plain, b"not a key store", b"{}"):
        keys.derive_ahead(doc, b"right")
    _join_derivations()
    assert runs == []

    def failing(passphrase, params, salt):
        runs.append((passphrase, params))
        if len(runs) == 1:
            raise MemoryError("no memory for the derivation ahead")
        return real(passphrase, params, salt)
    monkeypatch.setattr(keys, "_argon2id", failing)
    keys.derive_ahead(store, b"right")
    assert keys.unwrap(store, "rid", b"right") == material  # the failure ahead: derived again
    assert len(runs) == 2


def test_the_boot_tag_is_a_hash_of_the_boot_id():
    import hashlib
    from format import writerlock
    with open("/proc/sys/kernel/random/boot_id", "rb") as f:
        boot_id = f.read()
    assert writerlock._boot_tag() == hashlib.sha256(boot_id.strip()).hexdigest()[:16] == writerlock.BOOT
    assert boot_id.strip().decode() not in writerlock.BOOT


def test_an_unencrypted_repository_takes_no_passphrase(tmp_path):
    Repository.init(tmp_path / "plain", None, encrypted=False, chunk_size=CS)
    repo = Repository.open(tmp_path / "plain", None)
    with pytest.raises(UnsupportedFormat) as info:
        repo.add_key(b"a passphrase", CHEAP_KDF)
    assert str(info.value) == "an unencrypted repository has no passphrases"
    from format.keys import KeySlot
    store = repo.key_store()
    with pytest.raises(UnsupportedFormat) as info:        # a slot made elsewhere is refused too
        store.add(KeySlot("ab12cd34", dict(CHEAP_KDF), bytes(16), bytes(12), bytes(48)))
    assert str(info.value) == "an unencrypted repository has no passphrases" and store.slots == []


def test_a_target_generation_that_only_looks_like_a_copy_teaches_nothing(tmp_path):
    src = _Source(tmp_path / "src", seed=11)
    blocks = [src.rng.randbytes(CS) for _ in range(3)]
    g1 = src.generation("v", "g1", 1, [blocks[0], blocks[1]])
    target = _repo(tmp_path / "dst")
    # the target has a generation of the same VM, name and time, of another shape: not a copy
    other = FixedIndex.empty(3 * CS, CS)
    junk = src.rng.randbytes(CS)
    other.set(0, target.chunk_id(junk))
    target.put_chunk(target.chunk_id(junk), junk)
    target.put_manifest(Manifest("v", "g1", "2026-01-01T00:00:00Z", 1, None,
                                 [DiskEntry("d0", 3 * CS, CS, target.put_index(other))]))
    g2 = src.generation("v", "g2", 2, [blocks[0], blocks[2]], parent=g1)
    report = Copier(src.repo, target).copy([g1, g2])
    assert report.copied == [("v", "g2")] and report.skipped == [("v", "g1", "already in the target")]
    assert report.chunks_read == 2                                     # nothing was learned
    assert _disk_bytes(target, _target_of(target, "v", "g2")[1], "d0") == src.images[g2]["d0"]


def test_a_target_that_shares_the_sources_keys_needs_no_reading(tmp_path):
    """A repository copied as files (rsync off site) names chunks as the source does."""
    import shutil
    src = _Source(tmp_path / "src", seed=12)
    a, b, c = (src.rng.randbytes(CS) for _ in range(3))
    src.generation("v", "g1", 1, [a, b])
    shutil.copytree(tmp_path / "src", tmp_path / "dst")
    g2 = src.generation("v", "g2", 2, [a, c])
    target = Repository.open(tmp_path / "dst", PASSPHRASE)
    copier = Copier(src.repo, target)
    assert copier.same_ids
    report = copier.copy(select(src.repo, ["v"], None))
    assert report.copied == [("v", "g2")] and report.skipped == [("v", "g1", "already in the target")]
    assert (report.chunks_present, report.chunks_read, report.chunks_sent) == (1, 1, 1)
    copy = _target_of(target, "v", "g2")[1]
    assert copy.disks[0].index == src.repo.manifests()[g2].disks[0].index          # the same index
    assert _disk_bytes(target, copy, "d0") == src.images[g2]["d0"]


def test_a_third_generation_of_the_same_second_gets_the_next_number(tmp_path):
    repo = _repo(tmp_path / "r")
    when = 1_767_225_600 * 10**9
    assert repo.new_generation_name("v", when) == "2026-01-01T000000Z"
    repo.put_manifest(Manifest("v", "2026-01-01T000000Z", "t", when, None, []))
    assert repo.new_generation_name("v", when) == "2026-01-01T000000Z.1"


def test_a_lease_not_renewed_in_time_says_so(tmp_path):
    from format.leases import SKEW_NS, LeaseLost
    repo = _repo(tmp_path / "r")
    lease = repo.lease("backup")
    lease.renewed_ns = __import__("time").time_ns() - (lease.ttl_ns - SKEW_NS) - 10**9
    with pytest.raises(LeaseLost) as info:
        lease.assert_held()
    assert str(info.value) == ("this process could not renew its lease on the repository in time; "
                               "nothing was committed")


def test_a_key_store_says_why_it_does_not_open():
    from format import keys
    from format.errors import KeyStoreInvalid, WrongPassphrase
    material = KeyMaterial.generate(True)
    store = keys.wrap(material, "rid", b"right", CHEAP_KDF)
    for given, words in [(b"wrong", "wrong passphrase"),
                         (None, "this repository is encrypted and no passphrase was given")]:
        with pytest.raises(WrongPassphrase) as info:
            keys.unwrap(store, "rid", given)
        assert str(info.value) == words
    plain = keys.unwrap(keys.wrap(KeyMaterial.generate(False), "rid", None), "rid", None)
    assert (plain.cipher, plain.enc_key) == ("none", None) and len(plain.id_key) == 32
    with pytest.raises(KeyStoreInvalid) as info:
        keys.KeySlot.from_json({"id": "ab"})
    assert str(info.value) == "a key slot is malformed"


def test_an_index_that_is_not_its_id_or_not_an_id_is_named(tmp_path):
    from format.errors import CorruptObject
    from format.sealed import MAGIC_INDEX
    repo = _repo(tmp_path / "r")
    with pytest.raises(CorruptObject) as info:
        repo.get_index("zz" * 32)
    assert (info.value.name, info.value.reason) == (f"indexes/zz/{'zz' * 32}", "malformed index id")
    plain = FixedIndex.empty(CS, CS).encode()
    other = "ab" * 32
    repo.backend.put(f"indexes/ab/{other}", repo.sealer.seal(MAGIC_INDEX, bytes.fromhex(other), plain))
    with pytest.raises(CorruptObject) as info:
        repo.get_index(other)
    assert (info.value.name, info.value.reason) == (f"indexes/ab/{other}", "content does not match its id")
    repo.backend.put(f"indexes/ab/{other}", b"x" * 100)
    with pytest.raises(CorruptObject) as info:
        repo.get_index(other)
    assert info.value.name == f"indexes/ab/{other}"


def test_each_damaged_manifest_is_warned_about_once(tmp_path, caplog):
    src = _Source(tmp_path / "src", seed=14)
    good = src.generation("v", "g", 1, [src.rng.randbytes(CS)])
    for name in ("ab" * 16, "cd" * 16):
        src.repo.backend.put(f"manifests/{name}", b"damaged" * 10)
    fresh = Repository.open(tmp_path / "src", PASSPHRASE)
    with caplog.at_level("WARNING"):
        assert list(fresh.manifests()) == [good]
        assert list(fresh.manifests()) == [good]
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(said) == 2 and any("ab" * 16 in s for s in said) and any("cd" * 16 in s for s in said)


@pytest.mark.parametrize("kind", ["aes", "none"])
def test_an_index_may_be_version_2_and_nothing_else_may(kind):
    """Version 2 exists for indexes alone (a copy table with gaps, which readers before it
    cannot follow): an index of version 1 or 2 opens, version 3 is unsupported, as is a chunk
    or a manifest of version 2; a sealer refuses to write a version it does not have."""
    sealer = SEALERS[kind]
    for version in (1, 2):
        data = _raw(kind, b"abc", magic=MAGIC_INDEX, version=version)
        assert sealer.open(MAGIC_INDEX, NAME, data, "L") == b"abc"
        assert b"".join(sealer.open_pages(MAGIC_INDEX, NAME, io.BytesIO(data), len(data), "L")) == b"abc"
    with pytest.raises(UnsupportedFormat, match="format version 3"):
        sealer.open(MAGIC_INDEX, NAME, _raw(kind, b"abc", magic=MAGIC_INDEX, version=3), "L")
    with pytest.raises(UnsupportedFormat, match="format version 2"):
        sealer.open(MAGIC_MANIFEST, NAME, _raw(kind, b"abc", magic=MAGIC_MANIFEST, version=2), "L")
    oid, sealed = sealer.seal_parts(MAGIC_INDEX, 3, [b"abc"], version=2)
    assert sealed[4] == 2 and sealer.open(MAGIC_INDEX, oid, bytes(sealed), "L") == b"abc"
    with pytest.raises(ValueError):
        sealer.seal_parts(MAGIC_INDEX, 3, [b"abc"], version=3)
