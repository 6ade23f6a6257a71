"""Whether a process still runs (format/processes.py), and the four things that ask it: a
lease, a backup's writer lock, a prune's worker record and a vSphere run's snapshot owner. A
process that ended but was not waited for (a zombie, for good where PID 1 reaps nothing)
holds none of them; a running one holds each; a process of another user counts as running."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from format import prune as prune_module
from format.backend import LocalBackend
from format.leases import LeaseInfo
from format.processes import running
from format.errors import RepositoryBusy
from format.writerlock import BOOT, WriterLock
from restore.vsphere.ownership import Owner

HOST = socket.gethostname()


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has ended and that nobody has waited for yet."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while not _state(pid) == "Z":
            assert time.monotonic() < deadline, "the child did not end"
            time.sleep(0.01)
        yield pid
    finally:
        os.waitpid(pid, 0)


@pytest.fixture
def sleeper() -> Iterator[int]:
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        line = f.read()
    return line[line.rfind(b")") + 2:][:1].decode()


def test_a_zombie_has_ended_and_a_sleeping_process_runs(zombie: int, sleeper: int) -> None:
    assert os.path.exists(f"/proc/{zombie}")       # kill(pid, 0) would still find it
    os.kill(zombie, 0)
    assert not running(zombie)
    assert running(sleeper) and running(os.getpid())


def test_a_process_that_was_waited_for_no_longer_runs() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    assert not running(p.pid)


def test_a_pid_larger_than_any_process_id_does_not_run() -> None:
    """Ids come from lease, lock and batch records that anyone with write access to the
    storage may have written: one too large for the kernel is no process, not a crash."""
    for pid in (2**31, 2**63, 2**70):
        assert not running(pid)
    assert not _lease(2**70).live(time.time_ns())
    assert not prune_module._workers_alive({"host": HOST, "workers": [2**64]})
    assert Owner(HOST, 2**64, "2026-12-02T00:00:00Z").gone


def test_a_pid_that_names_no_single_process_counts_as_running() -> None:
    # kill(0, 0) would signal our own group: on doubt, running — never taken for dead
    assert running(0) and running(-1)


def test_another_users_process_counts_as_running() -> None:
    """Dropped to nobody, with /proc readable and kill refused: PID 1 runs, an unused pid not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    code = ("import os\nfrom format.processes import running\n"
            "os.setgid(65534)\nos.setuid(65534)\n"
            "print(running(1), running(2**22 + 1), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True False\n"


def _lease(pid: int, host: str = HOST) -> LeaseInfo:
    now = time.time_ns()
    return LeaseInfo(name="x", kind="backup", since_ns=now, expires_ns=now + 60 * 10**9,
                     host=host, pid=pid, vm="vm0")


def test_a_lease_of_an_ended_process_is_not_live(zombie: int, sleeper: int) -> None:
    now = time.time_ns()
    assert not _lease(zombie).live(now)
    assert _lease(sleeper).live(now)
    assert _lease(zombie, HOST + "-other").live(now)     # another host's: its time alone


def _held_lock(tmp_path: Path, pid: int) -> LocalBackend:
    backend = LocalBackend(tmp_path / "repo")
    doc = {"token": "t" * 32, "host": HOST, "pid": pid, "ttl_s": 600, "boot": BOOT}
    assert backend.put_new("locks/vm-x", (json.dumps(doc) + "\n").encode())
    return backend


def test_a_writer_lock_of_an_ended_process_is_taken_at_once(tmp_path: Path, zombie: int) -> None:
    backend = _held_lock(tmp_path, zombie)
    lock = WriterLock(backend, "locks/vm-x", "x")
    lock.acquire()
    try:
        assert json.loads(backend.get("locks/vm-x"))["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_writer_lock_of_a_running_process_is_not_taken(tmp_path: Path, sleeper: int) -> None:
    backend = _held_lock(tmp_path, sleeper)
    with pytest.raises(RepositoryBusy, match=f"pid {sleeper}"):
        WriterLock(backend, "locks/vm-x", "x").acquire()


def test_a_snapshot_owner_that_ended_is_gone(zombie: int, sleeper: int) -> None:
    started = "2026-12-02T00:00:00Z"
    assert Owner(HOST, zombie, started).gone
    assert not Owner(HOST, sleeper, started).gone
    assert not Owner(HOST, os.getpid(), started).gone
    assert not Owner(HOST + "-other", zombie, started).gone


def test_a_prune_batch_is_not_held_by_ended_workers(zombie: int, sleeper: int) -> None:
    assert not prune_module._workers_alive({"host": HOST, "workers": [zombie]})
    assert prune_module._workers_alive({"host": HOST, "workers": [zombie, sleeper]})
