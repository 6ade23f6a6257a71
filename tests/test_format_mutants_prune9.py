"""Prune on a backend that lists with sizes and times and deletes in batches (S3's shape of
the protocol, docs/format.md section 9.3): the condemning walk and the sweep of
``format/prune.py``'s listing path, in-process so that the mutation run sees them
(docs/security.md, "Mutation testing of the format").

``_SortedListing`` lists in name order, as S3's ``ListObjectsV2`` does, so that a test can
place an object before another in the walk. What is asserted is what a user relies on: the
objects a generation written meanwhile needs come back and read byte for byte, the rest is
deleted and counted, a batch leaves nothing behind, no S3 ``DeleteObjects`` request names
more than the 1000 keys S3 accepts, and one object that cannot be moved or deleted (gone,
locked, written too recently) does not stop the walk over the others.
"""
from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from format import records
from format.immutability import locked_at_least_until
from format.manifest import DiskEntry, Manifest
from format.fixedindex import FixedIndex
from format.marks import TOMBSTONES
from format.prune import PENDING, TRASH, prune
from format.repository import Repository, chunk_name, index_name
from test_format_mutants_prune import CS, S, _chunk, _ListingBackend, _LockingBackend, _set_mtime, _trash

S3_DELETE_LIMIT = 1000          # keys in one DeleteObjects request


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("REPOFS_PRUNE_KILL_AFTER", raising=False)
    Repository.init(tmp_path / "repo", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    return Repository.open(tmp_path / "repo", PASSPHRASE)


class _SortedListing(_ListingBackend):
    """Listings in name order with sizes and times, deletes in batches: S3's shape."""

    def list_stat(self, prefix: str):
        for name in sorted(self.list(prefix)):
            st = os.stat(self.path(name))
            yield name, st.st_size, st.st_mtime_ns


def _forgotten(repo, gen: str, data: bytes) -> tuple[str, bytes, str]:
    """A generation of one chunk, forgotten long ago: (manifest name, chunk id, index hex id)."""
    cid = _chunk(repo, data)
    index = FixedIndex.empty(CS, CS)
    index.set(0, cid)
    iid = repo.put_index(index)
    name = repo.put_manifest(Manifest("v", gen, "t", 1, None, [DiskEntry("d", CS, CS, iid)]))
    records.put(repo, TOMBSTONES, name, records.MAGIC_TOMBSTONE,
                {"manifest": name, "forgotten_ns": time.time_ns() - 3600 * S, "vm": "v", "generation": gen})
    return name, cid, iid


def _one_chunk_index(cid: bytes) -> FixedIndex:
    index = FixedIndex.empty(CS, CS)
    index.set(0, cid)
    return index


def test_a_listed_sweep_puts_back_what_a_backup_wrote_meanwhile_and_frees_the_rest(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    repo.backend = _SortedListing(repo.backend.root)
    reused = b"stored again by the backup" * 40
    _a, a_cid, a_iid = _forgotten(repo, "a", reused)
    _b, b_cid, b_iid = _forgotten(repo, "b", b"b" * 900)
    _c, c_cid, c_iid = _forgotten(repo, "c", b"c" * 900)
    referenced = b"only referenced again" * 40
    stray = _chunk(repo, referenced)
    backup = repo.lease("backup").begin()
    try:
        first = prune(repo)
        assert first.generations_removed == 3 and first.batches_waiting == 1
        assert (first.moved_chunks, first.moved_indexes) == (4, 3)
        assert not repo.backend.exists(index_name(a_iid)) and not repo.has_chunk(stray)
        # the backup stores chunk and index of "a" again, and refers to the stray chunk
        # without storing it (it had listed it before the prune moved it)
        repo.put_chunk(a_cid, reused)
        assert repo.put_index(_one_chunk_index(a_cid)) == a_iid
        again = repo.put_manifest(Manifest("v", "again", "t", 2, None, [DiskEntry("d", CS, CS, a_iid)]))
        both = FixedIndex.empty(2 * CS, CS)
        both.set(0, a_cid)
        both.set(1, stray)
        meanwhile = repo.put_manifest(Manifest("v", "meanwhile", "t", 3, None,
                                               [DiskEntry("d", 2 * CS, CS, repo.put_index(both))]))
    finally:
        backup.end()
    (batch,) = records.names(repo, PENDING)
    trashed = {n: repo.backend.size(n) for n in _trash(repo)}
    freed = sum(size for n, size in trashed.items()
                if n.endswith((chunk_name(b_cid), chunk_name(c_cid), index_name(b_iid), index_name(c_iid))))
    second = prune(repo)
    # back: index and chunk of "a" (their trash copies dropped, stored again) and the stray
    # chunk (moved back); freed: chunks and indexes of "b" and "c"
    assert second.restored == 3
    assert (second.freed_chunks, second.freed_indexes, second.freed_bytes) == (2, 2, freed)
    assert second.batches_swept == 2 and records.names(repo, PENDING) == [] and _trash(repo) == []
    assert not os.path.exists(repo.backend.path(f"{TRASH}/{batch}"))      # nor its folders
    fresh = Repository.open(repo.backend.root, PASSPHRASE)
    manifests = fresh.manifests()
    assert fresh.get_index(manifests[again].disks[0].index).assemble(0, fresh.get_chunk) == reused
    got = fresh.get_index(manifests[meanwhile].disks[0].index)
    assert got.assemble(0, fresh.get_chunk) + got.assemble(1, fresh.get_chunk) == reused + referenced
    for gone in (b_cid, c_cid):
        assert not fresh.has_chunk(gone)
    for gone_index in (b_iid, c_iid):
        assert not fresh.backend.exists(index_name(gone_index))


class _SweptBeforeTheBatch(_SortedListing):
    """Another prune deletes the first trash object between our listing and our batch delete."""

    def delete_many(self, names: list[str]) -> dict:
        if names and names[0].startswith(TRASH):
            self.delete(names[0])
        return super().delete_many(names)


def test_a_batch_delete_goes_on_past_an_object_another_prune_deleted(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    repo.backend = _SweptBeforeTheBatch(repo.backend.root)
    cids = [_chunk(repo, bytes([k]) * (500 + 100 * k)) for k in range(4)]
    sizes = sorted((chunk_name(c), repo.backend.size(chunk_name(c))) for c in cids)
    report = prune(repo)
    assert report.moved_chunks == 4
    assert (report.freed_chunks, report.freed_bytes) == (3, sum(size for _n, size in sizes[1:]))
    assert not any(repo.has_chunk(c) for c in cids) and _trash(repo) == []
    assert records.names(repo, PENDING) == []


def test_a_listed_sweep_passes_over_what_is_not_an_object(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    repo.backend = _SortedListing(repo.backend.root)
    cids = [_chunk(repo, bytes([k]) * 700) for k in range(3)]

    def progress(text: str) -> None:
        if text == "moving unreferenced objects aside":          # the batch's record exists
            (batch,) = records.names(repo, PENDING)
            repo.backend.put(f"{TRASH}/{batch}/0-notes", b"x")   # listed before chunks/
    report = prune(repo, progress=progress)
    assert report.freed_chunks == 3 and not any(repo.has_chunk(c) for c in cids)
    (left,) = _trash(repo)
    assert left.endswith("/0-notes") and repo.backend.get(left) == b"x"


def test_no_batch_delete_names_more_keys_than_s3_accepts(repo, monkeypatch):
    """A sealed batch of 1001 objects: one request of 1000 and one of 1. Prune never reads
    what it deletes, so the objects are plain files under chunk names."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    backend = repo.backend = _SortedListing(repo.backend.root)
    batch = "34" * 16
    records.put(repo, PENDING, batch, records.MAGIC_BATCH, {"state": "sealed", "started_ns": 1, "writers": []})
    count = S3_DELETE_LIMIT + 1
    for k in range(count):
        name = backend.path(f"{TRASH}/{batch}/" + chunk_name(k.to_bytes(32, "big")))
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as f:
            f.write(b"z" * 10)
    report = prune(repo)
    assert report.freed_chunks == count and report.freed_bytes == 10 * count
    assert sorted(len(b) for b in backend.batches if b) == [1, S3_DELETE_LIMIT]
    assert _trash(repo) == [] and records.names(repo, PENDING) == []


def test_objects_written_since_the_cutoff_are_passed_over_not_the_walk_stopped(repo, monkeypatch):
    """The cutoff is the oldest running backup's start less the margin: an object written at
    that instant or later stays (the backup may refer to it); older ones go, whichever
    comes first in the listing."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "0")
    repo.backend = _SortedListing(repo.backend.root)
    cids = sorted((_chunk(repo, bytes([k]) * 600) for k in range(4)), key=chunk_name)
    backup = repo.lease("backup").begin()
    try:
        since = records.get(repo, "leases", backup.name, records.MAGIC_LEASE)["since_ns"]
        _set_mtime(repo, chunk_name(cids[0]), since)            # the cutoff itself: first listed
        _set_mtime(repo, chunk_name(cids[1]), since + S)
        for old in cids[2:]:
            _set_mtime(repo, chunk_name(old), since - S)
        report = prune(repo)
    finally:
        backup.end()
    assert report.moved_chunks == 2
    assert repo.has_chunk(cids[0]) and repo.has_chunk(cids[1])
    assert not repo.has_chunk(cids[2]) and not repo.has_chunk(cids[3])


class _GoneBeforeTheMove(_SortedListing):
    """Another prune moves the first listed chunk away between our listing and our move."""

    def __init__(self, root):
        super().__init__(root)
        self.first: str | None = None

    def rename(self, name: str, new_name: str) -> None:
        if name.startswith("chunks/") and self.first is None:
            self.first = name
            super().delete(name)
        super().rename(name, new_name)


def test_a_condemning_walk_goes_on_past_an_object_gone_before_its_move(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    backend = repo.backend = _GoneBeforeTheMove(repo.backend.root)
    cids = [_chunk(repo, bytes([k]) * 600) for k in range(4)]
    report = prune(repo)
    assert backend.first is not None
    assert report.moved_chunks == 3 and report.freed_chunks == 3
    assert not any(repo.has_chunk(c) for c in cids)


def test_a_condemning_walk_goes_on_past_an_object_whose_retention_was_extended(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    days = 1
    sorted_listing = type("_SortedLocking", (_LockingBackend,), {"list_stat": _SortedListing.list_stat})
    backend = repo.backend = sorted_listing(repo.backend.root, days=days)
    cids = sorted((_chunk(repo, bytes([k]) * 600, age_s=3 * 86400) for k in range(4)), key=chunk_name)
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=7)
    backend.until[chunk_name(cids[0])] = until              # a later backup extended it: first listed
    report = prune(repo)
    assert report.locked_objects == 1 and report.moved_chunks == 3 and report.freed_chunks == 3
    assert report.locked_until == until.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert repo.has_chunk(cids[0]) and not any(repo.has_chunk(c) for c in cids[1:])


def test_what_is_locked_from_its_time_alone_is_reported_with_the_end_of_its_retention(repo, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    backend = repo.backend = _LockingBackend(repo.backend.root, days=8)
    recent = _chunk(repo, b"recent" * 100, age_s=86400)
    mtime = backend.mtime_ns(chunk_name(recent))
    report = prune(repo)
    assert report.locked_objects == 1 and report.locked_bytes == backend.size(chunk_name(recent))
    assert repo.has_chunk(recent) and report.moved_chunks == 0
    until = locked_at_least_until(backend, mtime)
    assert until is not None and report.locked_until == until.strftime("%Y-%m-%dT%H:%M:%SZ")
