"""The FUSE handlers called directly under trio, without a kernel mount: the fast rung."""
from __future__ import annotations

import errno
import logging
import os
import random
import stat
import threading
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from fixtures_mount import DISK, PART_OFFSET, PASSPHRASE, MountSource, backup_image, make_repo
from format.frames import FRAME_SIZE
from format.repository import Repository, chunk_name
from repofs.mount.fusefs import MountSettings, RepofsOperations
from repofs.view.tree import RepositoryView

CS = 64 << 10
VM = "vm/one"          # a "/" in a VM name shows as %2F
FOLDER = "vm%2Fone"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A repository seen through the narrow store protocol, counting and optionally
    blocking chunk reads (a backend that stops answering)."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.chunk_reads = 0
        self.part_reads = 0         # reads of part of a chunk that read only its frames
        self.gate = threading.Event()
        self.gate.set()

    def manifests(self):
        return self.repo.manifests()

    def get_index(self, hex_id):
        return self.repo.get_index(hex_id)

    def get_chunk(self, cid):
        self.gate.wait()
        self.chunk_reads += 1
        return self.repo.get_chunk(cid)

    def get_chunk_part(self, cid, offset, length):
        self.gate.wait()
        self.chunk_reads += 1
        part = self.repo.get_chunk_part(cid, offset, length)
        self.part_reads += part is not None
        return part


@pytest.fixture
def disk_image(tmp_path: Path) -> Path:
    """2 MiB + 1000 bytes: random chunks, a hole in the middle, a short last chunk."""
    rng = random.Random(7)
    data = bytearray((2 << 20) + 1000)
    for n in (0, 1, 2, 5, 9, 20, 31, 32):
        data[n * CS:(n + 1) * CS] = rng.randbytes(CS)[:len(data[n * CS:(n + 1) * CS])]
    path = tmp_path / "d.img"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def ops_env(tmp_path: Path, disk_image: Path):
    make_repo(tmp_path / "repo", chunk_size=CS)
    gen = backup_image(tmp_path / "repo", disk_image, vm=VM, label="d0")
    store = Store(Repository.open(tmp_path / "repo", PASSPHRASE))
    clock = FakeClock()
    view = RepositoryView(store, 8 << 20)
    ops = RepofsOperations(view, MountSettings(io_timeout=0.5, readahead_chunks=4), clock=clock)
    return ops, store, clock, gen, disk_image.read_bytes(), tmp_path


async def _lookup_path(ops: RepofsOperations, *names: str) -> pyfuse3.EntryAttributes:
    inode = pyfuse3.ROOT_INODE
    attr = None
    for n in names:
        attr = await ops.lookup(inode, n.encode(), None)
        inode = attr.st_ino
    return attr


async def _open_flat(ops: RepofsOperations, gen: str) -> int:
    """A read-only handle on the generation's flat disk file d0-flat.vmdk."""
    flat = await _lookup_path(ops, FOLDER, gen, "d0-flat.vmdk")
    return (await ops.open(flat.st_ino, os.O_RDONLY, None)).fh


async def _until_cached(disk, *numbers: int) -> None:
    """Wait (at most 10 s) until the read-ahead threads have landed these chunks."""
    with trio.fail_after(10):
        while not all(disk.chunk_is_cached(n) for n in numbers):
            await trio.sleep(0.01)


async def _listdir(ops: RepofsOperations, inode: int, monkeypatch) -> list[str]:
    names: list[str] = []

    def reply(token, name, attr, next_id):
        names.append(name.decode())
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(inode, None)
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    return names


def test_tree_and_attributes(ops_env, monkeypatch) -> None:
    ops, store, clock, gen, image, _ = ops_env

    async def main():
        assert await _listdir(ops, pyfuse3.ROOT_INODE, monkeypatch) == [FOLDER]
        vm = await _lookup_path(ops, FOLDER)
        assert stat.S_ISDIR(vm.st_mode) and stat.S_IMODE(vm.st_mode) == 0o555
        assert await _listdir(ops, vm.st_ino, monkeypatch) == ["latest", gen]
        latest = await _lookup_path(ops, FOLDER, "latest")
        assert stat.S_ISLNK(latest.st_mode)
        assert await ops.readlink(latest.st_ino, None) == gen.encode()
        gdir = await _lookup_path(ops, FOLDER, gen)
        names = await _listdir(ops, gdir.st_ino, monkeypatch)
        assert names == sorted(["d0.vmdk", "d0-flat.vmdk", "vm%2Fone.vmx", "vm%2Fone.json", "files"])
        flat = await _lookup_path(ops, FOLDER, gen, "d0-flat.vmdk")
        assert stat.S_IMODE(flat.st_mode) == 0o444 and flat.st_size == len(image)
        assert flat.st_blocks == -(-(7 * CS + 1000) // 512)   # 7 full chunks + the short last one
        assert flat.st_mtime_ns == gdir.st_mtime_ns == ops.view.generation(VM).time_ns
        assert (await ops.getattr(flat.st_ino, None)).st_ino == flat.st_ino
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(gdir.st_ino, b"nope", None)
        assert e.value.errno == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(flat.st_ino, os.O_RDWR, None)
        assert e.value.errno == errno.EROFS
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(123456, None)
        assert e.value.errno == errno.ENOENT
    trio.run(main)


def test_inodes_are_stable_between_instances(ops_env) -> None:
    ops, store, clock, gen, image, _ = ops_env
    other = RepofsOperations(RepositoryView(store), MountSettings())

    async def main():
        for path in [(FOLDER,), (FOLDER, "latest"), (FOLDER, gen), (FOLDER, gen, "d0.vmdk")]:
            assert (await _lookup_path(ops, *path)).st_ino == (await _lookup_path(other, *path)).st_ino
    trio.run(main)


def test_reads_match_and_holes_cost_nothing(ops_env) -> None:
    ops, store, clock, gen, image, _ = ops_env
    rng = random.Random(1)

    async def main():
        fh = await _open_flat(ops, gen)
        before = store.chunk_reads
        assert await ops.read(fh, 10 * CS, 3 * CS) == bytes(3 * CS)    # chunks 10-12: holes
        assert await ops.read(fh, 31 * CS - 10, 10) == bytes(10)
        assert await ops.read(fh, len(image) + 5, 100) == b""
        assert store.chunk_reads == before
        for _ in range(200):
            off = rng.randrange(len(image))
            size = rng.choice([1, 4096, CS, CS + 1, 3 * CS + 7])
            assert await ops.read(fh, off, size) == image[off:off + size]
        await ops.release(fh)
        desc = await _lookup_path(ops, FOLDER, gen, "d0.vmdk")
        fh = (await ops.open(desc.st_ino, os.O_RDONLY, None)).fh
        text = await ops.read(fh, 0, 1 << 20)
        assert b'createType="monolithicFlat"' in text and len(text) == desc.st_size
    trio.run(main)


def test_sequential_reader_gets_read_ahead(ops_env) -> None:
    ops, store, clock, gen, image, _ = ops_env
    disk = ops.view.generation(VM).disk("d0")

    async def main():
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            fh = await _open_flat(ops, gen)
            assert await ops.read(fh, 0, CS) == image[:CS]
            assert await ops.read(fh, CS, CS) == image[CS:2 * CS]
            # chunks 2..5 were queued; wait for the background threads to land them
            await _until_cached(disk, 2, 5)
            reads = store.chunk_reads
            assert await ops.read(fh, 2 * CS, 4 * CS) == image[2 * CS:6 * CS]
            assert store.chunk_reads == reads          # served from what read-ahead fetched
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_damaged_chunk_is_eio_and_logged_once(ops_env, caplog) -> None:
    ops, store, clock, gen, image, tmp = ops_env
    disk = ops.view.generation(VM).disk("d0")
    path = tmp / "repo" / chunk_name(disk.index.get(5))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1
    path.write_bytes(bytes(raw))

    async def main():
        fh = await _open_flat(ops, gen)
        for _ in range(3):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.read(fh, 5 * CS + 10, 100)
            assert e.value.errno == errno.EIO
        assert await ops.read(fh, 4 * CS, CS) == image[4 * CS:5 * CS]
        assert await ops.read(fh, 6 * CS, CS) == image[6 * CS:7 * CS]
    with caplog.at_level(logging.ERROR, logger="repofs.mount"):
        trio.run(main)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert gen in lines[0] and "d0" in lines[0] and str(5 * CS) in lines[0]


def test_backend_that_stops_answering_gives_eio(ops_env, caplog) -> None:
    ops, store, clock, gen, image, _ = ops_env

    async def main():
        fh = await _open_flat(ops, gen)
        assert await ops.read(fh, 0, 100) == image[:100]     # chunk 0 now cached
        store.gate.clear()
        with trio.fail_after(5):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.read(fh, 9 * CS, 100)
        assert e.value.errno == errno.EIO
        assert await ops.read(fh, 0, 100) == image[:100]     # cached data still answers
        assert await ops.read(fh, 11 * CS, 100) == bytes(100)  # and so do holes
        store.gate.set()
        assert await ops.read(fh, 9 * CS, 100) == image[9 * CS:9 * CS + 100]
    with caplog.at_level(logging.ERROR, logger="repofs.mount"):
        trio.run(main)
    assert any("did not answer" in r.getMessage() for r in caplog.records)


def test_new_generation_shows_after_the_refresh_interval(ops_env, disk_image: Path, monkeypatch) -> None:
    ops, store, clock, gen, image, tmp = ops_env

    async def main():
        vm = await _lookup_path(ops, FOLDER)
        assert await _listdir(ops, vm.st_ino, monkeypatch) == ["latest", gen]
        await trio.sleep(1.1)                        # generation names have second resolution
        new = await trio.to_thread.run_sync(backup_image, tmp / "repo", disk_image, VM, "d0")
        assert await _listdir(ops, vm.st_ino, monkeypatch) == ["latest", gen]   # rate-limited
        clock.now += 5
        assert await _listdir(ops, vm.st_ino, monkeypatch) == ["latest", gen, new]
        latest = await _lookup_path(ops, FOLDER, "latest")
        assert await ops.readlink(latest.st_ino, None) == new.encode()
    trio.run(main)


def test_unexpected_errors_become_eio(ops_env, caplog) -> None:
    ops, store, clock, gen, image, _ = ops_env

    def broken(*a):
        raise ZeroDivisionError("bug")

    async def main():
        vm = await _lookup_path(ops, FOLDER)
        ops.view.generations = broken
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(vm.st_ino, b"latest", None)
        assert e.value.errno == errno.EIO
    with caplog.at_level(logging.ERROR, logger="repofs.mount"):
        trio.run(main)
    assert any("internal error" in r.getMessage() for r in caplog.records)


def test_option_parsing() -> None:
    from repofs.mount.process import MountError, parse_size, split_options
    assert parse_size("512M") == 512 << 20 and parse_size("2G") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29 and parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")
    fuse, ours = split_options(["allow_other,cache_size=1G", "io-timeout=5,ro"])
    assert fuse == ["allow_other", "ro"] and ours == {"cache_size": "1G", "io_timeout": "5"}
    with pytest.raises(MountError):
        split_options(["rw"])


def test_interleaved_sequential_streams_each_get_read_ahead(ops_env) -> None:
    ops, store, clock, gen, image, _ = ops_env
    disk = ops.view.generation(VM).disk("d0")

    async def main():
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            fh = await _open_flat(ops, gen)
            # two readers on one handle, at chunk 0 and chunk 18, alternating
            for step in range(2):
                for base in (0, 18 * CS):
                    off = base + step * CS
                    assert await ops.read(fh, off, CS) == image[off:off + CS]
            await _until_cached(disk, 5, 20)
            nursery.cancel_scope.cancel()
    trio.run(main)


class GatedStore(Store):
    """A store whose chunk reads all wait at one gate (storage that has not answered yet),
    counting how many wait at once."""

    def __init__(self, repo: Repository):
        super().__init__(repo)
        self.waiting = 0
        self.most_waiting = 0
        self._count = threading.Lock()

    def get_chunk(self, cid):
        with self._count:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            self.gate.wait()
            return self.repo.get_chunk(cid)
        finally:
            with self._count:
                self.waiting -= 1
                self.chunk_reads += 1


def test_random_reads_fetch_only_the_frames_holding_them(tmp_path: Path) -> None:
    """1 MiB chunks of random data (framed): reads of 4 KiB that continue no stream read the
    128 KiB frames holding them, not their chunks, and are cached as frames; a stream reads whole chunks."""
    big = 1 << 20
    image = tmp_path / "big.img"
    image.write_bytes(random.Random(3).randbytes(4 * big))
    data = image.read_bytes()
    make_repo(tmp_path / "repo", chunk_size=big)
    gen = backup_image(tmp_path / "repo", image, vm=VM, label="d0")
    store = Store(Repository.open(tmp_path / "repo", PASSPHRASE))
    ops = RepofsOperations(RepositoryView(store, 64 << 20), MountSettings(readahead_chunks=2))
    disk = ops.view.generation(VM).disk("d0")
    rng = random.Random(4)
    offsets = [rng.randrange(0, 3 * big) & ~4095 for _ in range(60)]

    async def main():
        fh = await _open_flat(ops, gen)
        frames_seen = set()
        for off in offsets:
            assert await ops.read(fh, off, 4096) == data[off:off + 4096]
            frames_seen.add(off // FRAME_SIZE)
        # one fetch per frame met, each only part of its chunk; no chunk loaded whole
        assert store.part_reads == store.chunk_reads == len(frames_seen)
        assert not any(disk.chunk_is_cached(n) for n in range(4))
        for off in offsets[:10]:                     # again: from the cached frames
            assert await ops.read(fh, off, 4096) == data[off:off + 4096]
            # (found without storage I/O: answered on the event loop)
            assert disk.read_if_cached(off + 100, 3000) == data[off + 100:off + 3100]
        assert store.chunk_reads == len(frames_seen)
        # a stream: its first read may take frames, then whole chunks
        reads = store.part_reads
        for off in range(3 * big, 4 * big, 128 << 10):
            assert await ops.read(fh, off, 128 << 10) == data[off:off + (128 << 10)]
        assert store.part_reads - reads <= 2 and disk.chunk_is_cached(3)
        await ops.release(fh)
    trio.run(main)


@pytest.fixture
def dense_env(tmp_path: Path):
    """A 64-chunk disk of random data (no holes) behind a gated store."""
    image = tmp_path / "dense.img"
    image.write_bytes(random.Random(7).randbytes(64 * CS))
    make_repo(tmp_path / "repo", chunk_size=CS)
    gen = backup_image(tmp_path / "repo", image, vm=VM, label="d0")
    store = GatedStore(Repository.open(tmp_path / "repo", PASSPHRASE))
    return store, gen, image.read_bytes()


def _loaded_ahead_of_waiting_reader(dense_env, start: int, limit: int) -> int:
    """Chunks loaded in all for a reader with five sequential one-chunk reads in flight at
    once while storage answers none of them (every read waits for its chunk)."""
    store, gen, image = dense_env
    view = RepositoryView(store, 8 << 20)
    ops = RepofsOperations(view, MountSettings(io_timeout=30, readahead_chunks=start,
                                               readahead_limit=limit))
    disk = view.generation(VM).disk("d0")
    got: dict[int, bytes] = {}

    async def reader(fh: int, n: int) -> None:
        got[n] = await ops.read(fh, n * CS, CS)

    async def main():
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            fh = await _open_flat(ops, gen)
            disk.index  # noqa: B018 (loaded before the gate closes)
            store.gate.clear()
            async with trio.open_nursery() as readers:
                for n in range(5):        # in order: each enters the handler before the next
                    readers.start_soon(reader, fh, n)
                    await trio.testing.wait_all_tasks_blocked()
                store.gate.set()
            with trio.fail_after(10):
                while nursery.child_tasks:      # the loads ahead
                    await trio.sleep(0.01)
    trio.run(main)
    assert all(got[n] == image[n * CS:(n + 1) * CS] for n in range(5))
    return store.chunk_reads


def test_read_ahead_deepens_while_the_reader_waits_up_to_its_limit(dense_env) -> None:
    """Storage slower than the reader (object storage's round trip): read-ahead doubles its
    depth at each read that still waits — 2, 4, 8 chunks ahead — and never beyond the limit."""
    # read 1 starts the stream (chunks 2-3 ahead), reads 2-4 wait: 4-6, 7-11, 12 (limit 8)
    assert _loaded_ahead_of_waiting_reader(dense_env, start=2, limit=8) == 13


def test_read_ahead_without_a_limit_keeps_its_depth(dense_env) -> None:
    """The default (local storage): the depth stays what was asked, waits or not."""
    assert _loaded_ahead_of_waiting_reader(dense_env, start=2, limit=0) == 7


def test_a_read_over_several_chunks_fetches_them_at_once(dense_env) -> None:
    """One large read on slow storage waits for one round trip, not one per chunk."""
    store, gen, image = dense_env
    view = RepositoryView(store, 8 << 20)
    ops = RepofsOperations(view, MountSettings(io_timeout=30, readahead_chunks=0, readahead_threads=4))

    async def main():
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            fh = await _open_flat(ops, gen)
            view.generation(VM).disk("d0").index  # noqa: B018
            store.gate.clear()
            result: list[bytes] = []

            async def read() -> None:
                result.append(await ops.read(fh, 10 * CS + 100, 4 * CS))
            nursery.start_soon(read)
            with trio.fail_after(10):
                while store.waiting < 5:      # chunks 10-14: all asked for before any answer
                    await trio.sleep(0.01)
            store.gate.set()
            with trio.fail_after(10):
                while not result:
                    await trio.sleep(0.01)
            assert result[0] == image[10 * CS + 100:14 * CS + 100]
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert store.most_waiting == 5


@pytest.mark.parametrize("cache_mib", [8, 1], ids=["copies-fit", "copies-too-large"])
def test_a_read_inside_the_metadata_copies_loads_all_of_them(mount_source: MountSource, cache_mib: int) -> None:
    # A loop-mounted guest file system starts with its superblock (inside the copies) and then
    # walks them one small read after another: the first such read loads every copy chunk in
    # the background — unless the copies would take more than a quarter of the cache.
    store = Store(Repository.open(mount_source.repo, PASSPHRASE))
    view = RepositoryView(store, cache_mib << 20)
    ops = RepofsOperations(view, MountSettings(io_timeout=5))
    disk = view.generation("vm1").disk(DISK)
    copies = disk.index.copies
    assert copies is not None and len(copies.ids) > 2
    image = mount_source.image.read_bytes()
    last_off, last_len = copies.ranges[-1]
    assert (copies.stream_size <= view.cache.max_bytes // 4) is (cache_mib == 8)

    async def main():
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            flat = await _lookup_path(ops, "vm1", mount_source.generation, f"{DISK}-flat.vmdk")
            fh = (await ops.open(flat.st_ino, os.O_RDONLY, None)).fh
            assert await ops.read(fh, PART_OFFSET, 4096) == image[PART_OFFSET:PART_OFFSET + 4096]
            if copies.stream_size <= view.cache.max_bytes // 4:
                with trio.fail_after(10):
                    while any(view.cache.peek(cid) is None for cid in copies.ids):
                        await trio.sleep(0.01)
                reads = store.chunk_reads
                assert await ops.read(fh, last_off, last_len) == image[last_off:last_off + last_len]
                assert store.chunk_reads == reads       # served from what was loaded
            else:
                await trio.testing.wait_all_tasks_blocked()
                assert sum(view.cache.peek(cid) is not None for cid in copies.ids) <= 1
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_reads_through_the_metadata_copies_load_no_disk_chunks_ahead(mount_source: MountSource) -> None:
    # A kernel walking a loop-mounted guest reads inode tables and directories block after
    # block: a "sequential" stream of the flat file, but served from the copies. Loading the
    # disk's own chunks ahead of it would be wasted work that pushes the copies out.
    fetched: list[bytes] = []

    class Recording(Store):
        def get_chunk(self, cid):
            fetched.append(cid)
            return super().get_chunk(cid)

    store = Recording(Repository.open(mount_source.repo, PASSPHRASE))
    view = RepositoryView(store, 8 << 20)
    ops = RepofsOperations(view, MountSettings(io_timeout=5, readahead_chunks=4))
    disk = view.generation("vm1").disk(DISK)
    copies = disk.index.copies
    start, length = max(copies.ranges, key=lambda r: r[1])      # the longest copied range
    assert length >= 4 * 4096
    image = mount_source.image.read_bytes()

    async def main():
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            flat = await _lookup_path(ops, "vm1", mount_source.generation, f"{DISK}-flat.vmdk")
            fh = (await ops.open(flat.st_ino, os.O_RDONLY, None)).fh
            for off in range(start, start + length - 4096 + 1, 4096):
                assert await ops.read(fh, off, 4096) == image[off:off + 4096]
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert fetched and set(fetched) <= set(copies.ids)
