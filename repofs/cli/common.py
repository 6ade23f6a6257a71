"""What every command shares: the repository options, opening the repository, usage errors,
JSON output."""
from __future__ import annotations

import json
import os
import stat
import sys
from typing import Annotated, Optional

import typer

from format.repository import Repository

from repofs.errors import RepofsError
from repofs.view import targets

from . import oplog
from .passphrase import read_passphrase

RepoOpt = Annotated[Optional[str], typer.Option("--repo", "-r", envvar="REPOFS_REPOSITORY",
                                                help="Repository directory.")]
PasswordFileOpt = Annotated[Optional[str], typer.Option("--password-file", envvar="REPOFS_PASSWORD_FILE",
                                                        help="File holding the repository passphrase.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary; errors only.")]


class NotARepository(RepofsError):
    """The repository path names something that is not a directory (a file, a device)."""


class UsageProblem(typer.BadParameter):
    """A command line that cannot be carried out (exit code 2, like typer's own)."""


def repo_path(repo: str | None) -> str:
    if not repo:
        raise UsageProblem("no repository given: use --repo/-r or REPOFS_REPOSITORY")
    return repo


def check_repository_path(path: str) -> str:
    """A typo that names a file is not a damaged repository: say what it is (exit 3)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path                 # the repository layer says "no repository at ..."
    except NotADirectoryError:
        raise NotARepository(f"{path}: a parent of this path is not a directory; "
                             "give the repository's directory") from None
    if not stat.S_ISDIR(mode):
        raise NotARepository(f"{path} is a file, not a repository directory")
    return path


def open_repository(repo: str | None, password_file: str | None) -> Repository:
    path = check_repository_path(repo_path(repo))
    oplog.opened(path)
    passphrase = read_passphrase(password_file) if Repository.is_encrypted(path) else None
    return Repository.open(path, passphrase)


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def vm_target(target: str) -> targets.Target:
    """``vm:NAME[@GEN]`` (repofs.view.targets, the one syntax of every command)."""
    return targets.parse(target)
