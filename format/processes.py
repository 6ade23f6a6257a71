"""Whether a process of this host still runs: the one answer that leases, writer locks,
prune's worker records and the vSphere restore's snapshot owners all rely on.

A process "runs" when it exists and has not ended. A zombie has ended — it holds nothing and
does nothing more — even though its entry stays until its parent waits for it, and where
PID 1 reaps no orphans (many containers) it stays for good, so ``kill(pid, 0)`` alone would
hold a dead process's lease or lock forever.

On doubt the answer is "runs": a process of another user (``kill`` refused), or one that
``/proc`` does not show (no ``/proc``, or mounted with ``hidepid``) but that still exists.
"""
from __future__ import annotations

import os


def running(pid: int) -> bool:
    """Process ``pid`` of this host exists and is not a zombie. A ``pid`` that names no one
    process (0 or less: a group, to ``kill``) counts as running, as any doubt does."""
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:             # no /proc, or the process hidden from us: whether it exists
        return _exists(pid)
    # the state follows the command name, which is in parentheses and may hold any byte
    state = stat_line[stat_line.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):    # OverflowError: no process id is that large
        return False
    except OSError:             # PermissionError: someone else's process
        pass
    return True
