"""Where the repository passphrase comes from: ``--password-file``/``REPOFS_PASSWORD_FILE``,
``--password-command``/``REPOFS_PASSWORD_COMMAND`` (its standard output, as restic's),
``REPOFS_PASSWORD``, or a prompt on the terminal. It is never logged or echoed.

The password file rule (shared with the vSphere password file, restore/vsphere/credentials.py)
lives in ``format.secretfile``, below both sides."""
from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys

from format.errors import PassphraseRequired
from format.secretfile import PasswordFileError, read_password_file


def read_passphrase(password_file: str | None, *, confirm: bool = False,
                    quiet: bool = False) -> bytes:
    """The passphrase as UTF-8 bytes. A password file is read as
    ``format.secretfile`` says (trailing CR/LF stripped, UTF-8, a warning when
    others may read it; ``quiet`` leaves the warning to a later read)."""
    path = password_file or os.environ.get("REPOFS_PASSWORD_FILE")
    if path:
        try:
            return read_password_file(path, **({"warn": None} if quiet else {})).encode("utf-8")
        except PasswordFileError as e:
            raise PassphraseRequired(str(e)) from None
    command = os.environ.get("REPOFS_PASSWORD_COMMAND")
    if command:
        return _from_command(command)
    env = os.environ.get("REPOFS_PASSWORD")
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise PassphraseRequired("this repository is encrypted: give --password-file, "
                                 "REPOFS_PASSWORD_FILE or REPOFS_PASSWORD")
    if not confirm:
        first = getpass.getpass("Repository passphrase: ").encode()
        if not first:
            raise PassphraseRequired("an empty passphrase is not allowed")
        return first
    sys.stderr.write("The passphrase encrypts every backup. If it is lost, the data is lost: "
                     "nobody can recover it. Keep a copy somewhere safe.\n")
    for _attempt in range(3):
        first = getpass.getpass("New repository passphrase: ").encode()
        if not first:
            sys.stderr.write("an empty passphrase is not allowed; try again\n")
            continue
        if getpass.getpass("Repeat the passphrase: ").encode() == first:
            return first
        sys.stderr.write("the passphrases do not match; try again\n")
    raise PassphraseRequired("no passphrase given twice the same after 3 attempts")


MAX_COMMAND_OUTPUT = 64 << 10


def _from_command(command: str) -> bytes:
    """The passphrase from a command's standard output (trailing CR/LF removed). Its stderr goes
    to ours; its output never appears in a message."""
    try:
        proc = subprocess.run(shlex.split(command), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              timeout=120, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        name = command.split()[0] if command.split() else command
        raise PassphraseRequired(f"--password-command {name!r} could not run: "
                                 f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
    if proc.returncode != 0:
        raise PassphraseRequired(f"--password-command exited with status {proc.returncode}")
    out = proc.stdout[:MAX_COMMAND_OUTPUT + 1].rstrip(b"\r\n")
    if not out or len(out) > MAX_COMMAND_OUTPUT:
        raise PassphraseRequired("--password-command printed no passphrase" if not out else
                                 "--password-command printed more than 64 KiB")
    return out
