"""Prune's walk in worker processes (format/prune.py with format/forkpool.py): it frees exactly
what the walk in the prune's own process frees; while it moves objects, its batch record names
its workers; another prune seals such a batch only once the prune and every worker it names
have ended; a worker that has ended but was never waited for (a zombie, where nothing reaps
orphans) counts as ended."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from format import prune as prune_module
from format import records
from format.processes import running
from format.prune import prune
from format.repository import Repository
from test_prune_shards import PASSPHRASE, _build, _files

ROOT = Path(__file__).resolve().parent.parent


def test_the_walk_in_worker_processes_frees_exactly_what_the_walk_in_process_frees(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    monkeypatch.setattr(prune_module, "WORKERS", 3)
    gone, kept = _build(tmp_path / "a", seed=21)
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    forked: list[list[int]] = []
    real_run = prune_module.forkpool.run

    def run(jobs, work, processes, started=None):
        def seen(pids: list[int]) -> None:
            forked.append(pids)
            if started is not None:
                started(pids)
        return real_run(jobs, work, processes, seen)
    monkeypatch.setattr(prune_module.forkpool, "run", run)
    reports = []
    for which, fork_from in (("a", "0"), ("b", "100000000")):
        monkeypatch.setenv("REPOFS_PRUNE_FORK_FROM", fork_from)
        reports.append(vars(prune(Repository.open(tmp_path / which, PASSPHRASE))))
        # "a": the condemning walk and the sweep, each in 3 workers; "b": nothing forked
        assert len(forked) == 2 and all(len(p) == 3 for p in forked)
    assert reports[0] == reports[1]
    assert reports[0]["freed_chunks"] == len(gone) and reports[0]["freed_indexes"] == 1
    assert reports[0]["freed_bytes"] > 0 and reports[0]["freed_bytes"] == reports[0]["moved_bytes"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    repo = Repository.open(tmp_path / "a", PASSPHRASE)
    assert all(repo.get_chunk(repo.chunk_id(data)) == data for data in kept)
    assert not any(repo.has_chunk(repo.chunk_id(data)) for data in gone)


def test_a_small_repository_is_walked_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``FORK_FROM`` objects (estimated from one shard's listing) nothing is forked; at
    or above it the walk forks ``WORKERS`` processes."""
    monkeypatch.setattr(prune_module, "WORKERS", 2)
    monkeypatch.delenv("REPOFS_PRUNE_FORK_FROM", raising=False)
    _build(tmp_path / "r", seed=3)
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    in_shard = len(os.listdir(tmp_path / "r" / "chunks" / "00"))
    assert in_shard > 0
    monkeypatch.setattr(prune_module, "FORK_FROM", in_shard * 256 + 1)
    assert prune_module._workers(repo.backend) == 1
    monkeypatch.setattr(prune_module, "FORK_FROM", in_shard * 256)
    assert prune_module._workers(repo.backend) == 2
    monkeypatch.setattr(prune_module, "WORKERS", 1)
    assert prune_module._workers(repo.backend) == 1


def _prune_killed_while_moving(repo_path: Path, kill_after: int) -> dict:
    """A real prune with worker processes, SIGKILLed after ``kill_after`` moves; its batch
    record as the kill left it."""
    env = {**os.environ, "REPOFS_PRUNE_FRESH_SECONDS": "-1", "REPOFS_PRUNE_FORK_FROM": "0",
           "REPOFS_PRUNE_KILL_AFTER": str(kill_after), "PYTHONPATH": str(ROOT)}
    code = ("import sys; from format.repository import Repository; from format.prune import prune; "
            f"prune(Repository.open(sys.argv[1], {PASSPHRASE!r}))")
    done = subprocess.run([sys.executable, "-c", code, str(repo_path)], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    repo = Repository.open(repo_path, PASSPHRASE)
    [(_batch, doc)] = records.read_all(repo, prune_module.PENDING, records.MAGIC_BATCH)
    return doc


def test_a_moving_batch_names_its_workers_and_waits_for_the_last_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    monkeypatch.setattr(prune_module, "WORKERS", 2)
    gone, kept = _build(tmp_path / "r", seed=4)
    doc = _prune_killed_while_moving(tmp_path / "r", 5)
    assert doc["state"] == "moving" and doc["host"] == socket.gethostname()
    assert len(doc["workers"]) == 2 and all(isinstance(p, int) and p > 0 for p in doc["workers"])
    repo = Repository.open(tmp_path / "r", PASSPHRASE)
    [(batch, _doc)] = records.read_all(repo, prune_module.PENDING, records.MAGIC_BATCH)
    assert len(list(repo.backend.list(f"{prune_module.TRASH}/{batch}"))) >= 5
    # the prune is dead, but one of the processes its record names still runs
    alive = subprocess.Popen(["sleep", "60"])
    try:
        records.put(repo, prune_module.PENDING, batch, records.MAGIC_BATCH, {**doc, "workers": [alive.pid]})
        report = prune(repo)
        after = dict(records.read_all(repo, prune_module.PENDING, records.MAGIC_BATCH))
        assert after[batch]["state"] == "moving"            # not sealed, not swept
        assert list(repo.backend.list(f"{prune_module.TRASH}/{batch}"))
        assert report.batches_swept == 1                   # its own batch only
    finally:
        alive.kill()
        alive.wait()
    report = prune(repo)
    assert report.batches_swept == 2 and report.batches_waiting == 0    # its own (empty) and the held one
    assert records.names(repo, prune_module.PENDING) == []
    assert list(repo.backend.list(prune_module.TRASH)) == []
    assert all(repo.get_chunk(repo.chunk_id(data)) == data for data in kept)
    assert not any(repo.has_chunk(repo.chunk_id(data)) for data in gone)


def test_workers_of_another_host_or_ended_ones_do_not_hold_a_batch() -> None:
    host = socket.gethostname()
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    live = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while running(zombie):       # ended, not yet waited for: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.path.exists(f"/proc/{zombie}")
        assert running(live.pid)
        assert not prune_module._workers_alive({"host": host, "workers": [zombie]})
        assert prune_module._workers_alive({"host": host, "workers": [zombie, live.pid]})
        assert not prune_module._workers_alive({"host": host + "-other", "workers": [live.pid]})
        assert not prune_module._workers_alive({"host": host})
        # a malformed list holds the batch: on doubt, running
        assert prune_module._workers_alive({"host": host, "workers": ["1"]})
        assert prune_module._workers_alive({"host": host, "workers": 7})
        assert prune_module._workers_alive({"host": host, "workers": [True]})
    finally:
        os.waitpid(zombie, 0)
        live.kill()
        live.wait()
    assert not running(zombie) and not running(live.pid)


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux)")
def test_a_prune_confined_to_one_core_walks_in_its_own_process() -> None:
    """The workers are as many as the cores the process may run on (its CPU affinity, as a
    container's cpuset or ``taskset`` sets it), not the machine's: confined to one, none is
    forked."""
    code = "import format.prune as p; print(p.WORKERS)"
    one = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert one.stdout.strip() == "1"
    every = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert every.stdout.strip() == str(max(1, min(4, len(os.sched_getaffinity(0)))))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=12)


@given(workers=_json, other_host=st.booleans())
def test_any_workers_value_a_record_holds_is_answered_without_error(workers: object, other_host: bool) -> None:
    """A batch record is written by another prune (authenticated, but any JSON value can sit
    in ``workers``): the check answers every value, and a value that is not a list of positive
    process ids holds the batch on this host; on another host nothing does."""
    host = socket.gethostname() + ("-other" if other_host else "")
    got = prune_module._workers_alive({"host": host, "workers": workers})
    assert isinstance(got, bool)
    if other_host or not workers:
        assert got is False
    elif not isinstance(workers, list) or any(not isinstance(p, int) or isinstance(p, bool) or p <= 0
                                              for p in workers):
        assert got is True
