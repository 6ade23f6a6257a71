"""What every command shares: the repository options, opening the repository, usage errors,
JSON output."""
from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional

import typer

from format.errors import UnencryptedRefused
from format.location import is_remote
from format.repository import Repository
from format.s3backend import parse_url
from format.security import default_folder

from .passphrase import read_passphrase

RepoOpt = Annotated[Optional[str], typer.Option("--repo", "-r", envvar="REPOFS_REPOSITORY",
                                                help="Repository: a directory or s3://bucket/prefix.")]
PasswordFileOpt = Annotated[Optional[str], typer.Option("--password-file", envvar="REPOFS_PASSWORD_FILE",
                                                        help="File holding the repository passphrase.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


class UsageProblem(typer.BadParameter):
    """A command line that cannot be carried out (exit code 2, like typer's own)."""


def repo_path(repo: str | None) -> str:
    if not repo:
        raise UsageProblem("no repository given: use --repo/-r or REPOFS_REPOSITORY")
    return repo


def passphrase_configured(password_file: str | None) -> bool:
    return bool(password_file or os.environ.get("REPOFS_PASSWORD_FILE") or os.environ.get("REPOFS_PASSWORD"))


def unencrypted_allowed() -> bool:
    """``repofs --allow-unencrypted …`` (or REPOFS_ALLOW_UNENCRYPTED=1)."""
    return os.environ.get("REPOFS_ALLOW_UNENCRYPTED") == "1"


def open_repository(repo: str | None, password_file: str | None) -> Repository:
    """Open the repository, checked against this user's record of it (format/security.py).
    A user who configured a passphrase expects encryption: an unencrypted repository is then
    refused unless allowed by name, so a storage attacker cannot swap one in unnoticed."""
    path = repo_path(repo)
    if is_remote(path):
        try:
            parse_url(path)
        except ValueError as e:
            raise UsageProblem(str(e)) from None
    if Repository.is_encrypted(path):
        passphrase = read_passphrase(password_file)
    else:
        passphrase = None
        if passphrase_configured(password_file) and Repository.config_cipher(path) == "none" \
                and not unencrypted_allowed():
            raise UnencryptedRefused(f"the repository at {path} is unencrypted but a passphrase is "
                                     "configured; give --allow-unencrypted if that is intended")
    return Repository.open(path, passphrase, security_folder=default_folder())


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def vm_target(target: str) -> str:
    kind, sep, name = target.partition(":")
    if kind != "vm" or not sep or not name:
        raise UsageProblem(f"unknown target {target!r}: use vm:NAME")
    return name
