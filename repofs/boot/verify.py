"""Boot verification: boot a generation isolated and headless, wait for a sign of life,
power it off, and say what happened.

Signs of life, any one of them (all that are given must be seen):

- ``serial``: a regular expression found in the serial console's output (read from the log
  file QEMU writes, at most the first ``MAX_SERIAL`` bytes);
- ``port``: a TCP port of the guest answers through a forwarded port of the isolated user
  network: the guest sends bytes, or completes the TCP handshake (QEMU's own table of
  user-network connections says ESTABLISHED; QEMU accepting the host side proves nothing);
- ``script``: a program run once QEMU has started, with ``REPOFS_SERIAL_LOG`` (the serial
  log, growing), ``REPOFS_GUEST_PORT`` (the host port on 127.0.0.1 forwarded to the guest's
  ``port``, empty without one), ``REPOFS_VM`` and ``REPOFS_GENERATION`` in its environment;
  exit status 0 is the sign, any other fails with its last line on stderr as the reason.

The result is a ``format.verification.Verification``; a generation that cannot boot at all
(no boot sector, QEMU refusing the machine) fails with that reason rather than raising.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass

from format.verification import Verification
from repofs.view.tree import GenerationView

from .machine import MachineError
from .qmp import QMPError
from .session import BootOptions, BootSession

MAX_SERIAL = 16 << 20


@dataclass
class Expectation:
    serial: re.Pattern | None = None
    port: int | None = None
    script: str | None = None
    timeout: float = 60.0

    def describe(self, only: set[str] | None = None) -> str:
        """The signs asked for (or those of them in ``only``), as recorded in ``check``."""
        parts = []
        if self.serial is not None and (only is None or "serial" in only):
            parts.append(f"serial /{self.serial.pattern}/")
        if self.port is not None and (only is None or "port" in only):
            parts.append(f"port {self.port}")
        if self.script is not None and (only is None or "script" in only):
            parts.append(f"script {os.path.basename(self.script)}")
        return " and ".join(parts)


class _SerialWatch:
    """Reads the serial log incrementally; the pattern is searched in the new bytes plus the
    last ``OVERLAP`` bytes before them (a line split across two reads is still found), and
    reading stops after ``MAX_SERIAL`` bytes: a chatty guest costs bounded time and memory."""
    OVERLAP = 64 << 10

    def __init__(self, path: str, pattern: re.Pattern | None):
        self.path, self.pattern = path, pattern
        self.pos = 0
        self.tail = b""

    def seen(self) -> bool:
        if self.pattern is None:
            return True
        if self.pos >= MAX_SERIAL:
            return False
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            new = f.read(MAX_SERIAL - self.pos)
        if not new:
            return False
        self.pos += len(new)
        window = self.tail + new
        self.tail = window[-self.OVERLAP:]
        return self.pattern.search(window.decode(errors="replace")) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_answers(port: int, guest_port: int, session: BootSession) -> bool:
    """Whether the guest's ``guest_port`` answers through the forwarded host ``port``.

    QEMU's user network accepts the host side of a forwarded connection at once, before the
    guest has said anything (it may not even have booted): an open connection proves
    nothing. The sign is the guest's: bytes from it, or its side of the connection
    ESTABLISHED in QEMU's table of user-network connections (the handshake with the guest
    completed). A closed port makes QEMU close our side (the guest's RST)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return False
    with s:
        s.settimeout(0.5)
        try:
            return s.recv(1) != b""          # data from the guest, or closed by it
        except socket.timeout:
            pass
        except OSError:
            return False
        return _guest_established(session, guest_port)


def _guest_established(session: BootSession, guest_port: int) -> bool:
    """A TCP connection to ``guest_port`` in state ESTABLISHED in ``info usernet``. With
    ``restrict=on`` the guest opens no connection of its own, so every such line is a
    forwarded connection (ours)."""
    if session.qmp is None:
        return False
    try:
        table = session.qmp.execute("human-monitor-command", **{"command-line": "info usernet"})
    except (QMPError, OSError):
        return False
    for line in str(table or "").splitlines():
        fields = line.split()
        # Protocol[State] FD Source-Address Port Dest-Address Port RecvQ SendQ
        if len(fields) >= 8 and fields[0] == "TCP[ESTABLISHED]" and fields[-3] == str(guest_port):
            return True
    return False


def _last_line(path: str) -> str:
    """The script's last line on stderr, bounded: its own reason for failing."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return "".join(c if c.isprintable() else "?" for c in lines[-1])[:200] if lines else ""


def verify_boot(gen: GenerationView, expect: Expectation, opts: BootOptions) -> Verification:
    host_port = _free_port() if expect.port is not None else None
    opts.network = "isolated"
    opts.console, opts.vnc, opts.keep_overlay = False, None, None
    if host_port is not None and expect.port is not None:
        opts.forward = [(host_port, expect.port)]
    session = BootSession(gen, opts)

    def result(passed: bool, seconds: float | None, reason: str) -> Verification:
        return Verification(gen.manifest_name, time.time_ns(), passed,
                            None if seconds is None else round(seconds, 3), expect.describe(), reason,
                            session.accel)

    try:
        session.start()
    except MachineError as e:
        return result(False, None, str(e))
    script: subprocess.Popen | None = None
    try:
        if expect.script is not None:
            # the script judges the guest; the repository's key is none of its business
            env = {k: v for k, v in os.environ.items() if k != "REPOFS_PASSWORD_FILE"} | {
                                "REPOFS_SERIAL_LOG": session.serial_log,
                                "REPOFS_GUEST_PORT": str(host_port or ""),
                                "REPOFS_VM": gen.vm, "REPOFS_GENERATION": gen.name}
            script_err = os.path.join(session.dir, "script.err")
            with open(script_err, "wb") as err:
                script = subprocess.Popen([expect.script], env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err)
        serial = _SerialWatch(session.serial_log, expect.serial)
        seen = {"serial": expect.serial is None, "port": expect.port is None, "script": expect.script is None}
        deadline = session.started + expect.timeout

        def missing() -> set[str]:
            return {k for k, v in seen.items() if not v}

        powered_off = False
        while True:
            if not seen["serial"]:
                seen["serial"] = serial.seen()
            if not seen["port"]:
                seen["port"] = _port_answers(host_port, expect.port, session)  # type: ignore[arg-type]
            if not seen["script"] and script is not None and script.poll() is not None:
                if script.returncode != 0:
                    said = _last_line(script_err)
                    return result(False, None, f"the script exited with status {script.returncode}"
                                               + (f": {said}" if said else ""))
                seen["script"] = True
            if all(seen.values()):
                return result(True, time.monotonic() - session.started, "")
            if powered_off:
                # the serial log is complete now; a script still judging it gets its time
                script_pending = script is not None and not seen["script"] and script.poll() is None
                if not (script_pending and seen["serial"] and seen["port"]):
                    return result(False, None, f"the guest powered off without the sign ({expect.describe(missing())})")
            failed = session.accel_failed()
            if failed:
                return result(False, None, failed)
            if not session.running():
                return result(False, None, f"QEMU ended: {session.qemu_error() or 'no reason given'}")
            if time.monotonic() > deadline:
                return result(False, None,
                              f"no sign of life ({expect.describe(missing())}) within {expect.timeout:g} s")
            # one more look at the signs after a power-off: the marker may precede it closely
            if powered_off:
                time.sleep(0.1)
            else:
                powered_off = session.wait_shutdown(0.2)
    finally:
        if script is not None and script.poll() is None:
            script.kill()
            script.wait()
        session.stop()
