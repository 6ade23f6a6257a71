"""The probe of the previous generation's chunks that an incremental keeps
(repofs/ingest/parentprobe.py): in worker processes it finds exactly what it finds in
threads — the chunks deleted or cut short, and only those — it stops when the backup gives
up, and an incremental whose probe ran in worker processes reads a slot whose chunk was
deleted again, whole, and restores byte for byte."""
from __future__ import annotations

import json
import os
import random
import secrets
import threading
from pathlib import Path

import pytest

from format import forkpool
from format.repository import Repository, chunk_name
from repofs.ingest import parentprobe
from repofs.ingest.backup import backup
from repofs.ingest.parentprobe import ParentProbe, ProbeStopped
from repofs.ingest.sources import LocalImage
from repofs.view.export import restore_disk_to_file
from repofs.view.tree import RepositoryView

from fixtures_repo import images_equal

FAST_KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}
KiB = 1 << 10


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From the first chunk on, in worker processes; the number of workers of each run."""
    calls: list[int] = []
    real = forkpool.run

    def run(jobs, work, processes, started=None):
        return real(jobs, work, processes, started=lambda pids: calls.append(len(pids)))
    monkeypatch.setattr(ParentProbe, "FORK_FROM", 0)
    monkeypatch.setattr(ParentProbe, "JOB", 100)
    monkeypatch.setattr(parentprobe.forkpool, "run", run)
    return calls


def _repo_with_damage(tmp_path: Path) -> tuple[Repository, set[bytes], set[bytes]]:
    """A repository of 600 chunks, 6 of them deleted and 6 cut short: (repo, all ids, those 12)."""
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=FAST_KDF, chunk_size=64 * KiB)
    rng = random.Random(5)
    ids = []
    for _ in range(600):
        data = rng.randbytes(4 * KiB)
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data)
        ids.append(cid)
    deleted, cut = ids[10:16], ids[300:306]
    for cid in deleted:
        os.unlink(tmp_path / "repo" / chunk_name(cid))
    for cid in cut:
        os.truncate(tmp_path / "repo" / chunk_name(cid), 200)
    return repo, set(ids), set(deleted) | set(cut)


def _probe(repo: Repository, ids: set[bytes]) -> tuple[set[bytes], set[bytes]]:
    known: set[bytes] = set()
    with ParentProbe(repo, known, threading.Event(), ids) as probe:
        lost = probe.lost()
    return lost, known


def test_worker_processes_find_exactly_what_threads_find(tmp_path: Path, forks: list[int]) -> None:
    repo, ids, damaged = _repo_with_damage(tmp_path)
    lost, known = _probe(repo, ids)
    assert forks == [ParentProbe.PROCESSES]         # it did run in worker processes
    assert lost == damaged and known == ids - damaged

    forks.clear()
    ParentProbe.FORK_FROM = len(ids) + 1             # (the fixture puts it back)
    lost_t, known_t = _probe(repo, ids)
    assert forks == [] and (lost_t, known_t) == (lost, known)


def test_worker_processes_stop_when_the_backup_gives_up(tmp_path: Path, forks: list[int]) -> None:
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=FAST_KDF)
    ids = {secrets.token_bytes(32) for _ in range(200_000)}   # far more than are probed at once
    probe = ParentProbe(repo, set(), threading.Event(), ids)
    with pytest.raises(RuntimeError, match="a disk failed"):
        with probe:
            raise RuntimeError("a disk failed")
    with pytest.raises(ProbeStopped):
        probe.lost()
    assert forks == [ParentProbe.PROCESSES]


def test_an_incremental_probed_in_worker_processes_reads_a_lost_slot_again(
        tmp_path: Path, forks: list[int]) -> None:
    rng = random.Random(8)
    img = tmp_path / "disk.img"
    img.write_bytes(rng.randbytes(2 << 20))                  # 32 slots of 64 KiB
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=FAST_KDF, chunk_size=64 * KiB)

    def run(changes: list[tuple[int, int]] | None) -> None:
        source = LocalImage.open(str(img))
        if changes is not None:
            source.limit_to_changes(changes)
        try:
            backup(repo, "vm", [source])
        finally:
            source.close()

    run(None)
    (manifest,) = repo.manifests().values()
    first = repo.get_index(manifest.disks[0].index)
    lost = first.get(5)
    assert lost is not None
    os.unlink(tmp_path / "repo" / chunk_name(lost))
    change = (5 * 64 * KiB + 8192, 4096)                    # inside the slot whose chunk is gone
    with open(img, "r+b") as f:
        f.seek(change[0])
        f.write(rng.randbytes(change[1]))
    (tmp_path / "changes.json").write_text(json.dumps([list(change)]))
    run([change])
    assert forks == [1]             # the 31 chunks it keeps are one job: one worker process

    gen = RepositoryView(Repository.open(tmp_path / "repo", b"pw")).generation("vm")
    second = repo.get_index(max(repo.manifests().values(), key=lambda m: m.time_ns).disks[0].index)
    assert second.pieces(5) == () and second.get(5) not in (None, lost)
    assert all(repo.stored_size(cid) is not None for _o, cid in second.references())
    restore_disk_to_file(gen.disks[0], str(tmp_path / "out.raw"))
    assert images_equal(img, tmp_path / "out.raw")
