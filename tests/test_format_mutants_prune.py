"""Prune's phases in-process on a local repository, so that the mutation run of ``format/``
sees them (docs/security.md, "Mutation testing of the format"; the protocol: docs/format.md
section 9.3). The command-line and multi-process tests of prune (``test_prune_concurrent.py``,
``test_lifecycle.py``) run in subprocesses, which the mutation run does not see.

Other processes are present as their records: a lease written as a live backup, reader or
prune of this host writes it (this process's pid, so it counts as live), tombstones with a
chosen time. What is asserted is what a user relies on: a generation a running backup or
reader may still use is kept, objects a running backup may have just written are not
condemned, a batch is swept only when the backups that ran while it was filled have ended,
and anything a generation written meanwhile references comes back, byte for byte.

S3 Object Lock and S3's listings are prune's other branches. A local folder cannot refuse a
delete, and the real thing (``test_s3_object_lock.py``) needs an S3 server and the command
line; here ``_LockingBackend`` — a local backend with the retention calls of
``format/s3backend.py`` — refuses to delete or move what it holds under retention, and
``_ListingBackend`` gives sizes and times with its listing and deletes in batches, as S3 does.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from format import records
from format.errors import CorruptObject, ObjectLocked, ObjectMissing
from format.fixedindex import FixedIndex
from format.immutability import (Kept, delete_unless_locked, extend_retention, locked_at_least_until,
                                 locked_until)
from format.leases import SKEW_NS, TTL_NS, leases, live_leases
from format.manifest import DiskEntry, Manifest
from format.marks import PROTECTIONS, TOMBSTONES, forget, protect
from format.backend import LocalBackend
from format.prune import EXPIRED_LEASE_AGE_NS, PENDING, TRASH, PruneReport, prune
from format.repository import Repository, chunk_name, index_name
from format.s3backend import Retention

CS = 64 << 10
S = 1_000_000_000


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("REPOFS_PRUNE_FRESH_SECONDS", raising=False)
    monkeypatch.delenv("REPOFS_PRUNE_KILL_AFTER", raising=False)
    Repository.init(tmp_path / "repo", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    return Repository.open(tmp_path / "repo", PASSPHRASE)


def _chunk(repo, data: bytes, age_s: float | None = None) -> bytes:
    cid = repo.chunk_id(data)
    repo.put_chunk(cid, data)
    if age_s is not None:
        _set_mtime(repo, chunk_name(cid), time.time_ns() - int(age_s * S))
    return cid


def _set_mtime(repo, name: str, ns: int) -> None:
    os.utime(repo.backend.path(name), ns=(ns, ns))


def _generation(repo, gen: str, cids: list[bytes], vm: str = "v", t: int = 1) -> str:
    index = FixedIndex.empty(len(cids) * CS, CS)
    for n, cid in enumerate(cids):
        index.set(n, cid)
    return repo.put_manifest(Manifest(vm, gen, "t", t, None, [DiskEntry("d", len(cids) * CS, CS,
                                                                       repo.put_index(index))]))


def _lease(repo, kind: str, since_ns: int, expires_ns: int | None = None, pid: int | None = None) -> str:
    """The lease record of another process of this host (ours: it counts as live)."""
    name = os.urandom(16).hex()
    records.put(repo, "leases", name, records.MAGIC_LEASE, {
        "kind": kind, "since_ns": since_ns, "expires_ns": expires_ns or time.time_ns() + TTL_NS,
        "host": socket.gethostname(), "pid": os.getpid() if pid is None else pid, "vm": None})
    return name


def _tombstone(repo, manifest: str, forgotten_ns: int) -> None:
    records.put(repo, TOMBSTONES, manifest, records.MAGIC_TOMBSTONE,
                {"manifest": manifest, "forgotten_ns": forgotten_ns, "vm": "v", "generation": "g"})


def _trash(repo) -> list[str]:
    return sorted(repo.backend.list(TRASH))


def _old(repo, gen: str = "g", vm: str = "v", age_s: float = 3600) -> tuple[str, bytes]:
    """A generation of one chunk, its objects written ``age_s`` ago."""
    data = f"{vm}/{gen}".encode() * 100
    cid = _chunk(repo, data, age_s)
    name = _generation(repo, gen, [cid], vm=vm)
    index = repo.manifests()[name].disks[0].index
    _set_mtime(repo, index_name(index), time.time_ns() - int(age_s * S))
    return name, cid


# --- which forgotten generations go -----------------------------------------------------------

@pytest.mark.parametrize("kind, offset_s, kept", [
    ("backup", -10, True),                  # began before the forget: may still use it
    ("reader", -10, True),
    ("backup", SKEW_NS // S, True),         # within the clock skew after it: still held
    ("backup", SKEW_NS // S + 1, False),    # later: it never listed that generation
    ("prune", -10, False),                  # another prune holds nothing
])
def test_a_running_process_holds_a_generation_forgotten_after_it_began(repo, kind, offset_s, kept):
    name, cid = _old(repo)
    forgotten = time.time_ns() - 2 * SKEW_NS
    _tombstone(repo, name, forgotten)
    other = _lease(repo, kind, forgotten + offset_s * S)
    report = prune(repo)
    assert report.generations_removed == (0 if kept else 1)
    assert repo.backend.exists(f"manifests/{name}") == kept
    assert records.names(repo, TOMBSTONES) == [name]          # the record of the forget stays
    if kind == "backup":
        # the batch waits for this backup: nothing is deleted while it runs
        assert report.batches_swept == 0 and report.batches_waiting == 1
        assert report.waiting_for == [other] and report.freed_chunks == 0
        assert repo.get_chunk(cid) == b"v/g" * 100          # moved aside, still readable
    else:
        assert report.batches_swept == 1 and report.batches_waiting == 0 and report.waiting_for == []
        assert repo.has_chunk(cid) == kept and report.freed_chunks == (0 if kept else 1)


def test_a_generation_is_removed_when_the_backup_that_held_it_ends(repo):
    name, cid = _old(repo)
    keep, keep_cid = _old(repo, "k")
    backup = repo.lease("backup").begin()
    try:
        forget(repo, name, "v", "g")
        first = prune(repo)
        assert first.generations_removed == 0 and first.moved_chunks == 0      # all fresh
        assert first.batches_waiting == 1 and first.waiting_for == [backup.name]
        (batch,) = records.names(repo, PENDING)
        doc = records.get(repo, PENDING, batch, records.MAGIC_BATCH)
        assert doc["state"] == "sealed" and doc["writers"] == [backup.name]
    finally:
        backup.end()
    second = prune(repo)
    assert second.generations_removed == 1 and second.batches_swept == 2
    assert (second.moved_chunks, second.freed_chunks, second.moved_indexes, second.freed_indexes) == (1, 1, 1, 1)
    assert not repo.has_chunk(cid) and repo.get_chunk(keep_cid) == b"v/k" * 100
    assert records.names(repo, PENDING) == [] and _trash(repo) == []
    assert os.listdir(os.path.join(repo.backend.root, TRASH)) == []      # the batches' folders too
    assert leases(repo) == []


def test_protection_wins_and_protections_of_vanished_generations_are_dropped(repo):
    name, cid = _old(repo)
    forget(repo, name, "v", "g")
    protect(repo, name)
    protect(repo, "ab" * 16)                                  # its manifest is gone
    dry = prune(repo, dry_run=True)
    assert records.names(repo, PROTECTIONS) == sorted([name, "ab" * 16])   # a dry run writes nothing
    report = prune(repo)
    assert report.generations_removed == 0 and repo.get_chunk(cid) == b"v/g" * 100
    assert records.names(repo, PROTECTIONS) == [name]
    assert (dry.generations_removed, dry.freed_chunks) == (0, 0)


def test_expired_leases_are_deleted_a_day_after_their_end(repo):
    now = time.time_ns()
    gone = _lease(repo, "backup", 1, expires_ns=now - EXPIRED_LEASE_AGE_NS - 60 * S)
    recent = _lease(repo, "backup", 1, expires_ns=now - EXPIRED_LEASE_AGE_NS + 60 * S)
    prune(repo, dry_run=True)
    assert {i.name for i in leases(repo)} == {gone, recent}
    report = prune(repo)
    assert {i.name for i in leases(repo)} == {recent}
    assert report.batches_swept == 1 and report.batches_waiting == 0   # expired: not live


def test_a_dry_run_reports_what_a_run_does_and_changes_nothing(repo):
    name, cid = _old(repo)
    _old(repo, "k")
    stray = _chunk(repo, b"stray" * 99, age_s=3600)
    forget(repo, name, "v", "g")
    before = sorted(repo.backend.list("chunks")) + sorted(repo.backend.list("manifests"))
    dry = prune(repo, dry_run=True)
    assert sorted(repo.backend.list("chunks")) + sorted(repo.backend.list("manifests")) == before
    assert records.names(repo, PENDING) == [] and leases(repo) == [] and _trash(repo) == []
    assert dry.dry_run and dry.batches_swept == 0
    real = prune(repo)
    assert not real.dry_run
    for field in ("generations_removed", "referenced_chunks", "moved_chunks", "moved_indexes", "moved_bytes"):
        assert getattr(dry, field) == getattr(real, field), field
    assert (dry.freed_chunks, dry.freed_indexes, dry.freed_bytes) == \
        (real.freed_chunks, real.freed_indexes, real.freed_bytes) == (2, 1, real.moved_bytes)
    assert not repo.has_chunk(stray) and not repo.has_chunk(cid)


# --- what counts as fresh ---------------------------------------------------------------------

@pytest.mark.parametrize("env, margin_s", [(None, SKEW_NS // S), ("", SKEW_NS // S), ("bad", SKEW_NS // S),
                                           ("2", 2), ("0.5", 0.5)])
def test_objects_written_shortly_before_a_running_backup_began_are_not_condemned(repo, monkeypatch, env, margin_s):
    if env is not None:
        monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", env)
    since = time.time_ns() - 3600 * S
    _lease(repo, "backup", since)
    edge = since - int(margin_s * S)
    cases = {"older": edge - 1, "at the edge": edge, "newer": edge + 1, "after": since + 1}
    cids = {}
    for label, mtime in cases.items():
        cids[label] = _chunk(repo, label.encode() * 50)
        _set_mtime(repo, chunk_name(cids[label]), mtime)
    report = prune(repo)
    moved = {label for label, cid in cids.items() if not repo.backend.exists(chunk_name(cid))}
    assert moved == {"older"} and report.moved_chunks == 1
    assert report.moved_bytes == repo.backend.size(f"{TRASH}/{records.names(repo, PENDING)[0]}/"
                                                   f"{chunk_name(cids['older'])}")


def test_without_running_backups_everything_unreferenced_before_now_is_condemned(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    _lease(repo, "reader", time.time_ns() - 3600 * S)         # readers do not write
    old = _chunk(repo, b"old" * 50, age_s=1)
    future = _chunk(repo, b"future" * 50)
    _set_mtime(repo, chunk_name(future), time.time_ns() + 3600 * S)
    report = prune(repo)
    assert not repo.has_chunk(old) and repo.has_chunk(future) and report.freed_chunks == 1


# --- sweeping, and what comes back -----------------------------------------------------------

def test_a_chunk_a_generation_written_during_the_prune_needs_comes_back(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    data = b"needed later" * 100
    cid = _chunk(repo, data, age_s=3600)
    gone = _chunk(repo, b"gone" * 100, age_s=3600)
    written: list[str] = []

    def progress(text: str) -> None:
        if text == "moving unreferenced objects aside":      # marks are taken: a backup commits
            written.append(_generation(repo, "new", [cid]))
    report = prune(repo, progress=progress)
    assert written and report.moved_chunks == 2 and report.freed_chunks == 1
    # the new generation's index may be listed after it was written (a folder walk lists each
    # shard when it gets there): then it is moved aside and put back like the chunk
    assert report.restored == 1 + report.moved_indexes
    assert repo.backend.get(chunk_name(cid)) and repo.get_chunk(cid) == data
    assert not repo.has_chunk(gone) and _trash(repo) == []
    fresh = Repository.open(repo.backend.root, PASSPHRASE)
    index = fresh.get_index(fresh.manifests()[written[0]].disks[0].index)
    assert index.assemble(0, fresh.get_chunk) == data


@pytest.mark.parametrize("again", [False, True])
def test_a_later_sweep_puts_back_what_a_backup_that_ran_meanwhile_needs(repo, monkeypatch, again):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    data = b"reused" * 100
    cid = _chunk(repo, data, age_s=3600)
    backup = repo.lease("backup").begin()
    try:
        first = prune(repo)
        assert first.moved_chunks == 1 and first.batches_waiting == 1 and not repo.has_chunk(cid)
        if again:                                            # the backup stored it once more
            repo.put_chunk(cid, data)
        _generation(repo, "made meanwhile", [cid])
    finally:
        backup.end()
    second = prune(repo)
    assert second.restored == 1 and second.freed_chunks == 0 and second.batches_swept == 2
    assert repo.get_chunk(cid) == data and _trash(repo) == []
    assert records.names(repo, PENDING) == []


def test_prune_waits_for_a_backup_that_ends_within_its_wait(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    cid = _chunk(repo, b"doomed" * 100, age_s=3600)
    backup = repo.lease("backup").begin()
    timer = threading.Timer(0.3, backup.end)
    timer.start()
    try:
        report = prune(repo, wait=30)
    finally:
        timer.join()
    assert report.batches_swept == 1 and report.batches_waiting == 0 and report.freed_chunks == 1
    assert not repo.has_chunk(cid)


def test_a_batch_another_running_prune_is_filling_is_left_to_it(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    data = b"in another batch" * 10
    cid = _chunk(repo, data, age_s=3600)
    other = _lease(repo, "prune", time.time_ns())
    batch = "cd" * 16
    records.put(repo, PENDING, batch, records.MAGIC_BATCH, {"state": "moving", "started_ns": 5, "owner": other})
    repo.backend.rename(chunk_name(cid), f"{TRASH}/{batch}/{chunk_name(cid)}")
    report = prune(repo)
    assert report.batches_swept == 1                          # its own, empty
    assert records.get(repo, PENDING, batch, records.MAGIC_BATCH)["state"] == "moving"
    assert repo.get_chunk(cid) == data                          # still in that batch, readable
    records.delete(repo, "leases", other)                     # that prune died
    later = prune(repo)
    assert later.batches_swept == 2 and later.freed_chunks == 1 and not repo.has_chunk(cid)


def test_a_sealed_batch_keeps_its_writers_and_start(repo):
    backup = _lease(repo, "backup", time.time_ns())
    batch = "ef" * 16
    records.put(repo, PENDING, batch, records.MAGIC_BATCH,
                {"state": "sealed", "started_ns": 7, "sealed_ns": 8, "writers": [backup, "00" * 16]})
    report = prune(repo)
    assert report.batches_waiting == 2 and report.waiting_for == [backup]
    assert records.get(repo, PENDING, batch, records.MAGIC_BATCH)["writers"] == [backup, "00" * 16]
    mine = [b for b in records.names(repo, PENDING) if b != batch]
    doc = records.get(repo, PENDING, mine[0], records.MAGIC_BATCH)
    assert doc["state"] == "sealed" and doc["writers"] == [backup] and doc["started_ns"] > 0
    assert doc["sealed_ns"] >= doc["started_ns"]


def test_trash_that_is_not_an_object_is_left_alone(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    batch = "12" * 16
    records.put(repo, PENDING, batch, records.MAGIC_BATCH, {"state": "sealed", "started_ns": 1, "writers": []})
    repo.backend.put(f"{TRASH}/{batch}/chunks/zz/notes", b"x")
    repo.backend.put("chunks/ab/not-a-chunk", b"x")
    _set_mtime(repo, "chunks/ab/not-a-chunk", 1)
    report = prune(repo)
    assert report.freed_chunks == 0 and report.moved_chunks == 0
    assert repo.backend.get(f"{TRASH}/{batch}/chunks/zz/notes") == b"x"
    assert repo.backend.exists("chunks/ab/not-a-chunk")
    assert batch not in records.names(repo, PENDING)          # swept all it could


def test_a_killed_prune_leaves_what_the_next_finishes(repo, monkeypatch):
    """REPOFS_PRUNE_KILL_AFTER kills the process: here the kill is caught before it lands."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    cids = [_chunk(repo, bytes([k]) * 1000, age_s=3600) for k in range(3)]
    kills: list[int] = []

    class Killed(Exception):
        pass

    real_kill = os.kill

    def fake_kill(pid, sig):
        if sig != signal.SIGKILL:
            return real_kill(pid, sig)               # a lease's liveness probe
        kills.append(pid)
        raise Killed
    monkeypatch.setattr(os, "kill", fake_kill)
    monkeypatch.setenv("REPOFS_PRUNE_KILL_AFTER", "2")
    with pytest.raises(Killed):
        prune(repo)
    assert kills == [os.getpid()] and len(_trash(repo)) == 3        # killed at the step after 2
    monkeypatch.undo()
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    monkeypatch.setenv("REPOFS_PRUNE_KILL_AFTER", "-1")         # not a count: no kill
    for lease in leases(repo):                                  # the killed run's lease
        records.delete(repo, "leases", lease.name)
    report = prune(repo)
    assert report.freed_chunks == 3 and not any(repo.has_chunk(c) for c in cids)
    assert records.names(repo, PENDING) == [] and _trash(repo) == []


# --- S3 listings and Object Lock --------------------------------------------------------------

class _ListingBackend(LocalBackend):
    """Sizes and times with the listing, deletes in batches: S3's shape of the protocol."""

    open_folder = None      # no folders to hold open: prune takes the listing path, as on S3

    def __init__(self, root):
        super().__init__(root)
        self.batches: list[list[str]] = []
        self.stats = 0

    def list_stat(self, prefix: str):
        for name in self.list(prefix):
            yield name, os.stat(self.path(name)).st_size, os.stat(self.path(name)).st_mtime_ns

    def size(self, name: str) -> int:
        self.stats += not name.startswith(("leases/", "pending/"))     # records are bounded by size
        return super().size(name)

    def mtime_ns(self, name: str) -> int:
        self.stats += 1
        return super().mtime_ns(name)

    def delete_many(self, names: list[str]) -> dict:
        self.batches.append(list(names))
        failures = {}
        for name in names:
            try:
                self.delete(name)
            except ObjectMissing as e:
                failures[name] = e
        return failures


def test_prune_on_a_listing_with_sizes_asks_nothing_per_object(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    repo.backend = _ListingBackend(repo.backend.root)
    keep, keep_cid = _old(repo, "k")
    stray = [_chunk(repo, bytes([k]) * 900, age_s=3600) for k in range(3)]
    sizes = sum(repo.backend.size(chunk_name(c)) for c in stray)
    repo.backend.stats = 0
    report = prune(repo)
    assert repo.backend.stats == 0
    assert (report.moved_chunks, report.freed_chunks, report.moved_bytes, report.freed_bytes) == (3, 3, sizes, sizes)
    assert len(repo.backend.batches) == 1 and len(repo.backend.batches[0]) == 3
    assert not any(repo.has_chunk(c) for c in stray) and repo.has_chunk(keep_cid)


class _LockingBackend(LocalBackend):
    """A local backend with S3 Object Lock's calls: objects it holds under retention cannot
    be deleted or moved (``ObjectLocked``), and objects moved into the trash take the
    bucket's default retention when ``lock_trash`` is set."""

    open_folder = None      # an object store's shape: prune takes the listing path

    def __init__(self, root, days: int = 8):
        super().__init__(root)
        self.policy = Retention("COMPLIANCE", days)
        self.until: dict[str, dt.datetime] = {}
        self.written: set[str] = set()
        self.retained: list[tuple[str, dt.datetime]] = []
        self.lock_trash: dt.datetime | None = None
        self.parallelism = 3

    def retention(self):
        return self.policy

    def retain(self, name: str, until: dt.datetime) -> None:
        self.retained.append((name, until))
        self.until[name] = until

    def retained_until(self, name: str) -> dt.datetime | None:
        if not self.exists(name):
            raise ObjectMissing(name)
        return self.until.get(name)

    def _locked(self, name: str) -> bool:
        until = self.until.get(name)
        return until is not None and until > dt.datetime.now(dt.timezone.utc)

    def delete(self, name: str) -> None:
        if self._locked(name):
            raise ObjectLocked(name)
        super().delete(name)

    def rename(self, name: str, new_name: str) -> None:
        if self._locked(name):
            raise ObjectLocked(name)
        super().rename(name, new_name)
        if self.lock_trash is not None:
            self.until[new_name] = self.lock_trash


def _utc(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def test_prune_skips_and_reports_what_retention_keeps(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    backend = repo.backend = _LockingBackend(repo.backend.root, days=8)
    lifetime = 10 * 86400                                      # 8 days + 2 of slack
    now = dt.datetime.now(dt.timezone.utc)
    locked_gen, locked_cid = _old(repo, "locked", age_s=lifetime + 3600)
    backend.until[f"manifests/{locked_gen}"] = now + dt.timedelta(days=3)
    forget(repo, locked_gen, "v", "locked")
    recent = _chunk(repo, b"recent" * 100, age_s=lifetime - 3600)      # locked from its time alone
    extended = _chunk(repo, b"extended" * 100, age_s=lifetime + 3600)  # a later backup extended it
    backend.until[chunk_name(extended)] = now + dt.timedelta(days=5)
    free = _chunk(repo, b"free" * 100, age_s=lifetime + 3600)
    report = prune(repo)
    assert report.generations_removed == 0 and report.locked_manifests == 1
    assert repo.get_chunk(locked_cid) == b"v/locked" * 100             # still marked
    assert report.locked_objects == 2
    assert report.locked_bytes == backend.size(chunk_name(recent)) + backend.size(chunk_name(extended))
    assert repo.has_chunk(recent) and repo.has_chunk(extended) and not repo.has_chunk(free)
    assert report.freed_chunks == 1 and report.moved_chunks == 1
    latest = _utc(report.locked_until)
    # the latest date known: the extended chunk's, later than the listing's bound of ``recent``
    assert abs((latest - (now + dt.timedelta(days=5))).total_seconds()) < 2


def test_trash_that_retention_locked_stays_with_its_batch_until_a_later_prune(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    backend = repo.backend = _LockingBackend(repo.backend.root, days=1)
    cid = _chunk(repo, b"doomed" * 100, age_s=3 * 86400)
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=5)
    backend.lock_trash = until
    report = prune(repo)
    assert report.moved_chunks == 1 and report.freed_chunks == 0 and report.locked_objects == 1
    assert report.locked_bytes == report.moved_bytes > 0
    assert report.locked_until == until.strftime("%Y-%m-%dT%H:%M:%SZ")
    (batch,) = records.names(repo, PENDING)
    assert _trash(repo) == [f"{TRASH}/{batch}/{chunk_name(cid)}"]
    backend.lock_trash = None
    backend.until.clear()                                       # the retention ended
    later = prune(repo)
    assert later.freed_chunks == 1 and records.names(repo, PENDING) == [] and _trash(repo) == []


def test_note_locked_keeps_the_latest_date_in_utc(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")               # the host's zone plays no part
    time.tzset()
    report = PruneReport()
    east = dt.timezone(dt.timedelta(hours=5))
    report.note_locked(dt.datetime(2030, 1, 2, 8, 0, 0, tzinfo=east), 10)
    report.note_locked(None, 5)
    report.note_locked(dt.datetime(2029, 1, 1, tzinfo=dt.timezone.utc), manifest=True)
    assert report.locked_until == "2030-01-02T03:00:00Z"
    report.note_locked(dt.datetime(2030, 1, 2, 3, 0, 1, tzinfo=dt.timezone.utc))
    assert report.locked_until == "2030-01-02T03:00:01Z"
    report.note_locked(None, manifest=True)
    assert (report.locked_objects, report.locked_bytes, report.locked_manifests) == (3, 15, 2)
    monkeypatch.undo()
    time.tzset()


def test_retention_of_what_a_generation_needs_is_extended_once(tmp_path):
    backend = _LockingBackend(tmp_path, days=8)
    now = dt.datetime(2030, 5, 1, tzinfo=dt.timezone.utc)
    backend.written = {"chunks/aa/new"}
    names = ["chunks/aa/old", "chunks/aa/new", "indexes/bb/i", "chunks/aa/old", "config"]
    assert extend_retention(backend, names, now=now) == 3
    assert sorted(backend.retained) == [(n, now + dt.timedelta(days=10))
                                        for n in ("chunks/aa/old", "config", "indexes/bb/i")]
    assert extend_retention(backend, ["chunks/aa/new"], now=now) == 0
    backend.policy = None
    assert extend_retention(backend, ["x"], now=now) == 0
    before = dt.datetime.now(dt.timezone.utc)
    backend.policy = Retention("GOVERNANCE", 4)
    backend.retained.clear()
    assert extend_retention(backend, ["y"]) == 1
    ((name, until),) = backend.retained
    after = dt.datetime.now(dt.timezone.utc)
    assert name == "y" and before + dt.timedelta(days=5) <= until <= after + dt.timedelta(days=5)


def test_delete_unless_locked_deletes_what_it_can_and_names_the_rest(tmp_path):
    backend = _LockingBackend(tmp_path)
    for name in ("a/1", "a/2", "a/3"):
        backend.put(name, b"x")
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    backend.until["a/2"] = until
    deleted, kept = delete_unless_locked(backend, ["a/1", "a/2", "a/3", "a/missing"])
    assert deleted == 3 and kept == [Kept("a/2", until)]
    assert backend.exists("a/2") and not backend.exists("a/1") and not backend.exists("a/3")
    assert locked_until(backend, "a/missing") is None and locked_until(backend, "a/2") == until
    assert locked_until(LocalBackend(tmp_path), "a/2") is None


def test_an_object_is_certainly_locked_until_its_writing_plus_the_whole_retention(tmp_path):
    backend = _LockingBackend(tmp_path, days=8)
    written = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    ns = int(written.timestamp() * S)
    end = written + dt.timedelta(days=10)
    assert locked_at_least_until(backend, ns, now=end - dt.timedelta(seconds=1)) == end
    assert locked_at_least_until(backend, ns, now=end) is None
    assert locked_at_least_until(LocalBackend(tmp_path), ns, now=written) is None
    backend.policy = None
    assert locked_at_least_until(backend, ns, now=written) is None
    assert locked_at_least_until(_LockingBackend(tmp_path), time.time_ns()) is not None


def test_object_locked_names_the_object():
    e = ObjectLocked("chunks/aa/x")
    assert e.name == "chunks/aa/x" and str(e) == "object chunks/aa/x is locked by its retention period"
    assert str(ObjectLocked("n", "other words")) == "other words"


def test_live_leases_are_those_of_running_processes(repo):
    now = time.time_ns()
    mine = _lease(repo, "reader", now)
    _lease(repo, "backup", now, pid=_dead_pid())
    _lease(repo, "backup", now, expires_ns=now - SKEW_NS - 1)
    assert [i.name for i in live_leases(repo)] == [mine]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid



def test_a_protection_record_names_its_generation_and_time(repo):
    before = time.time_ns()
    protect(repo, "ab" * 16)
    doc = records.get(repo, PROTECTIONS, "ab" * 16, records.MAGIC_PROTECTION)
    assert set(doc) == {"manifest", "protected_ns"} and doc["manifest"] == "ab" * 16
    assert before <= doc["protected_ns"] <= time.time_ns()


def test_holes_are_not_counted_as_referenced_chunks(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    a, b = _chunk(repo, b"a" * 900), _chunk(repo, b"b" * 900)
    index = FixedIndex.empty(3 * CS, CS)
    index.set(0, a)
    index.set(2, b)
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", 3 * CS, CS, repo.put_index(index))]))
    assert prune(repo).referenced_chunks == 2


class _SweptMeanwhile(LocalBackend):
    """Another prune sweeps the first trash object between our listing and our look at it
    (on the listing path; the folder path's twin is in test_prune_shards.py)."""

    open_folder = None

    def list(self, prefix: str):
        for n, name in enumerate(super().list(prefix)):
            if prefix.startswith(TRASH) and n == 0:
                super().delete(name)
            yield name


def test_a_sweep_goes_on_past_an_object_another_prune_swept(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    cids = [_chunk(repo, bytes([k]) * 700, age_s=3600) for k in range(3)]
    repo.backend = _SweptMeanwhile(repo.backend.root)
    report = prune(repo)
    assert report.moved_chunks == 3 and report.freed_chunks == 2         # the third: freed by the other
    assert not any(repo.has_chunk(c) for c in cids) and _trash(repo) == []
    assert records.names(repo, PENDING) == []


@pytest.mark.parametrize("case, reason", [("not its id", "content does not match its id"),
                                          ("bad table", "index patch table: slot count out of range")])
def test_prune_stops_at_a_damaged_index_with_patches_and_deletes_nothing(repo, monkeypatch, case, reason):
    from format.fixedindex import COUNT, HEADER
    from format.sealed import MAGIC_INDEX
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    stray = _chunk(repo, b"unreferenced" * 10, age_s=3600)
    table = COUNT.pack(0) if case == "bad table" else COUNT.pack(1) + bytes(16) + bytes(40)
    plain = HEADER.pack(CS, CS, 1, 1) + bytes([7]) * 32 + table
    iid = repo.sealer.object_id(plain) if case == "bad table" else bytes(31) + b"\x01"
    name = index_name(iid.hex())
    repo.backend.put(name, repo.sealer.seal(MAGIC_INDEX, iid, plain))
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", CS, CS, iid.hex())]))
    with pytest.raises(CorruptObject) as info:
        prune(repo)
    assert (info.value.name, info.value.reason) == (name, reason)
    assert repo.has_chunk(stray) and _trash(repo) == []


@pytest.mark.parametrize("compressible", [True, False])
def test_ids_that_straddle_the_pages_of_a_large_index_are_marked_whole(repo, monkeypatch, compressible):
    """The id table is read a page (1 MiB) at a time; the id at slot 32767 crosses the first
    page's end. Random ids around it make the index incompressible, zeros elsewhere do not."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    slots = 40_000
    index = FixedIndex.empty(slots * CS, CS)
    near = range(32_760, 32_776)
    cids = {n: _chunk(repo, n.to_bytes(4, "big") * 10, age_s=3600) for n in near}
    for n, cid in cids.items():
        index.set(n, cid)
    if not compressible:
        rng = __import__("random").Random(9)
        for n in range(0, slots, 3):
            if n not in cids:
                index.set(n, rng.randbytes(32))                  # ids of chunks never stored
    stray = _chunk(repo, b"stray" * 100, age_s=3600)
    repo.put_manifest(Manifest("v", "g", "t", 1, None,
                               [DiskEntry("d", slots * CS, CS, repo.put_index(index))]))
    report = prune(repo)
    assert all(repo.has_chunk(cid) for cid in cids.values()) and not repo.has_chunk(stray)
    assert report.freed_chunks == 1


def test_locked_trash_holds_back_only_itself(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    backend = repo.backend = _LockingBackend(repo.backend.root, days=1)
    cids = [_chunk(repo, bytes([k]) * 800, age_s=3 * 86400) for k in range(6)]
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=5)
    locked = chunk_name(cids[2])
    real_rename = backend.rename

    def rename(name, new_name):                  # the bucket's default retention, on one object
        real_rename(name, new_name)
        if name == locked:
            backend.until[new_name] = until
    backend.rename = rename
    report = prune(repo)
    assert report.moved_chunks == 6 and report.freed_chunks == 5 and report.locked_objects == 1
    assert sum(repo.backend.exists(f"{TRASH}/{b}/{locked}") for b in records.names(repo, PENDING)) == 1


class _SweptMeanwhileInFolders(LocalBackend):
    """The folder path's twin: another prune sweeps the first object of each trash folder
    right after our listing of that folder."""

    def open_folder(self, name: str, *, create: bool = False):
        folder = super().open_folder(name, create=create)
        if folder is None or not name.startswith(TRASH):
            return folder
        listed = folder.names

        def names():
            objects, others = listed()
            if objects:
                os.unlink(self.path(f"{name}/{objects[0]}"))
            return objects, others
        folder.names = names
        return folder


def test_a_folder_sweep_goes_on_past_an_object_another_prune_swept(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    cids = [_chunk(repo, bytes([k]) * 700, age_s=3600) for k in range(3)]
    repo.backend = _SweptMeanwhileInFolders(repo.backend.root)
    report = prune(repo)
    swept = len({chunk_name(c).split("/")[1] for c in cids})      # one per shard holding one
    assert report.moved_chunks == 3 and report.freed_chunks == 3 - swept
    assert not any(repo.has_chunk(c) for c in cids) and _trash(repo) == []
