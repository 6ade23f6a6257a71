"""What every command shares: the repository options, opening the repository, usage errors,
JSON output."""
from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from format.location import is_remote
from format.repository import Repository
from format.s3backend import parse_url

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


def open_repository(repo: str | None, password_file: str | None) -> Repository:
    path = repo_path(repo)
    if is_remote(path):
        try:
            parse_url(path)
        except ValueError as e:
            raise UsageProblem(str(e)) from None
    passphrase = read_passphrase(password_file) if Repository.is_encrypted(path) else None
    return Repository.open(path, passphrase)


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def vm_target(target: str) -> str:
    kind, sep, name = target.partition(":")
    if kind != "vm" or not sep or not name:
        raise UsageProblem(f"unknown target {target!r}: use vm:NAME")
    return name
