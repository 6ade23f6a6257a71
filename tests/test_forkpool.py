"""format/forkpool.py: jobs run in forked worker processes, results come back in order, errors
and Ctrl-C behave as in a loop, and no worker outlives its parent (real processes and
signals throughout)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from format import forkpool
from format.errors import RepoError

ROOT = Path(__file__).resolve().parent.parent


class Pids:
    """A ``started`` callback that keeps the workers' pids, to check afterwards that each was
    waited for (no zombie left behind)."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def __call__(self, pids: list[int]) -> None:
        self.pids = list(pids)

    def all_reaped(self) -> bool:
        for pid in self.pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            return False
        return bool(self.pids)


def test_results_come_back_in_job_order_from_other_processes(tmp_path: Path) -> None:
    seen: list[int] = []

    def work(k: int, text: str) -> tuple[int, str, int]:
        seen.append(k)                  # stays in the worker
        return k * k, text.upper(), os.getpid()

    jobs = [(k, f"job{k}") for k in range(23)]
    workers = Pids()
    out = forkpool.run(jobs, work, 3, workers)
    assert [(sq, t) for sq, t, _pid in out] == [(k * k, f"JOB{k}") for k in range(23)]
    pids = {pid for *_x, pid in out}
    assert len(pids) == 3 and os.getpid() not in pids
    # worker k did the jobs k, k+3, …
    assert all(out[i][2] == out[i % 3][2] for i in range(23))
    assert seen == []
    assert sorted(workers.pids) == sorted(pids) and workers.all_reaped()


def test_a_failing_job_raises_and_no_worker_starts_another(tmp_path: Path) -> None:
    def work(k: int) -> int:
        (tmp_path / f"ran-{k}").touch()
        if k == 4:
            raise ValueError(f"job {k} failed")
        if k % 2:           # worker 1: its first job ends once job 4 has failed
            deadline = time.monotonic() + 30
            while not (tmp_path / "ran-4").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
        return k

    workers = Pids()
    with pytest.raises(ValueError, match="^job 4 failed$"):
        forkpool.run([(k,) for k in range(12)], work, 2, workers)
    ran = sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir())
    # worker 0 did 0, 2, 4 and stopped there; worker 1 finished job 1 and started no other
    # (or, when it came to its first job after job 4 had failed, started none at all)
    assert ran in ([0, 1, 2, 4], [0, 2, 4])
    assert workers.all_reaped()


def test_an_exception_that_cannot_be_pickled_arrives_as_its_text() -> None:
    class Local(Exception):             # a local class cannot be pickled
        pass

    def work(k: int) -> int:
        if k == 1:
            raise Local("the reason")
        return k

    with pytest.raises(RepoError, match="^Local: the reason$"):
        forkpool.run([(0,), (1,)], work, 2)


def test_a_worker_killed_mid_job_is_reported_with_its_signal() -> None:
    def work(k: int) -> int:
        if k == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return k

    workers = Pids()
    with pytest.raises(forkpool.WorkerDied, match=r"worker 1 \(pid \d+\) ended without its results \(signal 9\)"):
        forkpool.run([(k,) for k in range(6)], work, 2, workers)
    assert workers.all_reaped()


def test_started_sees_every_worker_before_any_job_and_can_call_them_off(tmp_path: Path) -> None:
    def work(k: int) -> int:
        (tmp_path / f"ran-{k}").touch()
        return k

    told = Pids()

    def started(pids: list[int]) -> None:
        told(pids)
        assert all(os.kill(pid, 0) is None for pid in pids)     # they exist, and wait
        assert list(tmp_path.iterdir()) == []
        raise RuntimeError("not now")

    with pytest.raises(RuntimeError, match="not now"):
        forkpool.run([(k,) for k in range(4)], work, 2, started)
    assert len(told.pids) == 2 and told.all_reaped()
    assert list(tmp_path.iterdir()) == []


def _script(tmp_path: Path, body: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from format import forkpool
        out = {str(tmp_path)!r}
    """) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except FileNotFoundError:
        return True
    return line[line.rfind(b")") + 2:][:1] in (b"Z", b"X")


def test_workers_die_with_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    parent = _script(tmp_path, """
        def work(k):
            open(os.path.join(out, f"worker-{os.getpid()}"), "w").close()
            time.sleep(60)
        forkpool.run([(k,) for k in range(2)], work, 2)
    """)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("worker-*"))) < 2:
            assert time.monotonic() < deadline and parent.poll() is None, parent.communicate()
            time.sleep(0.02)
        pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        assert not any(_gone(pid) for pid in pids)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.communicate()


def test_ctrl_c_finishes_the_jobs_under_way_and_starts_no_other(tmp_path: Path) -> None:
    parent = _script(tmp_path, """
        def work(k):
            open(os.path.join(out, f"start-{k}"), "w").close()
            time.sleep(0.3)
            open(os.path.join(out, f"end-{k}"), "w").close()
            return k
        try:
            forkpool.run([(k,) for k in range(40)], work, 2)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("start-*")):
        assert time.monotonic() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.02)
    time.sleep(0.4)
    # a terminal's Ctrl-C reaches the whole process group: the parent and its workers
    parent.send_signal(signal.SIGINT)
    workers = [int(line.split()[0]) for line in subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent.pid)], capture_output=True, text=True).stdout.splitlines()]
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    out, err = parent.communicate(timeout=30)
    assert out.strip() == "interrupted", err
    started = {int(p.name.split("-")[1]) for p in tmp_path.glob("start-*")}
    ended = {int(p.name.split("-")[1]) for p in tmp_path.glob("end-*")}
    assert started == ended and 0 < len(started) < 40
