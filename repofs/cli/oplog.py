"""The log of operations: one JSON line per command that opened a repository, kept on this
host (not in the repository), for ``repofs report`` to show the last errors.

Where: ``REPOFS_LOG_FILE``, else ``$XDG_STATE_HOME/repofs/operations.jsonl`` (default
``~/.local/state/repofs/``); ``REPOFS_LOG_FILE=`` (empty) turns it off. Each line:
``{"time_ns", "command", "repository", "exit_code", "error", "seconds"}`` -- the error is the
one line the command printed (messages never hold secrets). The file is created mode 0600,
appended with ``O_APPEND`` (concurrent commands do not interleave within a line) and kept
under ``MAX_BYTES``: past it, the older half is dropped. Writing it never fails a command.
"""
from __future__ import annotations

import json
import os
import time

MAX_BYTES = 1 << 20
MAX_LINE = 4096
_repository: str | None = None


def path() -> str | None:
    explicit = os.environ.get("REPOFS_LOG_FILE")
    if explicit is not None:
        return explicit or None
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "repofs", "operations.jsonl")


def opened(repository_path: str) -> None:
    """The command works on this repository (called when it is opened)."""
    global _repository
    _repository = repository_path if "://" in repository_path else os.path.abspath(repository_path)


def record(command: str, exit_code: int, error: str | None, started_ns: int) -> None:
    where = path()
    if _repository is None or where is None:
        return
    line = json.dumps({"time_ns": time.time_ns(), "command": command, "repository": _repository,
                       "exit_code": exit_code, "error": error,
                       "seconds": round((time.time_ns() - started_ns) / 1e9, 3)}, ensure_ascii=False)
    data = (line[:MAX_LINE] if len(line) <= MAX_LINE else json.dumps(
        {"time_ns": time.time_ns(), "command": command, "repository": _repository[:1024],
         "exit_code": exit_code, "error": (error or "")[:1024]})) + "\n"
    try:
        os.makedirs(os.path.dirname(where) or ".", mode=0o700, exist_ok=True)
        fd = os.open(where, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data.encode("utf-8", "replace"))
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > MAX_BYTES:
            _trim(where)
    except OSError:
        pass


def _trim(where: str) -> None:
    with open(where, "rb") as f:
        f.seek(-MAX_BYTES // 2, os.SEEK_END)
        tail = f.read()
    tail = tail[tail.find(b"\n") + 1:]
    tmp = f"{where}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(tail)
    os.replace(tmp, where)


def read(repository_path: str, limit: int = 1000) -> list[dict]:
    """The last ``limit`` entries about this repository, oldest first."""
    where = path()
    if where is None:
        return []
    wanted = repository_path if "://" in repository_path else os.path.abspath(repository_path)
    out = []
    try:
        with open(where, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2 * MAX_BYTES))
            for raw in f:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("repository") == wanted:
                    out.append(entry)
    except OSError:
        return []
    return out[-limit:]
