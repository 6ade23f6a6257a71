"""Writers' temporary files outside the chunk shards (format/prune.py,
``_remove_old_temporaries``): a killed writer's ``.tmp`` files in ``manifests/`` and
``indexes/`` — at the top of the folder and in its other subfolders — go once older than a
day and are counted exactly; fresh ones, files that are no temporaries, and temporaries
outside those folders stay. A store
without local folders (S3) has no such files, and prune says it removed none.
"""
from __future__ import annotations

import os
import time

from fixtures_mount import PASSPHRASE, make_repo
from format.prune import TMP_AGE_NS, prune
from format.repository import Repository

OLD_NS = time.time_ns() - 2 * TMP_AGE_NS


class NoFolders:
    """The same storage as an object store sees it: no open folders, no local root."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        if name in ("open_folder", "root"):
            raise AttributeError(name)
        return getattr(self._backend, name)


def _file(path: str, old: bool) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"half written")
    if old:
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


def test_old_temporaries_outside_the_shards_go_and_are_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    make_repo(tmp_path / "r")
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    root = repo.backend.root
    old = [_file(os.path.join(root, *parts), old=True) for parts in (
        ("manifests", "a1.1-2.tmp"), ("manifests", "a2.1-2.tmp"),
        ("manifests", "vm", "g.3-4.tmp"), ("indexes", "b1.1-2.tmp"),
        ("indexes", "stray", "b2.1-2.tmp"))]
    fresh = _file(os.path.join(root, "manifests", "c.5-6.tmp"), old=False)
    not_temporary = _file(os.path.join(root, "indexes", "stray", "notes"), old=True)
    # beside the repository's config, a key store's or another tool's: not prune's to remove
    elsewhere = _file(os.path.join(root, "config.7-8.tmp"), old=True)
    dry = prune(repo, dry_run=True)
    assert dry.temporaries_removed == 0 and all(os.path.exists(p) for p in old)
    report = prune(repo)
    assert report.temporaries_removed == len(old)
    assert not any(os.path.exists(p) for p in old)
    assert os.path.exists(fresh) and os.path.exists(not_temporary) and os.path.exists(elsewhere)
    assert prune(repo).temporaries_removed == 0


def test_a_store_without_local_folders_removes_no_temporaries(tmp_path, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    make_repo(tmp_path / "r")
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    left = _file(os.path.join(repo.backend.root, "manifests", "a.1-2.tmp"), old=True)
    repo.backend = NoFolders(repo.backend)
    assert prune(repo).temporaries_removed == 0
    assert os.path.exists(left)     # not the store's business: no object of the repository


def test_old_temporaries_in_one_shard_are_each_counted(tmp_path, monkeypatch):
    """The condemning walk removes a shard's old temporaries: two in one shard count two."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    make_repo(tmp_path / "r")
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    shard = os.path.join(repo.backend.root, "chunks", "ab")
    old = [_file(os.path.join(shard, "ab" + "0" * 62 + f".{i}-1.tmp"), old=True) for i in (1, 2)]
    assert prune(repo).temporaries_removed == 2
    assert not any(os.path.exists(p) for p in old)


def test_a_shard_walk_passes_over_what_it_must_not_move_and_goes_on(tmp_path, monkeypatch):
    """In one shard, among unreferenced objects: names that are no object ids, and objects
    newer than the cutoff (a running backup's), stay where they are, and every old
    unreferenced object after them in the listing is still condemned and freed."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    make_repo(tmp_path / "r")
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    shard = os.path.join(repo.backend.root, "chunks", "cd")
    old = [_file(os.path.join(shard, "cd" + f"{i:062x}"), old=True) for i in range(24)]
    junk = [_file(os.path.join(shard, f"cd-notes-{i}"), old=True) for i in range(3)]
    future = time.time_ns() + 3600 * 10**9
    fresh = []
    for i in range(3):
        path = _file(os.path.join(shard, "cd" + "f" * 58 + f"{i:04x}"), old=False)
        os.utime(path, ns=(future, future))
        fresh.append(path)
    report = prune(repo)
    assert report.moved_chunks == len(old) and report.freed_chunks == len(old)
    assert not any(os.path.exists(p) for p in old)
    assert all(os.path.exists(p) for p in junk + fresh)
