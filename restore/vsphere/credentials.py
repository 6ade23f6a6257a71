"""Who logs in to vSphere: the server, the user and the password, from wherever they are given.

Role: ``resolve_credentials`` takes the options, then ``VSPHERE_SERVER``, ``VSPHERE_USER``,
``VSPHERE_PASSWORD``, then a prompt on a terminal. Apart from ``session`` (which logs in with
them) so that a command can check them — and fail on missing ones — before it imports pyVmomi.
The password is never part of a message or a ``repr``. A password file is read by the rule of
``format.secretfile`` (the whole file, trailing CR/LF stripped, UTF-8, a warning when others may read
it).
"""
from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass, field
from typing import Mapping

from .errors import CredentialsMissing
from format.secretfile import PasswordFileError, read_password_file

ENV_SERVER = "VSPHERE_SERVER"
ENV_USER = "VSPHERE_USER"
ENV_PASSWORD = "VSPHERE_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    server: str
    user: str
    password: str = field(repr=False)


def resolve_credentials(server: str | None, user: str | None, password_file: str | None, *,
                        env: Mapping[str, str] | None = None, interactive: bool | None = None) -> Credentials:
    """Options first, then the environment, then a prompt (only on a terminal)."""
    environ: Mapping[str, str] = os.environ if env is None else env
    server = server or environ.get(ENV_SERVER)
    user = user or environ.get(ENV_USER)
    if not server:
        raise CredentialsMissing(f"no vSphere server: give --server or set {ENV_SERVER}")
    if not user:
        raise CredentialsMissing(f"no vSphere user: give --user or set {ENV_USER}")
    if password_file:
        try:
            password = read_password_file(password_file)
        except PasswordFileError as e:
            raise CredentialsMissing(str(e)) from None
    elif environ.get(ENV_PASSWORD) is not None:
        password = environ[ENV_PASSWORD]
    else:
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            raise CredentialsMissing(
                f"no vSphere password: give --password-file or set {ENV_PASSWORD}")
        password = getpass.getpass(f"Password for {user} at {server}: ")
    return Credentials(server, user, password)
