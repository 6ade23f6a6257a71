"""Which snapshots are ours, and whether the run that made one is gone.

Role: the snapshots repofs takes (for a backup, for an in-place restore) carry in their
description ``OWNER_MARKER`` with the host, process id and start time of the run that took
them. A later run of the same command tells from it whether the snapshot was left by a run
that was killed (same host, process gone) or may still be in use, and from the snapshot's
age whether it is old beyond any run's length.

Limits: a run on another host is known to be gone only by age; a recycled process id makes
a snapshot look in use until ``ORPHAN_AGE``.
"""
from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

from format.processes import running

OWNER_MARKER = "repofs-owner:"
ORPHAN_AGE = datetime.timedelta(hours=12)  # longer than any one run should take
_MARKER = re.compile(re.escape(OWNER_MARKER) + r" host=(\S+) pid=(\d+) started=(\S+)")


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str

    @property
    def gone(self) -> bool:
        """The run ran on this host and its process no longer runs (a zombie has ended:
        ``format.processes``)."""
        return self.host == socket.gethostname() and self.pid != os.getpid() and not running(self.pid)


def owner_description(what: str) -> str:
    """A snapshot description: what it is, then the marker of this run."""
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{what}\n{OWNER_MARKER} host={socket.gethostname()} pid={os.getpid()} started={started}"


def owner_of(description: str | None) -> Owner | None:
    """The run named in a description, or None when it has no marker of ours."""
    m = _MARKER.search(description or "")
    return Owner(m.group(1), int(m.group(2)), m.group(3)) if m else None
