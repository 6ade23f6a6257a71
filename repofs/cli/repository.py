"""``repofs init``, ``generations`` and ``check``: the repository itself."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from format.errors import RepositoryExists
from format.location import is_remote, open_backend
from format.repository import DEFAULT_CHUNK_SIZE, Repository
from format.s3backend import Retention

from . import exitcodes
from .common import JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository, repo_path
from .passphrase import read_passphrase
from repofs.view.tree import RepositoryView


def init(repo_arg: Annotated[Optional[str], typer.Argument(metavar="[REPO]", help="Directory to create.")] = None,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None,
         encryption: Annotated[str, typer.Option(help="'aes-256-gcm', or 'none' for an unencrypted repository.")] = "aes-256-gcm",
         chunk_size: Annotated[int, typer.Option(help="Chunk size in bytes.")] = DEFAULT_CHUNK_SIZE,
         immutable: Annotated[Optional[int], typer.Option(
             "--immutable", metavar="DAYS",
             help="S3 only: lock every object with S3 Object Lock for DAYS days (docs/s3.md).")] = None,
         lock_mode: Annotated[str, typer.Option(
             "--lock-mode", help="Object Lock mode with --immutable: compliance or governance.")] = "compliance") -> None:
    """Create a new repository (a directory or s3://bucket/prefix)."""
    path = repo_path(repo_arg or repo)
    if encryption not in ("aes-256-gcm", "none"):
        raise UsageProblem(f"unknown encryption {encryption!r}: use 'aes-256-gcm' or 'none'")
    retention = None
    if immutable is not None:
        if not is_remote(path):
            raise UsageProblem("--immutable needs an s3:// repository in a bucket with Object Lock")
        try:
            retention = Retention(lock_mode.upper(), immutable)
        except ValueError as e:
            raise UsageProblem(str(e)) from None
    encrypted = encryption != "none"
    if encrypted and not is_remote(path) and os.path.exists(os.path.join(path, "config")):
        Repository.init(path, None)  # raises RepositoryExists before asking for a passphrase
    if encrypted and is_remote(path) and open_backend(path).exists("config"):
        raise RepositoryExists(f"{path} already exists")  # before asking for a passphrase
    passphrase = read_passphrase(password_file, confirm=True) if encrypted else None
    try:
        Repository.init(path, passphrase, encrypted=encrypted, chunk_size=chunk_size, retention=retention)
    except ValueError as e:
        raise UsageProblem(str(e)) from None
    locked = f", objects locked {retention.days} days ({retention.mode.lower()})" if retention else ""
    typer.echo(f"created {'an encrypted' if encrypted else 'an UNENCRYPTED'} repository at {path}{locked}")


def generations(vm: Annotated[Optional[str], typer.Argument(help="Only this VM.")] = None,
                repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """List the generations in the repository."""
    view = RepositoryView(open_repository(repo, password_file))
    vms = [vm] if vm else view.vms()
    rows = []
    for name in vms:
        gens = view.generations(name)
        if vm and not gens:
            view.generation(name)  # raises VMNotFound
        for g in gens:
            rows.append({"vm": g.vm, "generation": g.name, "time": g.manifest.time, "manifest": g.manifest_name,
                         "disks": [{"label": d.label, "capacity": d.capacity, "data_bytes": d.entry.data_bytes}
                                   for d in g.disks]})
    if json_out:
        emit(rows)
        return
    for r in rows:
        disks = ", ".join(f"{d['label']} {d['capacity'] / 2**30:.2f} GiB" for d in r["disks"])
        typer.echo(f"{r['vm']}\t{r['generation']}\t{disks}")


def check(repo: RepoOpt = None, password_file: PasswordFileOpt = None,
          read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and re-hash every chunk.")] = False,
          json_out: JsonOpt = False) -> None:
    """Verify the repository; exit 1 when anything is damaged."""
    from format.check import check as check_repository
    repository = open_repository(repo, password_file)
    if getattr(repository.backend, "cache", None) is not None:
        repository.backend.cache = None  # check the store itself, not this host's copies
    report = check_repository(repository, read_data=read_data)
    if json_out:
        emit({"ok": report.ok, "generations": report.generations, "disks": report.disks,
               "chunks": report.chunks, "chunks_read": report.chunks_read,
               "problems": [vars(p) | {"text": p.describe()} for p in report.problems]})
    else:
        for p in report.problems:
            typer.echo(f"DAMAGED {p.describe()}")
        state = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        typer.echo(f"{state}: {report.generations} generations, {report.disks} disks, "
                   f"{report.chunks} chunks{' read and verified' if read_data else ''}")
    if not report.ok:
        raise typer.Exit(exitcodes.FAILURE)
