"""Chunks are written past the page cache (format/directwrite.py) where the repository's file
system allows it, and through it where it refuses: the same objects either way, byte for
byte, and a backup that restores equal to its source."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from format.backend import LocalBackend
from format.directwrite import ALIGN, write_new
from format.repository import Repository, chunk_name
from format.sealed import MAGIC_CHUNK
from repofs.ingest.backup import backup
from repofs.ingest.sources import LocalImage
from repofs.view.export import restore_disk_to_file
from repofs.view.tree import RepositoryView

from fixtures_repo import images_equal

MiB = 1 << 20
FAST_KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}


def cached_bytes(path: Path) -> int:
    proc = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[0])


def file_system(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()


def image(path: Path) -> Path:
    """8 MiB: random chunks (stored uncompressed: the sealed object is not a whole number of
    4 KiB blocks), text chunks (compressed: odd sizes), a short last chunk, holes between."""
    rng = random.Random(8)
    with open(path, "wb") as f:
        f.write(rng.randbytes(MiB))
        f.seek(2 * MiB)
        f.write(b"".join(b"line %d of a log\n" % rng.randrange(10**6) for _ in range(60000))[:MiB])
        f.seek(4 * MiB)
        f.write(rng.randbytes(MiB + 512))
        f.seek(8 * MiB - 1000)
        f.write(rng.randbytes(1000))
    return path


def back_up_and_restore(repo_dir: Path, tmp_path: Path) -> tuple[Repository, Path]:
    img = image(tmp_path / "disk.img")
    repo = Repository.init(repo_dir, b"pw", kdf=FAST_KDF)
    source = LocalImage.open(str(img))
    try:
        backup(repo, "vm", [source])
    finally:
        source.close()
    gen = RepositoryView(Repository.open(repo_dir, b"pw")).generation("vm")
    out = tmp_path / "restored.raw"
    restore_disk_to_file(gen.disks[0], str(out))
    assert images_equal(img, out)
    return repo, img


def test_backup_writes_its_chunks_past_the_page_cache(tmp_path):
    if file_system(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("on tmpfs the page cache is the storage")
    repo, _img = back_up_and_restore(tmp_path / "repo", tmp_path)
    assert isinstance(repo.backend, LocalBackend) and repo.backend.direct
    # the chunks themselves: of each, at most the tail block that is not a whole 4 KiB is
    # left in the page cache (through it, every byte would be)
    rng = random.Random(2)
    plains = [rng.randbytes(MiB - rng.randrange(4 * ALIGN)) for _ in range(6)]
    ids = [repo.chunk_id(p) for p in plains]
    for cid, plain in zip(ids, plains, strict=True):
        repo.put_chunk(cid, plain, sync=False)
    repo.sync()
    files = [Path(repo.backend.path(chunk_name(cid))) for cid in ids]
    assert any(f.stat().st_size % ALIGN for f in files)
    assert all(cached_bytes(f) <= ALIGN for f in files), [cached_bytes(f) for f in files]
    assert [repo.get_chunk(cid) for cid in ids] == plains


@pytest.fixture
def ramfs(tmp_path):
    """A ramfs: a real file system without direct I/O (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting ramfs needs root")
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "size=64m", "ramfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_file_system_refusing_direct_io_gets_the_same_backup(ramfs, tmp_path):
    with pytest.raises(OSError):      # the premise: this file system refuses O_DIRECT
        os.close(os.open(ramfs / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    repo, img = back_up_and_restore(ramfs / "repo", tmp_path)
    assert isinstance(repo.backend, LocalBackend) and not repo.backend.direct
    # every chunk file is whole (its size is what its header declares) and reads back
    data = img.read_bytes()
    for n in range(0, len(data), MiB):
        piece = data[n:n + MiB]
        if piece.count(0) == len(piece):
            continue
        cid = repo.chunk_id(piece)
        assert repo.has_chunk(cid)
        assert repo.get_chunk(cid) == piece


@pytest.mark.parametrize("size", [1, ALIGN - 1, ALIGN, ALIGN + 1, MiB + 52])
def test_write_new_lands_every_byte_at_any_size(tmp_path, size):
    backend = LocalBackend(tmp_path)
    buf = backend.scratch(size)
    payload = random.Random(size).randbytes(size)
    buf[:] = payload
    fd = os.open(tmp_path / "obj", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_new(fd, buf)
    finally:
        os.close(fd)
    assert (tmp_path / "obj").read_bytes() == payload


def test_only_the_start_of_the_threads_own_buffer_goes_past_the_cache(tmp_path):
    """``put`` writes directly only what begins at the thread's aligned buffer: a slice that
    begins elsewhere, or plain bytes, go through the page cache and still land whole."""
    backend = LocalBackend(tmp_path)
    buf = backend.scratch(3 * ALIGN)
    buf[:] = bytes(range(256)) * (3 * ALIGN // 256)
    assert backend._scratch.owns(buf[:2 * ALIGN])
    assert not backend._scratch.owns(buf[1:])
    assert not backend._scratch.owns(bytes(buf))
    backend.put("a", buf[1:2 * ALIGN + 1], sync=False)
    backend.put("b", bytes(buf[:5]), sync=False)
    backend.put("c", buf[:2 * ALIGN + 7], sync=False)
    backend.sync()
    assert backend.get("a") == bytes(buf[1:2 * ALIGN + 1])
    assert backend.get("b") == bytes(buf[:5])
    assert backend.get("c") == bytes(buf[:2 * ALIGN + 7])


def test_a_chunk_sealed_into_the_scratch_buffer_opens_like_any_other(tmp_path):
    repo = Repository.init(tmp_path / "r", b"pw", kdf=FAST_KDF)
    plain = random.Random(5).randbytes(100_000) + bytes(100_000)     # compresses
    cid = repo.chunk_id(plain)
    stored = repo.put_chunk(cid, plain, sync=False)
    repo.sync()
    assert stored == len(repo.get_object(chunk_name(cid))) == repo.stored_size(cid)
    assert repo.get_chunk(cid) == plain
    with pytest.raises(ValueError, match="does not fit"):
        repo.sealer.seal(MAGIC_CHUNK, cid, plain, memoryview(bytearray(1000)))
