"""Prune's shard-by-shard work on a local repository (format/prune.py, ``LocalFolder`` in
format/backend.py): it frees exactly what the object-by-object path over the backend's
listing frees, leaves alone whatever in a shard folder is not an object, removes writers' old
temporary files on the same walk, and compares names with the marks as hex prefixes that
answer as the id set does.

The object-by-object path is what an S3 repository takes; here it runs on the same local
storage, reached through a backend that only lacks ``open_folder``.
"""
from __future__ import annotations

import os
import random
import shutil
import time

import pytest

from fixtures_mount import PASSPHRASE, make_repo
from format import idset
from format.fixedindex import FixedIndex
from format.manifest import DiskEntry, Manifest
from format.marks import forget
from format.prune import TMP_AGE_NS, prune
from format.repository import Repository, chunk_name

CS = 64 << 10
OLD_NS = time.time_ns() - 2 * TMP_AGE_NS


class ListedOnly:
    """The same local storage without ``open_folder``: prune then takes its listing path."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        if name == "open_folder":
            raise AttributeError(name)
        return getattr(self._backend, name)


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if rel.startswith(("leases", "locks", "pending")):
                continue            # this run's own lease and records: names differ per run
            with open(path, "rb") as fh:
                out[rel] = fh.read()
    return out


def _generation(repo, name: str, chunks: list[bytes]) -> str:
    index = FixedIndex.empty(len(chunks) * CS, CS)
    for slot, data in enumerate(chunks):
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data)
        index.set(slot, cid)
    return repo.put_manifest(Manifest("v", name, "t", time.time_ns(), None,
                                      [DiskEntry("d", index.capacity, CS, repo.put_index(index))]))


def _build(path, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Two generations over 600 chunks of random sizes, 200 shared; the first forgotten."""
    make_repo(path, chunk_size=CS)
    repo = Repository.open(path, PASSPHRASE)
    rng = random.Random(seed)
    chunks = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(1000)]
    old, new = chunks[:600], chunks[400:]
    first = _generation(repo, "g0", old)
    _generation(repo, "g1", new)
    forget(repo, first, "v", "g0")
    return old[:400], new


def test_shard_walk_frees_exactly_what_the_listing_path_frees(tmp_path, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    gone, kept = _build(tmp_path / "a", seed=5)
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    reports = []
    for which, listed in (("a", False), ("b", True)):
        repo = Repository.open(tmp_path / which, PASSPHRASE)
        assert hasattr(repo.backend, "open_folder")
        if listed:
            repo.backend = ListedOnly(repo.backend)
        reports.append(vars(prune(repo)))
    assert reports[0] == reports[1]
    assert reports[0]["freed_chunks"] == len(gone) and reports[0]["freed_indexes"] == 1
    assert reports[0]["generations_removed"] == 1 and reports[0]["batches_swept"] == 1
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    repo = Repository.open(tmp_path / "a", PASSPHRASE)
    assert all(repo.get_chunk(repo.chunk_id(data)) == data for data in kept)
    assert not any(repo.has_chunk(repo.chunk_id(data)) for data in gone)
    assert not os.listdir(tmp_path / "a" / "trash")


def test_what_is_no_object_in_a_shard_stays(tmp_path, monkeypatch):
    """Names in the store are data: a shard may hold anything (a copy tool's leftovers, an
    attacker's files); prune moves and deletes only regular files named as ids."""
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    gone, kept = _build(tmp_path / "r", seed=6)
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    target = repo.backend.path(chunk_name(repo.chunk_id(kept[0])))
    shard = os.path.dirname(target)
    strangers = {
        "note": b"not an id",
        "AB" * 32: b"upper case",
        "ab" * 31: b"too short",
        "ab" * 32 + "x": b"too long",
    }
    for name, data in strangers.items():
        with open(os.path.join(shard, name), "wb") as f:
            f.write(data)
    folder = os.path.join(shard, "cd" * 32)                     # a directory named as an id
    os.mkdir(folder)
    with open(os.path.join(folder, "inside"), "wb") as f:
        f.write(b"x")
    link = os.path.join(shard, "ef" * 32)                       # a link named as an id
    os.symlink(target, link)
    for path in [os.path.join(shard, n) for n in strangers] + [folder]:
        os.utime(path, ns=(OLD_NS, OLD_NS))
    report = prune(repo)
    assert report.freed_chunks == len(gone)
    for name, data in strangers.items():
        with open(os.path.join(shard, name), "rb") as f:
            assert f.read() == data
    assert os.path.isfile(os.path.join(folder, "inside")) and os.path.islink(link)
    assert repo.get_chunk(repo.chunk_id(kept[0])) == kept[0]


def test_old_temporaries_in_shards_go_fresh_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    gone, kept = _build(tmp_path / "r", seed=7)
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    old_chunk = repo.backend.path(chunk_name(repo.chunk_id(kept[1]))) + ".4242-00aa11bb.tmp"
    new_chunk = repo.backend.path(chunk_name(repo.chunk_id(kept[2]))) + ".4242-00aa11cc.tmp"
    old_index = os.path.join(repo.backend.root, "indexes", "00", "0" * 64 + ".1-2.tmp")
    os.makedirs(os.path.dirname(old_index), exist_ok=True)
    for path in (old_chunk, new_chunk, old_index):
        with open(path, "wb") as f:
            f.write(b"half written")
    for path in (old_chunk, old_index):
        os.utime(path, ns=(OLD_NS, OLD_NS))
    dry = prune(repo, dry_run=True)
    assert dry.temporaries_removed == 0 and os.path.exists(old_chunk) and os.path.exists(old_index)
    report = prune(repo)
    assert report.temporaries_removed == 2 and report.freed_chunks == len(gone)
    assert not os.path.exists(old_chunk) and not os.path.exists(old_index)
    assert os.path.exists(new_chunk)


@pytest.mark.parametrize("seed", [1, 2])
def test_hex_prefixes_answer_as_the_id_set(seed):
    rng = random.Random(seed)
    added = [rng.randbytes(32) for _ in range(5000)]
    added += [b"\x07" + rng.randbytes(31) for _ in range(3000)]           # one shard grows large
    s = idset.IdSet()
    for cid in added:
        s.add(cid)
    s.freeze()
    others = [rng.randbytes(32) for _ in range(5000)] + [b"\x07" + rng.randbytes(31) for _ in range(500)]
    same_prefix = [cid[:idset.PREFIX] + rng.randbytes(32 - idset.PREFIX) for cid in added[:50]]
    for first in (0x07, added[0][0], others[0][0], 0xff):
        prefixes = s.hex_prefixes(first)
        for cid in added + others + same_prefix:
            if cid[0] == first:
                assert (cid.hex()[:16] in prefixes) == (cid in s)
        assert len(prefixes) == sum(1 for cid in set(c[:idset.PREFIX] for c in added) if cid[0] == first)


def test_a_shard_that_fails_stops_the_prune_before_the_seal(tmp_path, monkeypatch):
    """An I/O error in one shard (a fault root cannot cause on a healthy file system, hence
    the patched listing) stops the prune before anything is sealed or deleted: every object
    stays readable, from its name or the trash, and the next prune finishes the work."""
    from format import backend as backend_module
    from format import records
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    gone, kept = _build(tmp_path / "r", seed=8)
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    bad = chunk_name(repo.chunk_id(gone[0])).split("/")[1]
    names = backend_module.LocalFolder.names

    def failing(folder):
        if folder.name == f"chunks/{bad}":
            raise OSError(5, "Input/output error")
        return names(folder)
    monkeypatch.setattr(backend_module.LocalFolder, "names", failing)
    with pytest.raises(OSError):
        prune(repo)
    batches = records.read_all(repo, "pending", records.MAGIC_BATCH)
    assert [doc["state"] for _b, doc in batches] == ["moving"]
    assert all(repo.get_chunk(repo.chunk_id(data)) == data for data in gone + kept)
    monkeypatch.setattr(backend_module.LocalFolder, "names", names)
    report = prune(repo)
    assert report.batches_swept == 2 and report.freed_chunks == len(gone)
    assert all(repo.get_chunk(repo.chunk_id(data)) == data for data in kept)
    assert records.names(repo, "pending") == []


@pytest.mark.parametrize("other", ["none", "before our listing", "after our listing"])
def test_the_own_batch_sweep_reports_exactly_the_bytes_it_freed(tmp_path, monkeypatch, other):
    """The sweep of a run's own batch takes the sizes the condemning walk saw instead of a
    second ``stat`` per object; when another prune sweeps part of a shard of the batch at the
    same moment (simulated: it takes the middle object of every shard holding two or more,
    just before or just after our listing), each object is counted by the one that deleted it."""
    from format import backend as backend_module
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    gone, kept = _build(tmp_path / "r", seed=11)
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    sizes = {chunk_name(repo.chunk_id(data)): repo.backend.size(chunk_name(repo.chunk_id(data))) for data in gone}
    listed, stat = backend_module.LocalFolder.names, backend_module.LocalFolder.stat
    taken: dict[str, int] = {}
    trash_stats = []

    def names(folder):
        objects, temporaries = listed(folder)
        if other != "none" and folder.name.startswith("trash/") and "/chunks/" in folder.name and len(objects) >= 2:
            name = sorted(objects)[len(objects) // 2]
            taken[name] = os.stat(name, dir_fd=folder.fd).st_size
            os.unlink(name, dir_fd=folder.fd)
            if other == "before our listing":
                objects = [n for n in objects if n != name]
        return objects, temporaries

    def counted_stat(folder, name):
        if folder.name.startswith("trash/"):
            trash_stats.append(name)
        return stat(folder, name)
    monkeypatch.setattr(backend_module.LocalFolder, "names", names)
    monkeypatch.setattr(backend_module.LocalFolder, "stat", counted_stat)
    report = prune(repo)
    index_bytes = report.moved_bytes - sum(sizes.values())
    assert report.moved_chunks == len(gone) and report.moved_indexes == 1 and index_bytes > 0
    assert (other == "none") == (not taken)
    assert report.freed_chunks == len(gone) - len(taken)
    assert report.freed_bytes == report.moved_bytes - sum(taken.values())
    # the shards another prune swept before our listing are the only ones stat'ed again
    assert len(trash_stats) == (0 if other != "before our listing" else
                                sum(1 for n in sizes if n.split("/")[1] in {s[:2] for s in taken}) - len(taken))
    assert all(repo.get_chunk(repo.chunk_id(data)) == data for data in kept)
    assert not any(repo.has_chunk(repo.chunk_id(data)) for data in gone)
    assert not os.listdir(tmp_path / "r" / "trash")
