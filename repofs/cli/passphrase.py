"""Where the repository passphrase comes from: ``--password-file``/``REPOFS_PASSWORD_FILE``,
``REPOFS_PASSWORD``, or a prompt on the terminal. It is never logged or echoed.

The password file rule (shared with the vSphere password file, restore/vsphere/credentials.py)
lives in ``format.secretfile``, below both sides."""
from __future__ import annotations

import getpass
import os
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
