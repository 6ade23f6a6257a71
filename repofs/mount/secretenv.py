"""Secrets out of a long-running process's environment, in the interpreter and in memory.

Role: ``scrub()`` removes every variable that holds a secret (``is_secret``: a name with
PASSWORD, PASSPHRASE, SECRET or TOKEN in it, e.g. ``REPOFS_PASSWORD``, ``VSPHERE_PASSWORD``,
``AWS_SECRET_ACCESS_KEY``) from ``os.environ`` — so that no child inherits it — and overwrites
it with zeros in the process's initial environment block, which is what
``/proc/<pid>/environ`` shows (``unsetenv`` only drops libc's pointer to it). The mount calls
it once the passphrase has been read, before it forks into the background.

Limits: Linux (``/proc/self/stat`` fields 50-51, kernel 3.5+); a block that cannot be located
is left as it is (the variables are still gone from ``os.environ``). Copies the interpreter
made elsewhere (a string still referenced by a caller) are out of reach.
"""
from __future__ import annotations

import ctypes
import os
import re

_SECRET_NAME = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN", re.I)


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _environment_block() -> tuple[int, int] | None:
    """(start, end) addresses of this process's initial environment strings."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # Fields after the command name in parentheses, which may itself hold spaces.
        fields = stat[stat.rindex(b")") + 2:].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
    except (OSError, ValueError, IndexError):
        return None
    return (start, end) if 0 < start < end else None


def scrub() -> list[str]:
    """Remove the secret variables; returns their names (never their values)."""
    names = [name for name in os.environ if is_secret(name)]
    for name in names:
        del os.environ[name]  # unsetenv: children and getenv no longer see it
    block = _environment_block()
    if block is None:
        return names
    start, end = block
    raw = ctypes.string_at(start, end - start)
    offset = 0
    for entry in raw.split(b"\0"):
        name = entry.split(b"=", 1)[0].decode("utf-8", "replace")
        if entry and is_secret(name):
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1
    return names
