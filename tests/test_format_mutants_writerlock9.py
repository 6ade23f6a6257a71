"""The writer lock (format/writerlock.py) in the mutation run's reach (docs/security.md,
"Mutation testing of the format"): a lock expires only once *older* than its ``ttl_s`` plus
the grace (the module docstring), and finding out whether a holder of this boot still runs
sends that process no signal.

The holder of the second test is a real process that blocks SIGHUP, so a signal sent to it
stays pending, where ``/proc/<pid>/status`` shows it: what is asserted is the kernel's own
record, not a race with the signal's delivery.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from format.backend import LocalBackend
from format.errors import RepositoryBusy
from format.writerlock import BOOT, WriterLock

NAME = "locks/vm-4567"


class _AgedBackend(LocalBackend):
    """A local store whose clock says every object is ``age_s`` old (S3's ``Date`` minus
    ``Last-Modified``)."""

    age_s = 0.0

    def age(self, name: str) -> float:
        super().age(name)                   # ObjectMissing when absent, as the real one
        return self.age_s


def _plant(backend: LocalBackend, **doc) -> None:
    backend.put(NAME, json.dumps(doc).encode())


@pytest.mark.parametrize("age_s, busy", [(129.0, True), (130.0, True), (130.25, False)])
def test_a_lock_expires_only_once_older_than_its_ttl_plus_the_grace(tmp_path, age_s, busy):
    backend = _AgedBackend(tmp_path / "store")
    backend.age_s = age_s
    _plant(backend, token="t", host="elsewhere", pid=4242, ttl_s=100, boot="f" * 16)
    lock = WriterLock(backend, NAME, "db", grace_s=30)
    if busy:
        with pytest.raises(RepositoryBusy, match="is running"):
            lock.acquire()
        assert json.loads(backend.get(NAME))["token"] == "t"
    else:
        lock.acquire()
        try:
            assert json.loads(backend.get(NAME))["token"] == lock.token
        finally:
            lock.release()


def _pending_signals(pid: int) -> int:
    """The signals pending for ``pid`` (its threads' and its process's), as a bit mask."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    return int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)


def test_asking_whether_a_holder_of_this_boot_runs_sends_it_no_signal(tmp_path):
    assert BOOT                                     # /proc gives this host's boot id
    code = ("import signal, sys, time\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        backend = LocalBackend(tmp_path / "store")
        _plant(backend, token="t", host=socket.gethostname(), pid=holder.pid, ttl_s=120, boot=BOOT)
        with pytest.raises(RepositoryBusy, match="is running"):
            WriterLock(backend, NAME, "db").acquire()
        assert _pending_signals(holder.pid) == 0 and holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
