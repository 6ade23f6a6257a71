"""Reading a password file: the repository passphrase's or the vSphere password's.

Role: ``read_password_file(path)`` returns the secret the file holds, by one rule for both
kinds: the file's bytes with every trailing CR and LF removed (``pass\\r\\n\\n`` -> ``pass``),
all other bytes kept as they are (leading and trailing spaces and tabs are part of the
password), which must be UTF-8 text, not empty, and at most ``MAX_BYTES`` long. A file that
its group or other users can read or write is still used, with one warning line on stderr
(as ssh does for keys): anyone who can read it has the secret.

Raises ``PasswordFileError`` (the callers turn it into their own error: a wrong passphrase,
missing vSphere credentials); its message names the file, never its content.
"""
from __future__ import annotations

import os
import stat
import sys
from typing import Callable

from .errors import RepoError

MAX_BYTES = 64 << 10  # a password, not a document


class PasswordFileError(RepoError):
    """The password file is missing, unreadable, empty, too large or not UTF-8 text."""


def _stderr_warning(text: str) -> None:
    print(f"repofs: warning: {text}", file=sys.stderr, flush=True)


def exposure(mode: int) -> str | None:
    """Who besides the owner may read or write a file of ``mode``, in words, or None."""
    who = [name for name, bits in (("group", stat.S_IRGRP | stat.S_IWGRP),
                                   ("others", stat.S_IROTH | stat.S_IWOTH)) if mode & bits]
    return " and ".join(who) if who else None


def read_password_file(path: str, *,
                       warn: Callable[[str], None] | None = _stderr_warning) -> str:
    """The secret in ``path`` (see the module); ``warn=None`` says nothing about modes."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode) \
                    and not stat.S_ISCHR(st.st_mode):
                raise PasswordFileError(f"the password file {path} is not a file")
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise PasswordFileError(f"cannot read the password file {path}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise PasswordFileError(f"the password file {path} is larger than {MAX_BYTES} bytes: "
                                "not a password file")
    who = exposure(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    if who and warn is not None:
        warn(f"the password file {path} can be read or written by {who} "
             f"(mode {stat.S_IMODE(st.st_mode):04o}); make it private: chmod 600 {path}")
    value = data.rstrip(b"\r\n")
    if not value:
        raise PasswordFileError(f"the password file {path} is empty")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PasswordFileError(f"the password file {path} is not UTF-8 text "
                                f"(byte {e.start} of the password)") from None
