"""``extend_retention`` (format/immutability.py) against an S3 backend's bound on parallel
requests, in the mutation run's reach (docs/security.md, "Mutation testing of the format").

An S3 backend has ``parallelism`` connections (format/s3backend.py: its connection pool);
the retention of a new generation's objects is extended with one request each, sent in
parallel but never more at once than that: more would open connections the pool then
discards. The test backend holds each request open a moment and wakes the others as soon as
one more than the bound is running, so a run over the bound is seen, not timed.
"""
from __future__ import annotations

import datetime as dt
import threading

import pytest

from format.immutability import extend_retention
from format.s3backend import Retention


class _CountingBackend:
    """The retention calls of an S3 backend, counting the requests running at once."""

    def __init__(self, parallelism: int):
        self.parallelism = parallelism
        self.written: set[str] = set()
        self.retained: list[tuple[str, dt.datetime]] = []
        self.running = self.peak = 0
        self._lock = threading.Lock()
        self._over = threading.Event()

    def retention(self):
        return Retention("COMPLIANCE", 8)

    def retain(self, name: str, until: dt.datetime) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.running > self.parallelism:
                self._over.set()
        self._over.wait(0.02)                   # a moment in flight, unless the bound is broken
        with self._lock:
            self.running -= 1
            self.retained.append((name, until))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_retention_requests_run_at_most_the_backends_parallelism_at_once(parallelism):
    backend = _CountingBackend(parallelism)
    now = dt.datetime(2030, 5, 1, tzinfo=dt.timezone.utc)
    names = [f"chunks/{k:02x}/{k:064x}" for k in range(10)]
    assert extend_retention(backend, names, now=now) == len(names)
    assert backend.peak <= parallelism
    assert sorted(backend.retained) == [(n, now + dt.timedelta(days=10)) for n in sorted(names)]
