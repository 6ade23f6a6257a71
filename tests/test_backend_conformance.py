"""One suite that every backend passes: the local directory and S3 (moto on loopback, or the
store named by REPOFS_TEST_S3_* — see tests/fixtures_s3.py).

What the repository relies on from a backend: whole objects or none, listings below a
folder, missing objects named as such, background writes made visible by ``sync``,
create-if-absent for lock objects, the storage's own clock for their age — and, on top, a
repository (init, open, chunks, indexes, manifests) and the per-VM writer lock behaving the
same on both.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from format.backend import LocalBackend
from format.errors import ObjectMissing, RepositoryBusy, RepositoryExists, RepositoryNotFound
from format.fixedindex import FixedIndex
from format.location import open_backend
from format.manifest import DiskEntry, Manifest
from format.repository import Repository, chunk_name
from format.writerlock import LockLost, WriterLock

KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 8192, "parallelism": 1}


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "repo")
    return request.getfixturevalue("s3").new_location()


@pytest.fixture
def backend(location: str):
    if not location.startswith("s3://"):
        os.makedirs(location)
    return open_backend(location)


def test_put_get_roundtrip_binary_and_large(backend) -> None:
    rng = random.Random(1)
    small, large = bytes(range(256)) * 3, rng.randbytes(6 << 20)
    backend.put("chunks/ab/abc", small)
    backend.put("indexes/cd/cde", large)
    backend.put("config", b"")
    assert backend.get("chunks/ab/abc") == small
    assert backend.get("indexes/cd/cde") == large
    assert backend.get("config") == b""
    assert backend.size("indexes/cd/cde") == len(large)


def test_missing_objects_are_named(backend) -> None:
    with pytest.raises(ObjectMissing) as e:
        backend.get("chunks/00/0000")
    assert e.value.name == "chunks/00/0000"
    with pytest.raises(ObjectMissing):
        backend.size("manifests/nothing")
    with pytest.raises(ObjectMissing):
        backend.delete("manifests/nothing")
    assert not backend.exists("chunks/00/0000")


def test_list_is_recursive_below_its_folder_only(backend) -> None:
    names = {"chunks/aa/aa1", "chunks/aa/aa2", "chunks/bb/bb1", "indexes/aa/aa1", "manifests/m1"}
    for n in names:
        backend.put(n, n.encode())
    assert set(backend.list("chunks")) == {n for n in names if n.startswith("chunks/")}
    assert set(backend.list("manifests")) == {"manifests/m1"}
    assert set(backend.list("")) >= names
    assert list(backend.list("nothing-here")) == []


def test_background_writes_are_visible_after_sync(backend) -> None:
    rng = random.Random(2)
    blobs = {f"chunks/{i:02x}/{i:02x}{rng.getrandbits(64):016x}": rng.randbytes(rng.randint(1, 200_000))
             for i in range(40)}
    for name, data in blobs.items():
        backend.put(name, data, sync=False)
    backend.sync()
    for name, data in blobs.items():
        assert backend.exists(name)
        assert backend.get(name) == data


def test_overwrite_and_delete(backend) -> None:
    backend.put("manifests/x", b"one")
    backend.put("manifests/x", b"two")
    assert backend.get("manifests/x") == b"two"
    backend.delete("manifests/x")
    assert not backend.exists("manifests/x")
    assert "manifests/x" not in set(backend.list("manifests"))


def test_put_new_creates_only_once(backend) -> None:
    assert backend.put_new("locks/vm-1", b"first")
    assert not backend.put_new("locks/vm-1", b"second")
    assert backend.get("locks/vm-1") == b"first"
    backend.replace("locks/vm-1", b"renewed")
    assert backend.get("locks/vm-1") == b"renewed"
    assert 0 <= backend.age("locks/vm-1") < 120
    backend.delete("locks/vm-1")
    assert backend.put_new("locks/vm-1", b"again")


def test_writer_lock_excludes_a_second_writer_until_released(backend) -> None:
    first = WriterLock(backend, "locks/vm-t", "web01")
    first.acquire()
    with pytest.raises(RepositoryBusy, match="another backup of web01 is running"):
        WriterLock(backend, "locks/vm-t", "web01").acquire()
    first.assert_held()
    first.release()
    assert not backend.exists("locks/vm-t")
    with WriterLock(backend, "locks/vm-t", "web01") as second:
        second.assert_held()


def test_writer_lock_of_a_dead_holder_expires(backend) -> None:
    dead = WriterLock(backend, "locks/vm-t", "web01", ttl_s=1, grace_s=0)
    dead.acquire()
    dead._stop.set()          # the host dies: no more renewals, no release
    time.sleep(2.5)           # (the storage's clock has one-second steps)
    taker = WriterLock(backend, "locks/vm-t", "web01", ttl_s=60, grace_s=0)
    taker.acquire()
    with pytest.raises(LockLost):
        dead.assert_held()    # had it come back, it could not commit
    taker.assert_held()
    taker.release()


def test_repository_on_the_backend(location: str) -> None:
    repo = Repository.init(location, b"pw", kdf=KDF, chunk_size=64 << 10)
    with pytest.raises(RepositoryExists):
        Repository.init(location, b"pw", kdf=KDF)
    data = random.Random(3).randbytes(64 << 10)
    cid = repo.chunk_id(data)
    assert not repo.has_chunk(cid)
    repo.put_chunk(cid, data, sync=False)
    repo.sync()
    assert repo.has_chunk(cid)
    index = FixedIndex.empty(3 * (64 << 10), 64 << 10)
    index.set(1, cid)
    iid = repo.put_index(index)
    with repo.vm_lock("vm1"):
        name = repo.put_manifest(Manifest("vm1", "g1", "t", 1, None, [DiskEntry("d0", index.capacity, 64 << 10, iid)]))
    again = Repository.open(location, b"pw")
    assert again.manifest_names() == [name]
    assert again.get_chunk(cid) == data
    assert again.get_index(iid).get(1) == cid
    assert chunk_name(cid) in set(again.backend.list("chunks"))
    assert Repository.is_encrypted(location)


def test_a_framed_chunk_is_read_in_part_from_files_and_whole_from_object_storage(location: str) -> None:
    """A part of a chunk is two reads (the header and frame table, then the frames): from a
    file, cheaper than the whole chunk; from object storage, two round trips where the whole
    chunk is one — there the repository reads chunks whole."""
    repo = Repository.init(location, b"pw", kdf=KDF)
    data = random.Random(4).randbytes(1 << 20)          # does not compress: framed
    cid = repo.chunk_id(data)
    repo.put_chunk(cid, data)
    assert repo.backend.get(chunk_name(cid))[4] == 2
    part = repo.get_chunk_part(cid, 300_000, 5000)
    assert part == (None if location.startswith("s3://") else data[300_000:305_000])
    assert Repository.open(location, b"pw").get_chunk(cid) == data


def test_open_of_nothing_says_so(location: str) -> None:
    if not location.startswith("s3://"):
        os.makedirs(location)
    with pytest.raises(RepositoryNotFound):
        Repository.open(location, b"pw")


def test_local_backend_is_the_default_for_paths(tmp_path: Path) -> None:
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
