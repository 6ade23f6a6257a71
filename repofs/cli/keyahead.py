"""The repository key's derivation started before the CLI is ready to open the repository.

Argon2id takes ~0.15 s of C code that runs without the GIL. A command that opens a
repository first spends about as long importing its modules and parsing its command line,
with one core idle. ``start`` reads the repository and the passphrase source from the raw
command line and the environment — only when the passphrase comes without a prompt — and
starts the derivation then; ``Repository.open`` later takes the result if the repository and
passphrase turned out the same (format/keys.py), and derives anew otherwise. A wrong guess
costs some CPU time, never a wrong key.
"""
from __future__ import annotations

import os

from format.location import is_remote
from format.repository import Repository

from .passphrase import read_passphrase

# Commands whose first act is opening the repository given by -r/--repo or REPOFS_REPOSITORY
# (every ``files`` command but ``umount`` and ``mount --from``, which read a mount instead).
COMMANDS = ("backup", "restore", "generations", "check", "files", "prune")


_started_for: list[str] | None = None   # the command line ``start`` last looked at


def start(argv: list[str]) -> None:
    """Start the derivation for the command line ``argv`` (once: the entry point and
    ``app.main`` both call this, and a second look would read the key store again)."""
    global _started_for
    if argv == _started_for:
        return
    _started_for = list(argv)
    if not argv or argv[0] not in COMMANDS:
        return
    if argv[0] == "files" and (len(argv) < 2 or argv[1] == "umount" or _option(argv, ("--from",))):
        return
    repo = _option(argv, ("-r", "--repo")) or os.environ.get("REPOFS_REPOSITORY")
    password_file = _option(argv, ("--password-file",))
    if not repo or not (password_file or os.environ.get("REPOFS_PASSWORD_FILE")
                        or os.environ.get("REPOFS_PASSWORD")):
        return  # no repository named, or the passphrase would be prompted for
    if is_remote(repo):
        return  # reading the key store ahead would cost the store round trips, not save time
    if not Repository.is_encrypted(repo):
        return
    try:
        passphrase = read_passphrase(password_file, quiet=True)  # the command warns
    except Exception:
        return  # the command itself reports it
    Repository.derive_key_ahead(repo, passphrase)


def _option(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of the options ``names`` (``-r X``, ``--repo X``, ``--repo=X``)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in names and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            name, sep, rest = arg.partition("=")
            if sep and name in names and name.startswith("--"):
                value = rest
    return value
