"""What a long read needs around it: the vSphere session kept alive, VDDK's leftovers cleaned.

Role: ``keepalive(session)`` is a context manager that asks vCenter the time every
``interval()`` seconds from a background thread while the disks are read, so that a session
that would expire when idle (vCenter: 30 minutes by default) is still valid when the snapshot
is removed after hours of reading. ``cleanup_vddk`` runs ``VixDiskLib_Cleanup`` before a
connection, as VMware asks of a program that may have been killed with connections open
(it removes what such a connection left on the host, e.g. hot-added disks).

Limits: the keep-alive does not log in again; a session that the server ends for another
reason (a restart, an administrator) still fails the removal, which is then reported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from typing import Any, Iterator

logger = logging.getLogger("repofs.vsphere")

ENV_INTERVAL = "REPOFS_VSPHERE_KEEPALIVE_SECONDS"
DEFAULT_INTERVAL = 300.0


def interval() -> float:
    """Seconds between two keep-alive calls (``$REPOFS_VSPHERE_KEEPALIVE_SECONDS``, else 300)."""
    try:
        value = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


@contextlib.contextmanager
def keepalive(session: Any, every: float | None = None) -> Iterator[None]:
    """Keep ``session`` busy while the block runs."""
    period = every if every is not None else interval()
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(period):
            try:
                session.si.CurrentTime()
            except Exception as e:  # the read goes on; the removal will say what is wrong
                logger.warning("vCenter keep-alive failed: %s", type(e).__name__)

    thread = threading.Thread(target=run, name="vsphere keep-alive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def cleanup_vddk(lib: Any, params: Any) -> str | None:
    """``VixDiskLib_Cleanup`` for the server of ``params``; a note when it did or found
    something (VMware: the VM spec of the parameters must be unset for it)."""
    try:
        cleaned, remaining = lib.cleanup(dataclasses.replace(params, vmx_spec=None))
    except Exception as e:  # cleanup is a courtesy to the host; the backup goes on
        return f"VixDiskLib_Cleanup failed: {e}"
    if cleaned or remaining:
        return (f"VixDiskLib_Cleanup removed what {cleaned} earlier connection(s) left"
                + (f"; {remaining} still need it" if remaining else ""))
    return None
