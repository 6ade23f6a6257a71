"""What the mutation run of ``repofs/view/tree.py`` found tested only through real mounts
(docs/security.md, "Mutation testing of the format"): the files of a generation folder (the
descriptor, the flat extent, the ``.vmx`` and the ``.json``), generation lookup and its
errors, and the names of VM folders. In process, on a real repository; the real mounts test
the same files through the kernel."""
from __future__ import annotations

import json
import random
import uuid
import zlib

import pytest

from fixtures_mount import PASSPHRASE, make_repo
from format.errors import GenerationNotFound, ObjectMissing, VMNotFound
from format.fixedindex import FixedIndex
from format.manifest import DiskEntry, Manifest
from format.repository import Repository, chunk_name
from repofs.view.tree import RepositoryView, vm_folder_name

CS = 64 << 10


@pytest.fixture(scope="module")
def repo_view(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tree")
    repo = make_repo(tmp / "repo", chunk_size=CS)
    rng = random.Random(3)
    data = {"a": rng.randbytes(CS) + bytes(CS) + rng.randbytes(700), "b": rng.randbytes(CS)}
    entries = []
    for label, source in (("a", {}), ("b", {"uuid": "6000c29a-1b2c-3d4e-5f60-718293a4b5c6",
                                           "adapter": "pvscsi"})):
        index = FixedIndex.empty(len(data[label]), CS)
        for n in range(index.count):
            chunk = data[label][n * CS:(n + 1) * CS]
            if any(chunk):
                cid = repo.chunk_id(chunk)
                repo.put_chunk(cid, chunk)
                index.set(n, cid)
        entries.append(DiskEntry(label, len(data[label]), CS, repo.put_index(index),
                                 data_bytes=7, new_bytes=8, new_chunks=1, source=source))
    meta = {"config": {"version": "vmx-19", "guestId": "debian12_64Guest"}, "note": "kept"}
    first = repo.put_manifest(Manifest("web/1", "2026-01-01T000000Z", "2026-01-01T00:00:00Z", 100,
                                       None, entries, meta))
    second = repo.put_manifest(Manifest("web/1", "2026-01-02T000000Z", "2026-01-02T00:00:00Z", 200,
                                        first, entries[:1], {}))
    other = repo.put_manifest(Manifest("db", "2026-01-01T000000Z", "2026-01-01T00:00:00Z", 150,
                                       None, entries[1:], {}))
    view = RepositoryView(Repository.open(tmp / "repo", PASSPHRASE), 4 << 20)
    return view, data, {"first": first, "second": second, "other": other}


def test_generation_folder_files(repo_view):
    view, data, names = repo_view
    gen = view.generation("web/1", "2026-01-01T000000Z")
    files = gen.files()
    assert sorted(files) == ["a-flat.vmdk", "a.vmdk", "b-flat.vmdk", "b.vmdk", "web%2F1.json", "web%2F1.vmx"]
    assert gen.files() is files                          # built once
    for label in "ab":
        flat = files[f"{label}-flat.vmdk"]
        assert flat.name == f"{label}-flat.vmdk" and flat.size == len(data[label])
        assert flat.disk is gen.disk(label)
        assert flat.read(0, flat.size + 10) == data[label]
        assert flat.read(CS - 5, 10) == data[label][CS - 5:CS + 5]
    assert files["a-flat.vmdk"].stored == gen.disk("a").stored_bytes() > 0
    assert files["b-flat.vmdk"].stored == gen.disk("b").stored_bytes()
    desc_a = files["a.vmdk"].read(0, 1 << 20).decode()
    seed = f"{names['first']}/a"
    assert f'RW {-(-len(data["a"]) // 512)} FLAT "a-flat.vmdk" 0' in desc_a
    assert f"CID={zlib.crc32(seed.encode()):08x}" in desc_a
    ddb = " ".join(f"{b:02x}" for b in uuid.uuid5(uuid.NAMESPACE_URL, seed).bytes)
    assert f'ddb.uuid = "{ddb}"' in desc_a and 'ddb.adapterType = "lsilogic"' in desc_a
    desc_b = files["b.vmdk"].read(0, 1 << 20).decode()
    assert 'ddb.uuid = "60 00 c2 9a 1b 2c 3d 4e 5f 60 71 82 93 a4 b5 c6"' in desc_b
    assert 'ddb.adapterType = "pvscsi"' in desc_b
    assert files["a.vmdk"].size == files["a.vmdk"].stored == len(desc_a.encode())
    assert files["a.vmdk"].disk is None
    vmx = files["web%2F1.vmx"].read(0, 1 << 20).decode()
    assert 'virtualHW.version = "19"' in vmx and 'guestOS = "debian12_64Guest"' in vmx
    assert 'displayName = "web/1"' in vmx and '"a.vmdk"' in vmx and '"b.vmdk"' in vmx
    assert files["web%2F1.vmx"].read(3, 5) == vmx.encode()[3:8]


def test_the_json_file_is_the_whole_generation(repo_view):
    view, data, names = repo_view
    gen = view.generation("web/1", names["first"])
    text = gen.files()["web%2F1.json"].read(0, 1 << 20)
    assert text == gen.json_document() and text.endswith(b"}\n") and b'\n  "disks"' in text
    doc = json.loads(text)
    assert doc == {
        "vm": "web/1", "generation": "2026-01-01T000000Z", "time": "2026-01-01T00:00:00Z",
        "manifest": names["first"], "parent": None,
        "disks": [{"label": "a", "capacity": len(data["a"]), "chunk_size": CS, "data_bytes": 7,
                   "new_bytes": 8, "source": {}},
                  {"label": "b", "capacity": len(data["b"]), "chunk_size": CS, "data_bytes": 7,
                   "new_bytes": 8, "source": {"uuid": "6000c29a-1b2c-3d4e-5f60-718293a4b5c6",
                                              "adapter": "pvscsi"}}],
        "metadata": {"config": {"version": "vmx-19", "guestId": "debian12_64Guest"}, "note": "kept"}}
    assert json.loads(view.generation("web/1").json_document())["parent"] == names["first"]
    assert list(json.loads(text)) == sorted(doc)


def test_generation_lookup_and_its_errors(repo_view):
    view, _data, names = repo_view
    assert view.vms() == ["db", "web/1"]
    assert [g.name for g in view.generations("web/1")] == ["2026-01-01T000000Z", "2026-01-02T000000Z"]
    assert view.generation("web/1").manifest_name == names["second"]
    assert view.generation("web/1", "latest") is view.generation("web/1")
    assert view.generation("web/1", names["first"]) is view.generation("web/1", "2026-01-01T000000Z")
    assert view.by_manifest(names["other"]).vm == "db"
    assert view.by_manifest("00" * 16) is None
    assert view.generation("db").metadata == {}
    with pytest.raises(VMNotFound, match="no generations of VM 'nope' in this repository"):
        view.generation("nope")
    with pytest.raises(GenerationNotFound,
                       match=r"VM 'web/1' has no generation 'x'; newest: 2026-01-02T000000Z"):
        view.generation("web/1", "x")
    with pytest.raises(GenerationNotFound,
                       match=r"web/1 generation 2026-01-01T000000Z has no disk 'c' \(disks: a, b\)"):
        view.generation("web/1", names["first"]).disk("c")


def test_generations_with_equal_times_order_by_name(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=CS)
    index = repo.put_index(FixedIndex.empty(CS, CS))
    for gen in ("g2", "g1", "g3"):
        repo.put_manifest(Manifest("v", gen, "t", 5, None, [DiskEntry("d", CS, CS, index)]))
    view = RepositoryView(Repository.open(tmp_path / "repo", PASSPHRASE))
    assert [g.name for g in view.generations("v")] == ["g1", "g2", "g3"]
    assert view.generation("v").name == "g3"
    assert view.generation("v").disk("d").read(0, CS) == bytes(CS)


@pytest.mark.parametrize("vm, folder", [("web", "web"), ("a/b", "a%2Fb"), ("50%", "50%25"),
                                        ("%2F", "%252F"), ("", "%00")])
def test_vm_folder_names_are_one_component_and_unambiguous(vm, folder):
    assert vm_folder_name(vm) == folder


@pytest.fixture
def patched(tmp_path):
    """A disk of four slots: slot 1 stored as pieces over a base, two ranges also kept as a
    copy stream (guest metadata), and a disk without copies beside it."""
    repo = make_repo(tmp_path / "repo", chunk_size=CS)
    rng = random.Random(9)
    base, piece = rng.randbytes(CS), rng.randbytes(300)
    data = bytearray(rng.randbytes(4 * CS))
    data[CS:2 * CS] = base
    data[CS + 1000:CS + 1300] = piece
    data[CS + 5000:CS + 5100] = bytes(100)
    data = bytes(data)
    index = FixedIndex.empty(len(data), CS)
    for n in (0, 2, 3):
        cid = repo.chunk_id(data[n * CS:(n + 1) * CS])
        repo.put_chunk(cid, data[n * CS:(n + 1) * CS])
        index.set(n, cid)
    for chunk in (base, piece):
        repo.put_chunk(repo.chunk_id(chunk), chunk)
    index.set(1, repo.chunk_id(base))
    index.set_pieces(1, [(1000, 300, repo.chunk_id(piece)), (5000, 100, None)])
    ranges = [(100, 200), (2 * CS - 50, 100)]
    stream = b"".join(data[off:off + n] for off, n in ranges)
    repo.put_chunk(repo.chunk_id(stream), stream)
    from format.fixedindex import Copies
    index.copies = Copies(ranges, [repo.chunk_id(stream)], CS)
    plain = FixedIndex.empty(len(data), CS)
    for n in range(4):
        plain.set(n, index.get(n))
    disks = [DiskEntry("p", len(data), CS, repo.put_index(index)),
             DiskEntry("q", len(data), CS, repo.put_index(plain))]
    repo.put_manifest(Manifest("v", "g", "t", 1, None, disks))
    return tmp_path / "repo", data, repo.chunk_id(stream), ranges


def _disk(path, label="p"):
    return RepositoryView(Repository.open(path, PASSPHRASE), 4 << 20).generation("v").disk(label)


def test_a_slot_stored_as_pieces_reads_its_bytes(patched):
    path, data, _stream, _ranges = patched
    d = _disk(path)
    assert d.read(CS, CS) == data[CS:2 * CS]
    assert d.read(CS + 990, 400) == data[CS + 990:CS + 1390]
    assert d.read(0, 4 * CS) == data
    assert d.read_if_cached(CS + 990, 20) == data[CS + 990:CS + 1010]
    repo = Repository.open(path, PASSPHRASE)
    repo.backend.delete(f"chunks/{d.index.get(1).hex()[:2]}/{d.index.get(1).hex()}")
    from repofs.view.tree import DiskReadError
    with pytest.raises(DiskReadError):
        _disk(path).read(CS, 10)


def test_copied_ranges_read_from_the_copy_stream(patched):
    path, data, stream_id, ranges = patched
    d = _disk(path)
    assert d.copy_ranges() == ranges
    assert d.copied(100, 200) and d.copied(150, 10) and d.copied(2 * CS - 50, 100)
    assert not d.copied(99, 2) and not d.copied(299, 2) and not d.copied(2 * CS - 50, 101)
    assert not d.copied(0, 50)
    q = _disk(path, "q")
    assert q.copy_ranges() == [] and not q.copied(100, 10)
    # the copied bytes need none of the disk's own chunks
    repo = Repository.open(path, PASSPHRASE)
    for n in (0, 1):
        cid = d.index.get(n).hex()
        repo.backend.delete(f"chunks/{cid[:2]}/{cid}")
    fresh = _disk(path)
    assert fresh.read(100, 200) == data[100:300]
    assert fresh.read(2 * CS - 50, 100) == data[2 * CS - 50:2 * CS + 50]
    assert fresh.read_if_cached(120, 30) == data[120:150]          # the stream chunk is cached
    assert fresh.read_if_cached(0, 10) is None


def test_a_read_meets_the_copies_when_any_byte_is_copied(patched):
    path, data, _stream_id, ranges = patched
    d = _disk(path)
    (first, flen), *_ = ranges
    assert d.meets_copies(first - 1, 2) and d.meets_copies(first + flen - 1, 2) and d.meets_copies(0, 2 * CS)
    assert not d.meets_copies(first - 50, 50) and not d.meets_copies(first + flen, 1)
    assert d.read(first - 10, flen + 20) == data[first - 10:first + flen + 10]   # copies and slots joined
    assert not _disk(path, "q").meets_copies(first, 10)


def test_a_damaged_copy_stream_falls_back_to_the_slots(patched):
    path, data, stream_id, _ranges = patched
    repo = Repository.open(path, PASSPHRASE)
    name = f"chunks/{stream_id.hex()[:2]}/{stream_id.hex()}"
    repo.backend.delete(name)
    d = _disk(path)
    assert d.read(100, 200) == data[100:300]
    assert d.read(2 * CS - 50, 100) == data[2 * CS - 50:2 * CS + 50]
    assert d.read_if_cached(100, 10) == data[100:110]              # slot 0 is cached now


def test_extents_merge_runs_of_any_length(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=CS)
    index = FixedIndex.empty(7 * CS - 5, CS)
    for n in (0, 2, 3, 4, 6):
        index.set(n, bytes([n + 1]) * 32)
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", 7 * CS - 5, CS, repo.put_index(index))]))
    d = RepositoryView(Repository.open(tmp_path / "repo", PASSPHRASE)).generation("v").disk("d")
    assert d.extents() == [(0, CS), (2 * CS, 3 * CS), (6 * CS, CS - 5)]


def test_restore_reads_of_pieces_over_a_hole_and_of_a_damaged_chunk(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=CS)
    rng = random.Random(4)
    full, p1, p2 = rng.randbytes(CS), rng.randbytes(100), rng.randbytes(50)
    for chunk in (full, p1, p2):
        repo.put_chunk(repo.chunk_id(chunk), chunk)
    index = FixedIndex.empty(3 * CS, CS)
    index.set(0, repo.chunk_id(full))
    index.set_pieces(1, [(300, 100, repo.chunk_id(p1)), (1000, 50, repo.chunk_id(p2)), (2000, 10, None)])
    index.set_pieces(2, [(0, 10, None)])                     # pieces of zeros over a hole: nothing
    repo.put_manifest(Manifest("vm", "gen", "t", 1, None, [DiskEntry("d", 3 * CS, CS, repo.put_index(index))]))
    d = RepositoryView(Repository.open(tmp_path / "repo", PASSPHRASE)).generation("vm").disk("d")
    slot1 = bytearray(CS)
    slot1[300:400], slot1[1000:1050] = p1, p2
    for workers, lookahead in ((1, 1), (2, 2)):
        assert list(d.iter_chunks(workers=workers, lookahead=lookahead)) == [
            (0, full), (CS + 300, bytes(slot1[300:1050]))]
    assert d.read(0, 3 * CS) == full + bytes(slot1) + bytes(CS)
    repo.backend.delete(f"chunks/{repo.chunk_id(p2).hex()[:2]}/{repo.chunk_id(p2).hex()}")
    from repofs.view.tree import DiskReadError
    with pytest.raises(DiskReadError) as info:
        list(d.iter_chunks())
    assert str(info.value).startswith(f"vm generation gen disk d: chunk at offset {CS} is unreadable (object ")
    assert str(info.value).endswith("is missing)")
    fresh = RepositoryView(Repository.open(tmp_path / "repo", PASSPHRASE)).generation("vm").disk("d")
    with pytest.raises(DiskReadError) as info:               # a read names the same, field by field
        fresh.read(CS + 5, 10)
    e = info.value
    assert (e.vm, e.generation, e.disk, e.offset) == ("vm", "gen", "d", CS)
    assert isinstance(e.cause, ObjectMissing) and e.cause.name == chunk_name(repo.chunk_id(p2))
