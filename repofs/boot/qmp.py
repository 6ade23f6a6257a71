"""A small QMP client: one UNIX socket, commands answered in order, events kept in a list.

QMP speaks one JSON object per line. ``execute`` sends a command and reads until its
``return`` (or ``error``, raised as ``QMPError``); events met on the way are queued and read
by ``events()`` / ``wait_event()``. Lines are bounded (1 MiB) so a confused peer cannot make
us buffer without end.
"""
from __future__ import annotations

import json
import socket
import time
from typing import Any

from .machine import MachineError

MAX_LINE = 1 << 20


class QMPError(MachineError):
    """QEMU refused a command or went away."""


class QMP:
    def __init__(self, path: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"QEMU's monitor did not appear at {path}") from None
                time.sleep(0.05)
        self._buf = b""
        self._events: list[dict] = []
        self._read()                       # greeting
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self._sock.close()

    def _read(self, timeout: float | None = None) -> dict:
        self._sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                part = self._sock.recv(65536)
            except socket.timeout:
                raise TimeoutError() from None
            except OSError as e:
                raise QMPError(f"QEMU's monitor went away ({e.strerror})") from None
            if not part:
                raise QMPError("QEMU closed its monitor")
            self._buf += part
            if len(self._buf) > MAX_LINE:
                raise QMPError("QEMU's monitor sent an overlong line")
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        msg = {"execute": command} | ({"arguments": arguments} if arguments else {})
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QMPError(f"QEMU's monitor went away ({e.strerror})") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self._events.append(reply)
                continue
            if "error" in reply:
                raise QMPError(f"QEMU refused {command}: {reply['error'].get('desc')}")
            return reply.get("return")

    def wait_event(self, names: set[str], timeout: float) -> dict | None:
        """The first queued or arriving event named in ``names``; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("event") in names:
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self._events.append(self._read(timeout=left))
            except TimeoutError:
                return None
