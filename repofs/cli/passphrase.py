"""Where the repository passphrase comes from: ``--password-file``/``REPOFS_PASSWORD_FILE``,
``REPOFS_PASSWORD``, or a prompt on the terminal. It is never logged or echoed."""
from __future__ import annotations

import getpass
import os
import sys

from format.errors import PassphraseRequired


def read_passphrase(password_file: str | None, *, confirm: bool = False) -> bytes:
    path = password_file or os.environ.get("REPOFS_PASSWORD_FILE")
    if path:
        try:
            with open(path, "rb") as f:
                value = f.read().rstrip(b"\r\n")
        except OSError as e:
            raise PassphraseRequired(f"cannot read the password file {path}: {e.strerror}") from None
        if not value:
            raise PassphraseRequired(f"the password file {path} is empty")
        return value
    env = os.environ.get("REPOFS_PASSWORD")
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise PassphraseRequired("this repository is encrypted: give --password-file, "
                                 "REPOFS_PASSWORD_FILE or REPOFS_PASSWORD")
    first = getpass.getpass("Repository passphrase: ").encode()
    if confirm and getpass.getpass("Repeat the passphrase: ").encode() != first:
        raise PassphraseRequired("the passphrases do not match")
    if not first:
        raise PassphraseRequired("an empty passphrase is not allowed")
    return first
