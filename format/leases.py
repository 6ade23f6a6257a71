"""Leases: small records by which processes that read or write a repository tell prune they
run (docs/format.md section 9.2).

A lease is written before its process lists manifests and deleted when it ends; a thread
re-writes it every ``TTL / 4`` so that it stays live. A lease whose ``expires_ns`` (plus
``SKEW`` for clocks of other hosts) has passed belongs to a process that died or hangs, and
counts as ended. A backup asks ``assert_held()`` before it commits: a writer whose lease
could already count as ended must not write a manifest, since a prune may have swept what it
relied on.

Limits: the protocol trusts clocks to agree within ``SKEW``; a process paused for longer than
``TTL - SKEW`` without noticing loses its lease (a backup then fails, a reader may meet a
missing chunk and reports it).
"""
from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import records
from .errors import RepoError
from .processes import running

FOLDER = "leases"
TTL_NS = 600 * 1_000_000_000
SKEW_NS = 300 * 1_000_000_000
KINDS = ("backup", "reader", "prune")


class LeaseLost(RepoError):
    """This process could not renew its lease in time: a prune may count it as ended."""


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    kind: str
    since_ns: int
    expires_ns: int
    host: str
    pid: int
    vm: str | None

    def live(self, now_ns: int) -> bool:
        """Not expired, and — for a lease of this host — its process still runs (a process
        killed with SIGKILL cannot delete its lease; a zombie has ended; on doubt the lease
        counts as live: ``format.processes``)."""
        if now_ns >= self.expires_ns + SKEW_NS:
            return False
        return not (self.host == socket.gethostname() and not running(self.pid))


class Lease:
    """This process's lease. ``begin()`` writes it; ``keep_alive()`` starts the renewing thread
    (call it again in a child after ``fork``); ``end()`` stops renewing and deletes it."""

    def __init__(self, repo: Any, kind: str, vm: str | None = None, ttl_ns: int = TTL_NS):
        if kind not in KINDS:
            raise ValueError(f"unknown lease kind {kind!r}")
        self.repo = repo
        self.kind = kind
        self.vm = vm
        self.ttl_ns = ttl_ns
        self.name = secrets.token_hex(16)
        self.since_ns = 0
        self.renewed_ns = 0     # our clock when the last write of the lease began
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _write(self) -> None:
        with self._lock:
            now = time.time_ns()
            records.put(self.repo, FOLDER, self.name, records.MAGIC_LEASE, {
                "kind": self.kind, "since_ns": self.since_ns, "expires_ns": now + self.ttl_ns,
                "host": socket.gethostname(), "pid": os.getpid(), "vm": self.vm})
            self.renewed_ns = now

    def begin(self) -> "Lease":
        self.since_ns = time.time_ns()
        self._write()
        self.keep_alive()
        return self

    def keep_alive(self) -> None:
        """Start the renewing thread unless it runs (after ``fork`` it does not, in the child)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        stop = self._stop
        while not stop.wait(self.ttl_ns / 4 / 1e9):
            try:
                self._write()
            except Exception:   # noqa: BLE001 (storage trouble: retried; assert_held() decides)
                continue

    def assert_held(self) -> None:
        """Raise LeaseLost unless the lease was renewed recently enough that no prune can
        count it as ended before this process's next step."""
        if time.time_ns() - self.renewed_ns > self.ttl_ns - SKEW_NS:
            raise LeaseLost("this process could not renew its lease on the repository in time; "
                            "nothing was committed")

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        records.delete(self.repo, FOLDER, self.name)

    def __enter__(self) -> "Lease":
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        self.end()


def leases(repo: Any) -> list[LeaseInfo]:
    """Every readable lease, live or not."""
    out = []
    for name, doc in records.read_all(repo, FOLDER, records.MAGIC_LEASE):
        try:
            out.append(LeaseInfo(name, str(doc["kind"]), int(doc["since_ns"]), int(doc["expires_ns"]),
                                 str(doc.get("host", "")), int(doc.get("pid", 0)),
                                 doc.get("vm") if isinstance(doc.get("vm"), str) else None))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def live_leases(repo: Any, now_ns: int | None = None) -> list[LeaseInfo]:
    now = time.time_ns() if now_ns is None else now_ns
    return [lease for lease in leases(repo) if lease.live(now)]
