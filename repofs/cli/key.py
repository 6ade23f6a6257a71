"""``repofs key list|add|passwd|remove``: the passphrases that open a repository.

Each passphrase is a key slot in the key store (format/keys.py) wrapping the same repository
key; adding, changing or removing one rewrites the key store only (atomically: a crash
leaves the old document or the new one), never the data. Passphrases never come from the
command line: the current one as for every command (--password-file, REPOFS_PASSWORD_FILE,
REPOFS_PASSWORD, prompt), the new one from --new-password-file or a prompt.
"""
from __future__ import annotations

import getpass
import sys
from typing import Annotated, Optional

import typer

from format.errors import PassphraseRequired, UnsupportedFormat

from .common import JsonOpt, PasswordFileOpt, RepoOpt, emit, open_repository

NewPasswordFileOpt = Annotated[Optional[str], typer.Option(
    "--new-password-file", help="File holding the new passphrase (else a prompt).")]

app = typer.Typer(no_args_is_help=True, help="The passphrases (key slots) that open the repository.")


def _new_passphrase(path: str | None) -> bytes:
    if path:
        try:
            with open(path, "rb") as f:
                value = f.read(4096).rstrip(b"\r\n")
        except OSError as e:
            raise PassphraseRequired(f"cannot read the password file {path}: {e.strerror}") from None
        if not value:
            raise PassphraseRequired(f"the password file {path} is empty")
        return value
    if not sys.stdin.isatty():
        raise PassphraseRequired("give the new passphrase with --new-password-file")
    first = getpass.getpass("New passphrase: ").encode()
    if getpass.getpass("Repeat the new passphrase: ").encode() != first:
        raise PassphraseRequired("the passphrases do not match")
    if not first:
        raise PassphraseRequired("an empty passphrase is not allowed")
    return first


def _open_encrypted(repo: str | None, password_file: str | None):
    repository = open_repository(repo, password_file)
    if repository.key_slot is None:
        raise UnsupportedFormat("this repository is unencrypted: it has no passphrases")
    return repository


@app.command("list")
def list_keys(repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """List the key slots; the one your passphrase opened is marked."""
    repository = _open_encrypted(repo, password_file)
    rows = [{"id": s.id, "created": s.created, "current": s.id == repository.key_slot,
             "kdf": dict(s.kdf)} for s in repository.key_store().slots]
    if json_out:
        emit(rows)
        return
    for r in rows:
        kdf = r["kdf"]
        typer.echo(f"{r['id']}{' (this passphrase)' if r['current'] else ''}\t{r['created'] or '-'}\t"
                   f"argon2id t={kdf['time_cost']} m={kdf['memory_kib']}KiB p={kdf['parallelism']}")


@app.command("add")
def add(repo: RepoOpt = None, password_file: PasswordFileOpt = None,
        new_password_file: NewPasswordFileOpt = None) -> None:
    """Add a passphrase that opens the repository too."""
    repository = _open_encrypted(repo, password_file)
    slot = repository.add_key(_new_passphrase(new_password_file))
    typer.echo(f"added key slot {slot}")


@app.command("passwd")
def passwd(repo: RepoOpt = None, password_file: PasswordFileOpt = None,
           new_password_file: NewPasswordFileOpt = None) -> None:
    """Change the passphrase you opened the repository with."""
    repository = _open_encrypted(repo, password_file)
    assert repository.key_slot is not None
    repository.change_key(repository.key_slot, _new_passphrase(new_password_file))
    typer.echo(f"changed the passphrase of key slot {repository.key_slot}")


@app.command("remove")
def remove(slot: Annotated[str, typer.Argument(help="The key slot's id (see `repofs key list`).")],
           repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
    """Remove a passphrase; the last one cannot be removed."""
    repository = _open_encrypted(repo, password_file)
    repository.remove_key(slot)
    typer.echo(f"removed key slot {slot}")
