"""Promises of the storage layer that only a failure, a second process or a later reader
shows, each written for a mutant of the mutation run that survived the tests before it:
leases and writer locks (liveness checks that never signal, renewals, locks of other users'
processes, a process that exits holding one), local objects (durable puts, a full disk, the
writers' temporary files, the writeback thread), prune (its batch record, its kill hook, one
CPU, marks that hold no index), indexes and the id table, the retention policy's last
defence, the client's record of a repository, and the S3 backend (uploads, errors, deletes,
listed times).
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from format.backend import LocalBackend
from format.errors import CorruptObject, StorageFull
from format.fixedindex import HOLE, FixedIndex
from format.idtable import PAGE_SLOTS
from format.indexobject import index_id, read_index
from format.leases import LeaseInfo
from format.repository import Repository, index_name
from fixtures_repo import small_tmpfs

KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}


# -- leases -------------------------------------------------------------------------------------

def test_checking_a_lease_of_this_host_leaves_its_process_running(tmp_path: Path) -> None:
    """Prune asks whether a lease's process still exists; asking must not signal it (a
    backup or a mount of this host, looked at by a prune, goes on)."""
    ready = tmp_path / "ready"
    # A process that would end on any signal it does not ignore (SIGHUP's default ends it).
    child = subprocess.Popen([sys.executable, "-c",
                              "import pathlib, signal, sys, time\n"
                              "signal.signal(signal.SIGHUP, lambda *a: sys.exit(3))\n"
                              f"pathlib.Path({str(ready)!r}).write_text('x')\n"
                              "time.sleep(60)\n"])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        now = time.time_ns()
        lease = LeaseInfo("locks/lease-x", "backup", now, now + 60_000_000_000,
                          socket.gethostname(), child.pid, "vm1")
        assert lease.live(now)
        time.sleep(0.2)
        assert child.poll() is None, "the liveness check signalled the lease's process"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # once the process is gone, its lease is no longer live
    assert not lease.live(time.time_ns())


# -- indexes ------------------------------------------------------------------------------------

def test_an_index_read_for_its_ids_alone_holds_none_of_them(tmp_path: Path) -> None:
    """Prune's marks read each index only to see its ids (``keep_ids=False``): every id
    reaches ``on_ids``, and the index it gets back holds no id in memory."""
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=KDF, chunk_size=1 << 16)
    rng = random.Random(11)
    slots = 2 * PAGE_SLOTS + 5
    index = FixedIndex.empty(slots * (1 << 16), 1 << 16)
    ids = [HOLE if n % 5 == 0 else rng.randbytes(32) for n in range(slots)]
    for n, cid in enumerate(ids):
        index.set(n, cid)
    hex_id = repo.put_index(index)
    name = index_name(hex_id)
    iid = index_id(hex_id, name)

    def read(keep: bool) -> tuple[FixedIndex, list[bytes]]:
        seen: list[bytes] = []
        stream, size = repo.open_object(name)
        with stream:
            got = read_index(repo.sealer, iid, stream, size, name, keep_ids=keep,
                             on_ids=lambda page: seen.append(bytes(page)))
        return got, seen

    kept, seen = read(True)
    assert kept.ids.held_bytes > 0 and [kept.ids.get(n) for n in range(slots)] == ids
    bare, seen_bare = read(False)
    assert bare.ids.held_bytes == 0
    assert b"".join(seen_bare) == b"".join(seen) == b"".join(ids)
    assert bare.count == slots


# -- local objects ------------------------------------------------------------------------------

def test_a_put_is_durable_when_it_returns_unless_told_otherwise(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``put(name, data)`` (manifests, indexes, the config) syncs the file and its folder
    before it returns: what a power loss cannot take back once the caller goes on. A power
    loss cannot be made here, so the syncs are counted."""
    backend = LocalBackend(tmp_path / "objects")
    backend.put("manifests/first", b"made the folder")
    synced: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        synced.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", counted)
    backend.put("manifests/m1", b"a manifest")
    assert len(synced) == 2                          # the file, then its folder
    assert (tmp_path / "objects" / "manifests" / "m1").read_bytes() == b"a manifest"
    backend.put("chunks/ab/abcd", b"a chunk", sync=False)
    backend.sync()
    assert (tmp_path / "objects" / "chunks" / "ab" / "abcd").read_bytes() == b"a chunk"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "1m") as mnt:
        yield mnt


@pytest.mark.parametrize("sync", [True, False])
def test_a_put_that_finds_the_disk_full_leaves_no_temporary_file(small_fs: Path, sync: bool) -> None:
    backend = LocalBackend(small_fs)
    backend.put("chunks/aa/first", b"x" * 1000)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StorageFull) as caught:
        backend.put("chunks/aa/too-big", os.urandom(2 << 20), sync=sync)
    assert str(caught.value) == f"no space left in {small_fs} while writing chunks/aa/too-big"
    assert len(os.listdir("/proc/self/fd")) == open_before           # its file closed too
    assert sorted(os.listdir(small_fs / "chunks" / "aa")) == ["first"]
    assert list(backend.list("chunks")) == ["chunks/aa/first"]


def test_files_handed_to_the_background_writeback_are_closed_there_once(tmp_path: Path) -> None:
    """A chunk put without a sync hands its open file to the writeback thread, which starts
    its writeback and closes it; the writer does not close it too (a second close would hit
    whatever file reused the number). After the puts, every file is closed exactly once:
    the thread takes new ones, and the process holds no descriptor more than before."""
    from format import backend as backend_module
    writeback = backend_module._writeback
    if backend_module._sync_file_range is None:
        pytest.skip("no sync_file_range here: writers close their own files")
    backend = LocalBackend(tmp_path / "objects")

    def settled() -> bool:
        deadline = time.monotonic() + 10
        while writeback._slots._value < writeback.LIMIT and time.monotonic() < deadline:
            time.sleep(0.01)
        return writeback._slots._value == writeback.LIMIT

    backend.put("chunks/00/warm", b"w", sync=False)       # the thread exists before we count
    assert settled()
    before = len(os.listdir("/proc/self/fd"))
    datas = {f"chunks/{n:02x}/obj{n}": os.urandom(1000 + n) for n in range(12)}
    for name, data in datas.items():
        backend.put(name, data, sync=False)
        # a file opened now may get the number of the one just handed over
        with open(tmp_path / f"other{name[-2:]}", "wb") as other:
            other.write(b"still mine")
    backend.sync()
    assert settled()
    assert writeback._thread is not None and writeback._thread.is_alive()
    assert len(os.listdir("/proc/self/fd")) == before
    for name, data in datas.items():
        assert (tmp_path / "objects" / name).read_bytes() == data


def test_a_malformed_index_name_is_named_in_its_error(tmp_path: Path) -> None:
    """A manifest (or a junk file in ``indexes/``) naming an index that no id can be: the
    error names the object and says why, as every damaged object's does."""
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=KDF, chunk_size=1 << 16)
    for bad in ("zz" * 32, "ab" * 31, "abc"):
        with pytest.raises(CorruptObject) as caught:
            repo.get_index(bad)
        assert str(caught.value) == f"object {index_name(bad)} is damaged: malformed index id"
        assert caught.value.name == index_name(bad)


class _SlowLocal(LocalBackend):
    """Storage whose lease writes take a while (a slow share): a renewal is still under way
    when the lease ends."""

    def put(self, name: str, data: bytes | bytearray | memoryview, *, sync: bool = True) -> None:
        if name.startswith("leases/"):
            time.sleep(0.3)
        super().put(name, data, sync=sync)


def test_an_ended_lease_stays_deleted_when_a_renewal_was_under_way(tmp_path: Path) -> None:
    """``end()`` waits for the renewal under way before it deletes the lease: else that
    renewal writes it back, and the lease outlives its process by a whole TTL (a prune keeps
    what it would protect)."""
    from format import leases
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=KDF, chunk_size=1 << 16)
    slow = _SlowLocal(repo.backend.root)          # type: ignore[attr-defined]
    repo.backend = slow
    lease = leases.Lease(repo, "reader", ttl_ns=40_000_000)   # renewed every 10 ms
    lease.begin()
    time.sleep(0.05)                               # a renewal has begun and waits on storage
    lease.end()
    time.sleep(0.6)                                # what was under way has finished
    assert leases.leases(repo) == []


def test_an_id_table_misused_says_how() -> None:
    """The id table's refusals name the slot, the page and the sizes involved: what a
    developer reading a failed run needs (every caller checks first, so only a mistake of
    ours reaches them)."""
    from format.idtable import ID_SIZE, IdTable
    with pytest.raises(ValueError) as caught:
        IdTable(-1)
    assert str(caught.value) == "a negative slot count"
    table = IdTable(PAGE_SLOTS + 3)
    for call in (lambda: table.get(PAGE_SLOTS + 3), lambda: table.set(-1, b"\x01" * ID_SIZE)):
        with pytest.raises(IndexError) as out:
            call()
        assert str(out.value) in (f"slot {PAGE_SLOTS + 3} outside a table of {PAGE_SLOTS + 3}",
                                  f"slot -1 outside a table of {PAGE_SLOTS + 3}")
    with pytest.raises(ValueError) as short:
        table.set(0, b"\x01" * 31)
    assert str(short.value) == "a chunk id is 32 bytes"
    with pytest.raises(ValueError) as page:
        table.put_page(1, b"\x02" * (4 * ID_SIZE))
    assert str(page.value) == f"page 1 of the id table is {3 * ID_SIZE} bytes, not {4 * ID_SIZE}"


def test_a_batch_being_filled_is_recorded_as_the_format_says_and_left_to_its_prune(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 5 of prune (docs/format.md): before the first move, ``pending/<b>`` holds
    ``{"state": "moving", "started_ns": T, "owner": <the prune's lease>}``, which another
    implementation's prune reads: while that owner runs, another prune leaves the batch to
    it (a foreign seal would miss a backup that starts before the owner's last move)."""
    from format import prune as prune_module
    from format import records
    from format.leases import leases
    from format.manifest import DiskEntry, Manifest
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    monkeypatch.delenv("REPOFS_PRUNE_KILL_AFTER", raising=False)
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=KDF, chunk_size=1 << 16)
    kept = repo.chunk_id(b"k" * 1000)
    repo.put_chunk(kept, b"k" * 1000)
    index = FixedIndex.empty(1 << 16, 1 << 16)
    index.set(0, kept)
    repo.put_manifest(Manifest("v", "g1", "t", 1, None, [DiskEntry("d", 1 << 16, 1 << 16,
                                                                   repo.put_index(index))]))
    gone = repo.chunk_id(b"g" * 1000)
    repo.put_chunk(gone, b"g" * 1000)
    seen: list[tuple[str, dict, list[str], list[str]]] = []
    real = prune_module._condemn_folders

    def condemn(*args, **kwargs):  # type: ignore[no-untyped-def]
        (batch, doc), = records.read_all(repo, prune_module.PENDING, records.MAGIC_BATCH)
        running = [lease.name for lease in leases(repo) if lease.kind == "prune"]
        sealed = [b for b, d in prune_module._seal_all(repo, "another-prune") if d.get("state") == "sealed"]
        seen.append((batch, doc, running, sealed))
        return real(*args, **kwargs)
    monkeypatch.setattr(prune_module, "_condemn_folders", condemn)
    report = prune_module.prune(repo)
    (batch, doc, running, sealed), = seen
    assert len(running) == 1
    assert len(batch) == 32 and int(batch, 16) >= 0 and batch == batch.lower()   # 32 hex digits
    assert set(doc) == {"state", "started_ns", "owner"}
    assert doc["state"] == "moving" and doc["owner"] == running[0]
    assert type(doc["started_ns"]) is int and doc["started_ns"] > 0
    assert sealed == []                                   # left to the prune that fills it
    assert report.freed_chunks == 1 and not repo.has_chunk(gone) and repo.has_chunk(kept)


def test_the_kill_hook_can_land_at_every_destructive_step_and_the_next_prune_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REPOFS_PRUNE_KILL_AFTER=N kills prune before its destructive step N+1 (0: before the
    first), moves and deletions alike: the seeded kill -9 tests rely on it to stop prune
    between two deletions of its sweep. Here the SIGKILL is caught before it lands; after
    each stop, a prune without the hook finishes the work."""
    from format import prune as prune_module
    from format.leases import leases
    from format import records

    class Killed(Exception):
        pass

    real_kill = os.kill

    def fake_kill(pid: int, sig: int) -> None:
        if sig != signal.SIGKILL:
            real_kill(pid, sig)                       # a lease's liveness probe
            return
        raise Killed

    def one_shard(repo: Repository) -> list[bytes]:
        """Three chunks of one shard (ids are keyed: each repository has its own): the
        shard's moves and deletions then run in one thread, one after the other."""
        by_shard: dict[bytes, list[bytes]] = {}
        k = 0
        while not any(len(v) == 3 for v in by_shard.values()):
            data = k.to_bytes(4, "big") * 250
            by_shard.setdefault(repo.chunk_id(data)[:1], []).append(data)
            k += 1
        return next(v for v in by_shard.values() if len(v) == 3)
    in_trash: dict[int, int] = {}
    for n in range(12):
        monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
        repo = Repository.init(tmp_path / f"repo{n}", b"pw", kdf=KDF, chunk_size=1 << 16)
        datas = one_shard(repo)
        cids = [repo.chunk_id(data) for data in datas]
        for cid, data in zip(cids, datas, strict=True):
            repo.put_chunk(cid, data)
        monkeypatch.setenv("REPOFS_PRUNE_KILL_AFTER", str(n))
        monkeypatch.setattr(os, "kill", fake_kill)
        try:
            prune_module.prune(repo)
        except Killed:
            in_trash[n] = len(list(repo.backend.list(prune_module.TRASH)))
        monkeypatch.setattr(os, "kill", real_kill)
        monkeypatch.setenv("REPOFS_PRUNE_KILL_AFTER", "")
        for lease in leases(repo):                    # the stopped run's lease
            records.delete(repo, "leases", lease.name)
        prune_module.prune(repo)
        assert not any(repo.has_chunk(c) for c in cids)
        assert records.names(repo, prune_module.PENDING) == []
        assert list(repo.backend.list(prune_module.TRASH)) == []
    # N=0 stops after the first move, each later count one step later: the three moves,
    # then the sweep's three deletions one by one, then the steps after it (the trash empty)
    assert sorted(in_trash) == list(range(len(in_trash))) and len(in_trash) < 12
    assert [in_trash[n] for n in range(6)] == [1, 2, 3, 2, 1, 0]


def test_prune_on_a_one_cpu_machine_frees_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one CPU prune walks the shards in its own thread (``WORKERS`` is the CPU count):
    the same objects go, the same stay."""
    from format import prune as prune_module
    from format.manifest import DiskEntry, Manifest
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    monkeypatch.delenv("REPOFS_PRUNE_KILL_AFTER", raising=False)
    monkeypatch.setattr(prune_module, "WORKERS", 1)
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=KDF, chunk_size=1 << 16)
    datas = [bytes([k]) * 700 for k in range(8)]
    cids = [repo.chunk_id(d) for d in datas]
    for cid, data in zip(cids, datas, strict=True):
        repo.put_chunk(cid, data)
    index = FixedIndex.empty(3 << 16, 1 << 16)
    for n in range(3):
        index.set(n, cids[n])
    repo.put_manifest(Manifest("v", "g1", "t", 1, None, [DiskEntry("d", 3 << 16, 1 << 16,
                                                                   repo.put_index(index))]))
    report = prune_module.prune(repo)
    assert report.freed_chunks == 5
    assert [repo.has_chunk(c) for c in cids] == [True] * 3 + [False] * 5


def test_prune_marks_without_holding_any_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune's marks see each index's ids as they stream past and keep none of them: its
    memory is the marks, not the indexes (10 M chunks in 256 MiB, docs/performance.md)."""
    from format import prune as prune_module
    from format.manifest import DiskEntry, Manifest
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=KDF, chunk_size=1 << 16)
    for g in range(3):
        index = FixedIndex.empty(4 << 16, 1 << 16)
        for n in range(4):
            data = bytes([g, n]) * 300
            cid = repo.chunk_id(data)
            repo.put_chunk(cid, data)
            index.set(n, cid)
        repo.put_manifest(Manifest("v", f"g{g}", "t", 1 + g, None,
                                   [DiskEntry("d", 4 << 16, 1 << 16, repo.put_index(index))]))
    held: list[int] = []
    real = prune_module.read_index

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = real(*args, **kwargs)
        held.append(got.ids.held_bytes)
        return got
    monkeypatch.setattr(prune_module, "read_index", watched)
    report = prune_module.prune(repo)
    assert held == [0, 0, 0]
    assert report.referenced_chunks == 12 and report.freed_chunks == 0


def test_a_process_that_exits_holding_a_writer_lock_ends(tmp_path: Path) -> None:
    """The lock's renewing thread never keeps a process alive: a backup that ends (or dies
    of an error) without releasing its lock still exits; the lock then expires."""
    repo = tmp_path / "repo"
    Repository.init(repo, b"pw", kdf=KDF, chunk_size=1 << 16)
    code = ("from format.backend import LocalBackend\n"
            "from format.writerlock import WriterLock\n"
            f"lock = WriterLock(LocalBackend({str(repo)!r}), 'locks/vm-x', 'x')\n"
            "lock.acquire()\n"
            "print('held', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "held\n"


def test_a_policy_that_would_keep_nothing_keeps_the_newest_generation() -> None:
    """The last line of defence of ``forget``: whatever a policy built in code says (here a
    negative ``within``, which the command line cannot give), the newest generation of a VM
    stays, and the table says why."""
    from format.retention import Duration, Generation, Policy, apply
    gens = [Generation(f"m{k}", f"g{k}", (k + 1) * 3_600_000_000_000) for k in range(3)]
    decisions = apply(Policy(within=Duration(hours=-1)), gens)
    assert [(d.generation.name, d.keep, d.reasons) for d in decisions] == [
        ("g2", True, ["newest of the VM"]), ("g1", False, []), ("g0", False, [])]
    assert [d.keep for d in apply(Policy(within=Duration(hours=-1)), gens, allow_empty=True)] == [False] * 3


def test_background_uploads_are_forgotten_once_they_end(s3) -> None:  # type: ignore[no-untyped-def]
    """A backup's chunks go up in the background; each upload, once ended, is no longer held
    (a night's backup makes hundreds of thousands), and ``sync`` returns once all have ended."""
    from format.location import open_backend
    backend = open_backend(s3.new_location())
    try:
        datas = {f"chunks/{n:02x}/c{n}": os.urandom(100 + n) for n in range(20)}
        for name, data in datas.items():
            backend.put(name, data, sync=False)
        import threading
        syncing = threading.Thread(target=backend.sync, daemon=True)
        syncing.start()
        syncing.join(30)
        assert not syncing.is_alive(), "sync() did not return once the uploads had ended"
        deadline = time.monotonic() + 10
        while backend._pending and time.monotonic() < deadline:      # type: ignore[attr-defined]
            time.sleep(0.01)
        assert backend._pending == set()                             # type: ignore[attr-defined]
        for name, data in datas.items():
            assert backend.get(name) == data
    finally:
        backend.close()                                              # type: ignore[attr-defined]


def test_a_lock_of_another_users_process_is_not_taken_for_dead(tmp_path: Path) -> None:
    """Two users back up into one repository from one host: a backup that may not signal
    the other's process (PermissionError) must count that lock's holder as running, never
    as dead (its lock would be taken and two backups of one VM would run). The check runs
    in a child that drops root after its imports."""
    code = ("import os\n"
            "from format.writerlock import BOOT, _dead_here\n"
            "os.setgid(65534)\n"
            "os.setuid(65534)\n"
            "print(BOOT != '', _dead_here({'pid': 1, 'boot': BOOT}), flush=True)\n")
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True False\n"


def test_a_held_writer_lock_is_renewed_before_it_would_expire(tmp_path: Path) -> None:
    """A backup's lock object is rewritten while the backup runs, well within its lifetime
    (every quarter of it), so that no other host finds it expired."""
    from format.writerlock import WriterLock
    backend = LocalBackend(tmp_path / "repo")
    lock = WriterLock(backend, "locks/vm-x", "x", ttl_s=2.0)
    lock.acquire()
    try:
        path = Path(backend.path("locks/vm-x"))
        first = path.stat().st_mtime_ns
        deadline = time.monotonic() + 2.0              # the lock's lifetime
        while path.stat().st_mtime_ns == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime_ns != first, "not renewed within the lock's lifetime"
    finally:
        lock.release()
    assert not backend.exists("locks/vm-x")


def test_the_client_record_of_a_repository_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """The client remembers each repository (its id, cipher, location) in files of its own;
    a location with letters beyond ASCII (a folder ``Sicherung-ä``) is written in UTF-8
    also where the process's locale is plain ASCII (a cron job's ``LC_ALL=C``)."""
    location = "/srv/backups/Sicherung-\u00e4"
    code = ("from format.security import KnownRepository\n"
            f"KnownRepository({str(tmp_path / 'sec')!r}, 'ab' * 16, {ascii(location)}).adopt('aes-256-gcm')\n")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0")
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    written = [p for p in (tmp_path / "sec").rglob("location")]
    assert len(written) == 1
    assert written[0].read_bytes().decode("utf-8") == location + "\n"


# -- the S3 backend ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, uploads", [("1000", 256), ("256", 256), ("257", 256), ("0", 1), ("1", 1),
                                            ("7", 7), ("-3", 1), ("many", 32), (None, 32)])
def test_uploads_at_once_from_the_environment_are_bounded(value: str | None, uploads: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from format.s3backend import DEFAULT_UPLOADS, uploads_from_environment
    if value is None:
        monkeypatch.delenv("REPOFS_S3_UPLOADS", raising=False)
    else:
        monkeypatch.setenv("REPOFS_S3_UPLOADS", value)
    assert DEFAULT_UPLOADS == 32
    assert uploads_from_environment() == uploads


def test_an_unreachable_endpoint_names_the_step_and_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from format import s3backend
    from format.errors import StorageUnavailable
    from format.s3backend import S3Backend, make_client
    monkeypatch.setattr(s3backend, "_session", None)       # credentials read from here
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret-of-anyone")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]               # closed again: nothing listens there
    nowhere = S3Backend("bkt", "pre/", client=make_client(f"http://127.0.0.1:{port}", attempts=1))
    try:
        for call, verb, name in ((lambda: nowhere.object_info("chunks/ab/x"), "read", "chunks/ab/x"),
                                 (lambda: nowhere.mtime_ns("manifests/m"), "read", "manifests/m")):
            with pytest.raises(StorageUnavailable) as caught:
                call()
            assert str(caught.value) == (f"cannot reach the S3 endpoint to {verb} s3://bkt/pre/{name} "
                                         f"(EndpointConnectionError)")
    finally:
        nowhere.close()


def test_s3_objects_deleted_are_gone_and_listed_times_are_the_stored_ones(s3) -> None:  # type: ignore[no-untyped-def]
    """A chunk deleted is absent at once for this backend too (its listing and what it wrote
    forget it); a listing's times are the store's own (prune ages objects by them); a
    closed backend has finished every upload it began."""
    from format.errors import ObjectMissing
    from format.location import open_backend
    location = s3.new_location()
    backend = open_backend(location)
    name = "chunks/ab/" + "ab" * 32
    backend.put(name, b"chunk")
    assert backend.size(name) == 5                      # the listing is taken, and holds it
    backend.delete(name)
    assert not backend.exists(name)
    with pytest.raises(ObjectMissing):
        backend.size(name)
    batch = [f"chunks/cd/{n:02x}" + "cd" * 31 for n in range(3)]
    for k in batch:
        backend.put(k, b"trash")
    assert all(backend.exists(k) for k in batch)        # in the listing
    assert backend.delete_many(batch) == {}
    assert not any(backend.exists(k) for k in batch)
    backend.put("manifests/m1", b"m")
    (listed_name, size, mtime), = list(backend.list_stat("manifests"))
    assert (listed_name, size) == ("manifests/m1", 1)
    assert mtime == backend.mtime_ns("manifests/m1")
    late = {f"chunks/{n:02x}/" + f"{n:02x}" * 32: os.urandom(3000) for n in range(8)}
    for k, v in late.items():
        backend.put(k, v, sync=False)
    backend.close()                                     # without a sync first
    other = open_backend(location)
    for k, v in late.items():
        assert other.get(k) == v


def test_a_piece_of_the_wrong_length_names_its_slot() -> None:
    cid = b"\x07" * 32
    index = FixedIndex.empty(4 << 16, 1 << 16)
    index.patches[2] = [(100, 10, cid)]
    with pytest.raises(CorruptObject) as caught:
        index.assemble(2, lambda _cid: b"x" * 9)
    assert str(caught.value) == "object slot 2 is damaged: piece at 100 holds 9 bytes, not 10"
    assert index.assemble(2, lambda _cid: b"y" * 10)[100:110] == b"y" * 10


def test_a_writers_temporary_file_is_named_as_docs_format_says(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``<name>.<pid>-<8 hex>.tmp`` (docs/format.md): what prune recognises as a writer's
    temporary file to delete when it is a day old. Seen here as a failed rename leaves it to
    be removed."""
    import errno as errno_module
    import re
    from format import backend as backend_module
    backend = LocalBackend(tmp_path / "objects")
    removed: list[str] = []
    real_unlink = backend_module._unlink_quietly
    monkeypatch.setattr(backend_module, "_unlink_quietly", lambda p: (removed.append(p), real_unlink(p))[1])

    def refuse(src: str, dst: str) -> None:
        raise OSError(errno_module.EIO, "refused", dst)
    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(OSError):
        backend.put("chunks/ab/" + "ab" * 32, b"data")
    final = backend.path("chunks/ab/" + "ab" * 32)
    assert len(removed) == 1
    assert re.fullmatch(re.escape(final) + rf"\.{os.getpid()}-[0-9a-f]{{8}}\.tmp", removed[0])
    assert not os.path.exists(removed[0])
