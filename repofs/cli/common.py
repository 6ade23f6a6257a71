"""What every command shares: the repository options, opening the repository, usage errors,
JSON output."""
from __future__ import annotations

import json
import os
import stat
import sys
import threading
from typing import Annotated, Callable, Optional

import typer

from format.errors import UnencryptedRefused
from format.location import is_remote
from format.repository import Repository
from format.security import default_folder

from repofs.errors import RepofsError
from repofs.view import targets

from . import oplog
from .passphrase import read_passphrase

RepoOpt = Annotated[Optional[str], typer.Option("--repo", "-r", envvar="REPOFS_REPOSITORY",
                                                help="Repository: a directory or s3://bucket/prefix.")]
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


def passphrase_configured(password_file: str | None) -> bool:
    return bool(password_file or os.environ.get("REPOFS_PASSWORD_FILE") or os.environ.get("REPOFS_PASSWORD")
                or os.environ.get("REPOFS_PASSWORD_COMMAND"))


def unencrypted_allowed() -> bool:
    """``repofs --allow-unencrypted …`` (or REPOFS_ALLOW_UNENCRYPTED=1)."""
    return os.environ.get("REPOFS_ALLOW_UNENCRYPTED") == "1"


def open_repository(repo: str | None, password_file: str | None) -> Repository:
    """Open the repository, checked against this user's record of it (format/security.py).
    A user who configured a passphrase expects encryption: an unencrypted repository is then
    refused unless allowed by name, so a storage attacker cannot swap one in unnoticed."""
    path, passphrase = _unlocking(repo, password_file)
    return Repository.open(path, passphrase, security_folder=default_folder())


def opening_repository(repo: str | None, password_file: str | None) -> Callable[[], Repository]:
    """``open_repository`` in two halves, for a command with other work to do meanwhile:
    the checks of the path and the passphrase (a prompt included) now, in this thread; the
    opening itself — mostly waiting for the key's derivation, ~0.15 s of C code without the
    GIL — on a thread of its own. The callable returned waits for it, then gives the
    repository or raises what opening it raised."""
    path, passphrase = _unlocking(repo, password_file)
    done: list[Repository] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(Repository.open(path, passphrase, security_folder=default_folder()))
        except BaseException as e:  # raised by the waiter, in its thread
            failed.append(e)

    thread = threading.Thread(target=run, name="open-repository", daemon=True)
    thread.start()

    def wait() -> Repository:
        thread.join()
        if failed:
            raise failed[0]
        return done[0]
    return wait


def _unlocking(repo: str | None, password_file: str | None) -> tuple[str, bytes | None]:
    """The repository's path and its passphrase (None when unencrypted), after the checks
    that need no key."""
    path = repo_path(repo)
    if is_remote(path):
        from format.s3backend import parse_url  # object storage's modules only when it is used
        try:
            parse_url(path)
        except ValueError as e:
            raise UsageProblem(str(e)) from None
    else:
        check_repository_path(path)
    oplog.opened(path)
    if Repository.is_encrypted(path):
        passphrase = read_passphrase(password_file)
    else:
        passphrase = None
        if passphrase_configured(password_file) and Repository.config_cipher(path) == "none" \
                and not unencrypted_allowed():
            raise UnencryptedRefused(f"the repository at {path} is unencrypted but a passphrase is "
                                     "configured; give --allow-unencrypted if that is intended")
    return path, passphrase


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def vm_target(target: str) -> targets.Target:
    """``vm:NAME[@GEN]`` (repofs.view.targets, the one syntax of every command)."""
    return targets.parse(target)
