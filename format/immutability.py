"""Immutability of generations in an S3 repository with Object Lock (docs/s3.md).

Every object is written with a retention date ``days + slack`` days ahead (format/s3backend.py,
``Retention``). A new generation reuses chunks written long ago, whose retention may end
soon; before its manifest is written, ``extend_retention`` pushes the retention of every
object the generation needs (config, key store, indexes, chunks) to the same date, so that
the whole generation stays readable for at least ``days`` days, whatever a compromised
backup host later does with the repository's own credentials. Objects this process wrote
already carry that date and are skipped; the others cost one request each, sent in
parallel.

``delete_unless_locked`` is the deletion a prune uses on such a repository: it removes what
it can and returns what retention still protects, with the date it ends, for the report.
``locked_at_least_until`` tells from a listing alone (the object's time of writing) that an
object is still locked, so prune skips it without a request: every object was written with
``days + slack`` days of retention, and a retention can be extended, never shortened. The
date it returns is a lower bound (a later backup may have extended it).
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ObjectLocked, ObjectMissing


def extend_retention(backend: Any, names: Iterable[str], *, now: dt.datetime | None = None) -> int:
    """Lock ``names`` until ``now + days + slack``; returns how many were extended."""
    retention = backend.retention()
    if retention is None:
        return 0
    until = retention.until(now)
    todo = sorted(set(names) - set(backend.written))
    if not todo:
        return 0
    with ThreadPoolExecutor(max(1, getattr(backend, "parallelism", 8)),
                            thread_name_prefix="s3-retain") as pool:
        list(pool.map(lambda name: backend.retain(name, until), todo))
    return len(todo)


@dataclass(frozen=True)
class Kept:
    """An object that retention kept from deletion, and until when (None: unknown)."""
    name: str
    until: dt.datetime | None


def delete_unless_locked(backend: Any, names: Iterable[str]) -> tuple[int, list[Kept]]:
    """Delete ``names``; those under retention are left and reported. Missing ones count as
    deleted."""
    deleted, kept = 0, []
    for name in names:
        try:
            backend.delete(name)
            deleted += 1
        except ObjectMissing:
            deleted += 1
        except ObjectLocked:
            kept.append(Kept(name, locked_until(backend, name)))
    return deleted, kept


def locked_at_least_until(backend: Any, mtime_ns: int,
                          now: dt.datetime | None = None) -> dt.datetime | None:
    """If an object written at ``mtime_ns`` (the storage's time) is certainly still locked:
    the earliest date its retention can end; else None (unknown: try, and catch
    ``ObjectLocked``). None too on a repository without retention."""
    retention = getattr(backend, "retention", lambda: None)()
    if retention is None:
        return None
    written = dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.timezone.utc)
    until = written + dt.timedelta(days=retention.days + retention.slack_days)
    return until if until > (now or dt.datetime.now(dt.timezone.utc)) else None


def locked_until(backend: Any, name: str) -> dt.datetime | None:
    """The retention date of ``name`` as the storage reports it (None if it has none)."""
    retained_until = getattr(backend, "retained_until", None)
    if retained_until is None:
        return None
    try:
        return retained_until(name)
    except ObjectMissing:
        return None
