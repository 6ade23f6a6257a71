"""One table of exit codes: every error a command can end with, its code and its message.

The CLI catches exceptions at one place and looks them up here by class (most specific
first), printing one line ``repofs: error: <message>`` and exiting with the code. Anything
not in the table is a bug: it exits with INTERNAL and still prints one line.
"""
from __future__ import annotations

import errno
from typing import Iterable

from format import errors as fe
from format.copy import CopyRefused

from repofs.ingest.backup import IngestError
from repofs.ingest.sources import SourceError
from repofs.view.tree import DiskReadError

OK = 0
FAILURE = 1           # a command ran and found a problem (check with damage, some VMs failed)
USAGE = 2             # bad command line (typer/click's own code)
NO_REPOSITORY = 3
REPOSITORY_EXISTS = 4
BAD_PASSPHRASE = 5
KEY_MISSING = 6
DAMAGED = 7           # a damaged or missing object stops the command
NOT_FOUND = 8         # unknown VM, generation, disk
SOURCE = 9            # the input image is missing, unreadable, malformed or changed under us
NO_SPACE = 10
BUSY = 11
UNSUPPORTED = 12
VSPHERE = 13          # vCenter refused or failed
VDDK = 14             # VixDiskLib failed or is missing
STORAGE_UNAVAILABLE = 16  # object storage unreachable or failing after retries
ACCESS_DENIED = 17    # object storage refused the credentials or the operation
OBJECT_LOCKED = 18    # Object Lock retention forbids deleting or replacing an object
INTERNAL = 70
INTERRUPTED = 130

# (exception class, exit code); the first matching row wins.
TABLE: list[tuple[type[BaseException], int]] = [
    (fe.RepositoryNotFound, NO_REPOSITORY),
    (fe.RepositoryExists, REPOSITORY_EXISTS),
    (fe.WrongPassphrase, BAD_PASSPHRASE),
    (fe.PassphraseRequired, BAD_PASSPHRASE),
    (fe.KeyMissing, KEY_MISSING),
    (fe.CorruptObject, DAMAGED),
    (fe.ObjectMissing, DAMAGED),
    (DiskReadError, DAMAGED),
    (fe.VMNotFound, NOT_FOUND),
    (fe.GenerationNotFound, NOT_FOUND),
    (SourceError, SOURCE),
    (IngestError, SOURCE),
    (fe.StorageFull, NO_SPACE),
    (fe.RepositoryBusy, BUSY),
    (fe.UnsupportedFormat, UNSUPPORTED),
    (fe.StorageUnavailable, STORAGE_UNAVAILABLE),
    (fe.StorageAccessDenied, ACCESS_DENIED),
    (fe.ObjectLocked, OBJECT_LOCKED),
    (CopyRefused, UNSUPPORTED),
]


def register(rows: Iterable[tuple[type[BaseException], int]]) -> None:
    """Add rows for the errors of another layer (vSphere, VDDK), ahead of the generic ones."""
    TABLE[:0] = list(rows)


def classify(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    for cls, code in TABLE:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NO_SPACE
        return FAILURE
    return INTERNAL


def message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
