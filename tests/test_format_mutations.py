"""Tests that each kill one mutation of format/ that the rest of the suite let live: objects
valid in every byte but one field (sealed with the real key, so the tag is right), and the
durability order of the backend seen from outside the process (strace)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from format.check import check
from format.errors import CorruptObject, UnsupportedFormat
from format.fixedindex import HEADER as INDEX_HEADER, HOLE, PIECE, SLOT_HEADER, COUNT, Copies, FixedIndex
from format.keys import KeyMaterial
from format.manifest import Manifest
from format.repository import Repository, chunk_name, manifest_name
from format.sealed import HEADER, MAGIC_CHUNK, Sealer

KEYS = KeyMaterial.generate(encrypted=True)
SEALER = Sealer(KEYS)


def seal_raw(magic: bytes, name: bytes, payload: bytes, *, version: int = 1, compression: int = 0,
             plain_len: int | None = None, keys: KeyMaterial = KEYS, reserved: int = 0) -> bytes:
    """A sealed object with any header fields, authenticated with the real key."""
    nonce = os.urandom(12)
    header = HEADER.pack(magic, version, compression, 1, reserved,
                         len(payload) if plain_len is None else plain_len, len(payload), nonce)
    return header + AESGCM(keys.enc_key).encrypt(nonce, payload, header + name)


def test_seal_raw_builds_what_the_sealer_opens():
    assert SEALER.open(MAGIC_CHUNK, b"n", seal_raw(MAGIC_CHUNK, b"n", b"abc"), "x") == b"abc"


def test_another_object_version_is_refused_even_with_a_valid_tag():
    with pytest.raises(UnsupportedFormat, match="version 2"):
        SEALER.open(MAGIC_CHUNK, b"n", seal_raw(MAGIC_CHUNK, b"n", b"abc", version=2), "x")


def test_unknown_compression_is_refused():
    with pytest.raises(CorruptObject, match="compression"):
        SEALER.open(MAGIC_CHUNK, b"n", seal_raw(MAGIC_CHUNK, b"n", b"abc", compression=7), "x")


def test_a_reserved_header_byte_that_is_not_zero_is_refused():
    # authenticated with the real key: only the reader's own check can refuse it
    with pytest.raises(CorruptObject, match="reserved"):
        SEALER.open(MAGIC_CHUNK, b"n", seal_raw(MAGIC_CHUNK, b"n", b"abc", reserved=1), "x")


def test_zstd_frame_declaring_more_than_the_header_is_refused_before_decompressing():
    # 512 MiB of zeros compress to a few KiB; an authenticated object that declares 3 bytes
    # must not make the reader allocate 512 MiB first.
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 20))
    big = bytearray(frame)
    declared = zstandard.get_frame_parameters(frame).content_size
    assert declared == 1 << 20
    obj = seal_raw(MAGIC_CHUNK, b"n", bytes(big), compression=1, plain_len=3)
    with pytest.raises(CorruptObject, match="declares"):
        SEALER.open(MAGIC_CHUNK, b"n", obj, "x")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 100)
    with pytest.raises(CorruptObject, match="declares"):
        SEALER.open(MAGIC_CHUNK, b"n", seal_raw(MAGIC_CHUNK, b"n", unsized, compression=1, plain_len=100), "x")


def test_plain_length_above_the_callers_bound_is_refused():
    obj = seal_raw(MAGIC_CHUNK, b"n", b"a" * 100)
    assert SEALER.open(MAGIC_CHUNK, b"n", obj, "x", max_plain=100) == b"a" * 100
    with pytest.raises(CorruptObject, match="exceeds"):
        SEALER.open(MAGIC_CHUNK, b"n", obj, "x", max_plain=99)


def test_chunk_ids_are_keyed():
    data = b"the same bytes"
    assert SEALER.object_id(data) == blake3.blake3(data, key=KEYS.id_key).digest()
    assert SEALER.object_id(data) != blake3.blake3(data).digest()
    assert Sealer(KeyMaterial.generate(True)).object_id(data) != SEALER.object_id(data)


@pytest.fixture
def repo(tmp_path):
    return Repository.init(tmp_path / "r", b"pw", kdf={"name": "argon2id", "time_cost": 1,
                                                      "memory_kib": 8, "parallelism": 1})


def test_a_chunk_whose_content_is_not_its_id_is_refused(repo):
    good = b"A" * 5000
    cid = repo.chunk_id(good)
    # validly sealed under the chunk's name, but holding other bytes
    repo.backend.put(chunk_name(cid), repo.sealer.seal(MAGIC_CHUNK, cid, b"B" * 5000))
    with pytest.raises(CorruptObject, match="does not match its id"):
        repo.get_chunk(cid)


def _index_bytes(capacity: int, chunk_size: int, count: int | None = None, patches: bytes = b"") -> bytes:
    n = -(-capacity // chunk_size)
    flags = 1 if patches else 0
    return INDEX_HEADER.pack(capacity, chunk_size, flags, n if count is None else count) + \
        bytes(32 * n) + patches


def test_index_entry_count_must_match_its_capacity():
    FixedIndex.decode(_index_bytes(10 << 20, 1 << 20), "i")
    with pytest.raises(CorruptObject, match="inconsistent"):
        FixedIndex.decode(_index_bytes(10 << 20, 1 << 20, count=11) + bytes(32), "i")
    with pytest.raises(CorruptObject, match="inconsistent"):
        FixedIndex.decode(_index_bytes(10 << 20, 1 << 20, count=9)[:-32], "i")


def _one_piece(slot: int, off: int, length: int) -> bytes:
    return COUNT.pack(1) + SLOT_HEADER.pack(slot, 1, 0) + PIECE.pack(off, length, b"\x01" * 32)


@pytest.mark.parametrize("off,length", [(0, 0xFFFFFFFF), (0xFFFFFFFF, 1), (0x80000000, 0x80000000)])
def test_piece_fields_are_unsigned_and_bounded(off, length):
    with pytest.raises(CorruptObject, match="outside"):
        FixedIndex.decode(_index_bytes(4 << 20, 1 << 20, patches=_one_piece(0, off, length)), "i")


def test_a_piece_may_not_run_past_a_short_last_slot():
    capacity = (3 << 20) + 8192                     # last slot: 8 KiB
    ok = FixedIndex.decode(_index_bytes(capacity, 1 << 20, patches=_one_piece(3, 4096, 4096)), "i")
    assert ok.pieces(3) == ((4096, 4096, b"\x01" * 32),)
    with pytest.raises(CorruptObject, match="outside"):
        FixedIndex.decode(_index_bytes(capacity, 1 << 20, patches=_one_piece(3, 4096, 8192)), "i")


def test_a_copy_stream_chunk_of_the_wrong_length_is_an_error_not_a_short_read():
    copies = Copies([(0, 5000), (1 << 20, 3000)], [b"\x02" * 32, b"\x03" * 32], 4096)
    fetched = {b"\x02" * 32: b"x" * 4096, b"\x03" * 32: b"y" * 3904}
    assert copies.read(0, 5000, lambda k: copies.chunk(k, fetched.get)) == b"x" * 4096 + b"y" * 904
    fetched[b"\x03" * 32] = b"y" * 100
    with pytest.raises(CorruptObject, match="holds 100 bytes"):
        copies.read(0, 5000, lambda k: copies.chunk(k, fetched.get))
    assert copies.chunk(0, lambda cid: None) is None          # not at hand is not an error
    hole = Copies([(0, 10)], [HOLE], 4096)
    assert hole.chunk(0, lambda cid: pytest.fail("a hole is never fetched")) == bytes(10)


def test_check_matches_each_index_to_its_manifest_entry(repo):
    index = FixedIndex.empty(4 << 20, repo.chunk_size)
    data = b"z" * repo.chunk_size
    cid = repo.chunk_id(data)
    repo.put_chunk(cid, data)
    index.set(0, cid)
    iid = repo.put_index(index)
    from format.manifest import DiskEntry
    for capacity, chunk_size, bad in [(4 << 20, repo.chunk_size, False), (8 << 20, repo.chunk_size, True),
                                      (4 << 20, repo.chunk_size // 2, True)]:
        m = Manifest("vm", f"g{capacity}-{chunk_size}", "t", 1, None,
                     [DiskEntry("d", capacity, chunk_size, iid)])
        name = repo.put_manifest(m)
        report = check(repo)
        assert any("capacity or chunk size" in p.reason for p in report.problems) == bad
        repo.backend.delete(manifest_name(name))
        repo._manifests.clear()


# -- durability order -------------------------------------------------------------------------

PUT = textwrap.dedent("""
    import sys
    from format.backend import LocalBackend
    b = LocalBackend(sys.argv[1])
    b.put("chunks/ab/object", b"x" * 100)
""")


def _durability_events(script: str, tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    """Run ``script`` (a LocalBackend at the folder given as its argument) under strace: the
    store's root and its fsyncs (fdatasync counted as fsync), syncfs calls and renames, in
    order, each with the path it was about."""
    root = tmp_path / "store"
    root.mkdir()
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-o", str(trace), "-e",
                    "trace=openat,fsync,fdatasync,syncfs,rename,renameat,renameat2",
                    sys.executable, "-c", script, str(root)], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    fd_names: dict[str, str] = {}
    events = []
    for line in trace.read_text().splitlines():
        m = re.search(r'openat\(AT_FDCWD, "([^"]+)", [^)]*\) += (\d+)', line)
        if m:
            fd_names[m.group(2)] = m.group(1)
            continue
        m = re.search(r"\b(fsync|fdatasync|syncfs)\((\d+)\) += 0", line)
        if m:
            kind = "syncfs" if m.group(1) == "syncfs" else "fsync"
            events.append((kind, fd_names.get(m.group(2), "?")))
            continue
        m = re.search(r'rename\w*\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)"', line)
        if m:
            events.append(("rename", m.group(2)))
    return root, events


def test_put_fsyncs_the_file_before_rename_and_the_folder_after(tmp_path):
    root, events = _durability_events(PUT, tmp_path)
    final = str(root / "chunks" / "ab" / "object")
    rename = events.index(("rename", final))
    tmp_syncs = [i for i, (kind, name) in enumerate(events)
                 if kind == "fsync" and name.startswith(final + ".") and name.endswith(".tmp")]
    dir_syncs = [i for i, e in enumerate(events) if e == ("fsync", str(root / "chunks" / "ab"))]
    assert tmp_syncs and max(tmp_syncs) < rename, events
    assert dir_syncs and max(dir_syncs) > rename, events


DEFERRED = textwrap.dedent("""
    import sys
    from format.backend import LocalBackend
    b = LocalBackend(sys.argv[1])
    b.put("chunks/cd/one", b"x" * 100, sync=False)       # folder cd made, its entry not synced
    b.put("chunks/ef/one", b"x" * 100, sync=False)
    b.sync()                                              # syncfs: both folders durable
    b.put("chunks/ef/two", b"x" * 100)                    # no fsync of chunks needed for ef
    b.put("chunks/0a/one", b"x" * 100, sync=False)
    b.put("chunks/0a/two", b"x" * 100)                    # durable put into an unsynced folder
""")


def test_folders_made_for_deferred_writes_are_made_durable_by_sync_or_the_first_durable_put(tmp_path):
    """A first backup makes the 256 folders of chunks with writes that are synced together at
    the end (syncfs): no fsync of ``chunks`` per folder then. A durable put into such a folder
    before that sync fsyncs ``chunks`` first, so its object's path is durable when it returns."""
    root, events = _durability_events(DEFERRED, tmp_path)
    chunks = str(root / "chunks")
    syncfs = events.index(("syncfs", str(root)))
    parent_syncs = [i for i, e in enumerate(events) if e == ("fsync", chunks)]
    # none before the syncfs (two folders made without one); then exactly one, for 0a, before
    # the durable put into it is renamed into place
    assert len(parent_syncs) == 1 and parent_syncs[0] > syncfs, events
    assert parent_syncs[0] < events.index(("rename", str(root / "chunks" / "0a" / "two"))), events
    assert parent_syncs[0] > events.index(("rename", str(root / "chunks" / "0a" / "one"))), events


def test_check_read_data_compares_copies_with_the_disk_bytes(repo):
    from format.fixedindex import Copies
    from format.manifest import DiskEntry
    cs = repo.chunk_size
    slot0, slot1 = os.urandom(cs), os.urandom(cs)
    index = FixedIndex.empty(2 * cs, cs)
    for n, data in enumerate((slot0, slot1)):
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data)
        index.set(n, cid)

    def with_copies(stream: bytes) -> list:
        scid = repo.chunk_id(stream)
        repo.put_chunk(scid, stream)
        index.copies = Copies([(100, 50), (cs - 10, 30)], [scid], cs)
        m = Manifest("vm", f"g{len(repo.manifest_names())}", "t", 1, None,
                     [DiskEntry("d", 2 * cs, cs, repo.put_index(index))])
        name = repo.put_manifest(m)
        problems = check(repo, read_data=True).problems
        repo.backend.delete(manifest_name(name))
        repo._manifests.clear()
        return problems

    good = slot0[100:150] + slot0[cs - 10:] + slot1[:20]
    assert with_copies(good) == []
    for at in (0, 49, 50, 59, 60, 79):      # in the first range, before and after the slot boundary
        bad = bytearray(good)
        bad[at] ^= 1
        problems = with_copies(bytes(bad))
        expected = 100 + at if at < 50 else cs - 10 + (at - 50)
        assert [(p.object, p.offset) for p in problems] == [("copy table", expected)], at


def test_check_reports_each_kind_of_damage_with_its_place(repo):
    from format.manifest import DiskEntry
    cs = repo.chunk_size
    datas = [os.urandom(cs) for _ in range(4)]
    ids = [repo.chunk_id(d) for d in datas]
    for cid, d in zip(ids, datas, strict=True):
        repo.put_chunk(cid, d)
    index = FixedIndex.empty(5 * cs, cs)
    for n, cid in enumerate(ids):
        index.set(n, cid)
    iid = repo.put_index(index)
    first = repo.put_manifest(Manifest("vm", "g1", "t", 1, None, [DiskEntry("d", 5 * cs, cs, iid)]))
    repo.put_manifest(Manifest("vm", "g2", "t", 2, first, [DiskEntry("d", 5 * cs, cs, iid),
                                                                      DiskEntry("e", 5 * cs, cs, iid)]))
    report = check(repo, read_data=True)
    assert report.ok and (report.generations, report.disks, report.chunks, report.chunks_read) == (2, 3, 4, 4)
    assert check(repo).chunks_read == 0
    # damage: chunk 1 cut short, chunk 2 deleted, chunk 3 flipped (seen by --read-data only)
    path = repo.backend.path(chunk_name(ids[1]))
    os.truncate(path, 100)     # longer than a header: only the size says it is cut
    repo.backend.delete(chunk_name(ids[2]))
    p3 = repo.backend.path(chunk_name(ids[3]))
    with open(p3, "r+b") as f:
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes([byte ^ 1]))
    structure = check(repo)
    assert not structure.ok
    got = {(p.object, p.reason, p.vm, p.generation, p.disk, p.offset) for p in structure.problems}
    assert got == {(chunk_name(ids[n]), reason, "vm", g, disk, n * cs)
                   for n, reason in ((1, "not whole: its size does not match its header"), (2, "missing"))
                   for g, disk in (("g1", "d"), ("g2", "d"), ("g2", "e"))}
    full = check(repo, read_data=True, workers=3)
    assert {(p.object, p.reason) for p in full.problems if p.object == chunk_name(ids[3])} == \
        {(chunk_name(ids[3]), "authentication failed")}
    assert len(full.problems) == 9 and full.chunks_read == 4     # every chunk read, the damaged ones too
    assert _text(structure, ids[1], "g1") == f"VM vm, generation g1, disk d, offset {cs}: {chunk_name(ids[1])}: " \
        "not whole: its size does not match its header"
    # a missing parent, a damaged manifest, a stray file, a missing index
    repo.backend.delete(manifest_name(first))
    repo.backend.put("manifests/stray", b"x")
    repo._manifests.clear()
    third = repo.put_manifest(Manifest("vm2", "g3", "t", 3, None, [DiskEntry("d", 5 * cs, cs, "ee" * 32)]))
    damaged = repo.put_manifest(Manifest("vm3", "g4", "t", 4, None, []))
    with open(repo.backend.path(manifest_name(damaged)), "r+b") as f:
        f.seek(40)
        byte = f.read(1)[0]
        f.seek(40)
        f.write(bytes([byte ^ 1]))
    repo._manifests.clear()
    calls = []
    report = check(repo, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(n, 4) for n in range(1, 5)]
    by_object = {p.object: p for p in report.problems}
    from format.check import Problem
    assert by_object[f"indexes/{'ee' * 32}"] == Problem(f"indexes/{'ee' * 32}", "missing", "vm2", "g3", "d")
    assert by_object[manifest_name(damaged)] == Problem(manifest_name(damaged), "authentication failed")
    assert by_object[manifest_name(first)] == Problem(manifest_name(first), "missing: the parent of this "
                                                      "generation was removed", "vm", "g2")
    parent = by_object[manifest_name(first)]
    assert parent.reason.startswith("missing") and parent.generation == "g2"
    assert by_object["manifests/stray"].reason.startswith("not a manifest name")
    assert by_object[f"indexes/{'ee' * 32}"].reason == "missing" and by_object[f"indexes/{'ee' * 32}"].vm == "vm2"
    assert report.generations == 2 and report.disks == 3
    assert third


def _text(report, cid, generation) -> str:
    return next(p.describe() for p in report.problems
                if p.object == chunk_name(cid) and p.generation == generation)


def test_problem_describe():
    from format.check import Problem
    assert Problem("o", "r").describe() == "repository: o: r"
    assert Problem("o", "r", "v", "g", "d", 0).describe() == "VM v, generation g, disk d, offset 0: o: r"
    assert Problem("o", "r", vm="v", offset=5).describe() == "VM v, offset 5: o: r"
