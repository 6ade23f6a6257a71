"""``repofs init``, ``generations`` and ``check``: the repository itself."""
from __future__ import annotations

import datetime as dt
import os
from typing import Annotated, Any, Optional

import typer

from format.errors import RepositoryExists
from format.location import is_remote, open_backend
from format.repository import DEFAULT_CHUNK_SIZE, Repository
from format.s3backend import Retention
from format.security import KnownRepository, default_folder

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
        created = Repository.init(path, passphrase, encrypted=encrypted, chunk_size=chunk_size,
                                  retention=retention)
    except ValueError as e:
        raise UsageProblem(str(e)) from None
    KnownRepository(default_folder(), created.config.id, path).adopt(created.config.cipher)
    locked = f", objects locked {retention.days} days ({retention.mode.lower()})" if retention else ""
    typer.echo(f"created {'an encrypted' if encrypted else 'an UNENCRYPTED'} repository at {path}{locked}")


def generations(vm: Annotated[Optional[str], typer.Argument(help="Only this VM.")] = None,
                repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """List the generations in the repository."""
    view = RepositoryView(open_repository(repo, password_file))
    vms = [vm] if vm else view.vms()
    rows: list[dict[str, Any]] = []
    for name in vms:
        gens = view.generations(name)
        if vm and not gens:
            view.generation(name)  # raises VMNotFound
        for g in gens:
            rows.append({"vm": g.vm, "generation": g.name, "time": g.manifest.time, "manifest": g.manifest_name,
                         "disks": [{"label": d.label, "capacity": d.capacity, "data_bytes": d.entry.data_bytes}
                                   for d in g.disks],
                         "boot_verification": _boot_verification(view, g.manifest_name)})
    if json_out:
        emit(rows)
        return
    for r in rows:
        disks = ", ".join(f"{d['label']} {d['capacity'] / 2**30:.2f} GiB" for d in r["disks"])
        typer.echo(f"{r['vm']}\t{r['generation']}\t{disks}")


def _subset(text: str) -> tuple[int, int] | float:
    text = text.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if 0 < pct <= 100:
                return pct / 100
        else:
            n, _slash, m = text.partition("/")
            if 1 <= int(n) <= int(m):
                return int(n), int(m)
    except ValueError:
        pass
    raise UsageProblem(f"--read-data-subset: use N/M (1 <= N <= M) or a percentage like 10%, not {text!r}")
def _boot_verification(view: RepositoryView, manifest: str) -> dict | None:
    """The newest boot verification record of a generation (``repofs verify --boot``)."""
    from format.verification import latest
    rec = latest(view.store, manifest)  # type: ignore[arg-type]
    if rec is None:
        return None
    return {"passed": rec.passed, "seconds": rec.seconds, "check": rec.check, "reason": rec.reason,
            "accel": rec.accel, "time_ns": rec.time_ns}


def check(repo: RepoOpt = None, password_file: PasswordFileOpt = None,
          read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and re-hash every chunk.")] = False,
          read_data_subset: Annotated[Optional[str], typer.Option("--read-data-subset", help="Read only part of the chunks: N/M (the N-th of M groups by id) or a percentage (10%).")] = None,
          only_unverified: Annotated[bool, typer.Option("--only-unverified", help="Read only chunks no earlier check verified (see --older-than).")] = False,
          older_than: Annotated[Optional[str], typer.Option("--older-than", help="With --only-unverified: also chunks verified longer ago than this (e.g. 30d).")] = None,
          json_out: JsonOpt = False) -> None:
    """Verify the repository; exit 1 when anything is damaged."""
    import time

    from format.check import check as check_repository
    from format.retention import Duration, PolicyError
    subset = _subset(read_data_subset) if read_data_subset else None
    older_ns = None
    if older_than:
        try:
            now = dt.datetime.now(dt.timezone.utc)
            older_ns = int((now - Duration.parse(older_than).before(now)).total_seconds() * 1e9)
        except PolicyError as e:
            raise UsageProblem(f"--older-than: {e}") from None
    read = read_data or subset is not None or only_unverified or older_ns is not None
    repository = open_repository(repo, password_file)
    from format.s3backend import S3Backend
    if isinstance(repository.backend, S3Backend):
        repository.backend.cache = None  # check the store itself, not this host's copies
    started = time.time_ns()
    report = check_repository(repository, read_data=read, subset=subset,
                              only_unverified=only_unverified or older_ns is not None,
                              older_than_ns=older_ns)
    if json_out:
        emit({"ok": report.ok, "generations": report.generations, "disks": report.disks,
               "chunks": report.chunks, "chunks_read": report.chunks_read,
               "unreferenced_chunks": report.unreferenced_chunks,
               "unreferenced_bytes": report.unreferenced_bytes, "started_ns": started,
               "problems": [vars(p) | {"text": p.describe()} for p in report.problems]})
    else:
        for p in report.problems:
            typer.echo(f"DAMAGED {p.describe()}")
        state = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        read_text = f", {report.chunks_read} read and verified" if read else ""
        typer.echo(f"{state}: {report.generations} generations, {report.disks} disks, "
                   f"{report.chunks} chunks{read_text}")
        if report.unreferenced_chunks:
            typer.echo(f"unreferenced (not damage; prune frees them): {report.unreferenced_chunks} chunks, "
                       f"{report.unreferenced_bytes} bytes")
    if not report.ok:
        raise typer.Exit(exitcodes.FAILURE)
