"""``repofs init``, ``generations`` and ``check``: the repository itself."""
from __future__ import annotations

import datetime as dt
import os
from typing import Annotated, Optional

import typer

from format.errors import RepositoryExists
from format.location import is_remote, open_backend
from format.repository import DEFAULT_CHUNK_SIZE, Repository
from format.security import KnownRepository, default_folder

from . import exitcodes, output, shapes
from .units import format_size, parse_size
from .common import JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository, repo_path
from .passphrase import read_passphrase
from repofs.view import targets
from repofs.view.tree import RepositoryView


def init(repo_arg: Annotated[Optional[str], typer.Argument(metavar="[REPO]", help="Directory to create.")] = None,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None,
         encryption: Annotated[str, typer.Option(help="'aes-256-gcm', or 'none' for an unencrypted repository.")] = "aes-256-gcm",
         chunk_size: Annotated[str, typer.Option("--chunk-size", help="Chunk size: bytes or e.g. 1M, 4M.")] = f"{DEFAULT_CHUNK_SIZE >> 20}M",
         immutable: Annotated[Optional[int], typer.Option(
             "--immutable", metavar="DAYS",
             help="S3 only: lock every object with S3 Object Lock for DAYS days (docs/s3.md).")] = None,
         lock_mode: Annotated[str, typer.Option(
             "--lock-mode", help="Object Lock mode with --immutable: compliance or governance.")] = "compliance") -> None:
    """Create a new repository (a directory or s3://bucket/prefix)."""
    path = repo_path(repo_arg or repo)
    try:
        chunk_bytes = parse_size(chunk_size)
    except ValueError as e:
        raise UsageProblem(f"--chunk-size: {e}") from None
    if encryption not in ("aes-256-gcm", "none"):
        raise UsageProblem(f"unknown encryption {encryption!r}: use 'aes-256-gcm' or 'none'")
    retention = None
    if immutable is not None:
        if not is_remote(path):
            raise UsageProblem("--immutable needs an s3:// repository in a bucket with Object Lock")
        try:
            from format.s3backend import Retention  # object storage only
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
        created = Repository.init(path, passphrase, encrypted=encrypted, chunk_size=chunk_bytes,
                                  retention=retention)
    except ValueError as e:
        raise UsageProblem(f"--chunk-size: {e}") from None
    KnownRepository(default_folder(), created.config.id, path).adopt(created.config.cipher)
    locked = f", objects locked {retention.days} days ({retention.mode.lower()})" if retention else ""
    typer.echo(f"created {'an encrypted' if encrypted else 'an UNENCRYPTED'} repository at {path}{locked}")
    if encrypted:
        typer.echo("keep the passphrase safe: without it nobody, not even you, can read these backups", err=True)


def generations(target: Annotated[Optional[str], typer.Argument(metavar="[vm:NAME]", help="Only this VM.")] = None,
                repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """List the generations: VM, generation, time, kind, sizes, verified/protected markers."""
    from format import marks, verified
    repository = open_repository(repo, password_file)
    view = RepositoryView(repository)
    if target:
        t = targets.parse(target if target.startswith("vm:") else f"vm:{target}", generation_allowed=False)
        targets.resolve_vm(view, t.vm)          # unknown VM: the closest names
        vms = [t.vm]
    else:
        vms = view.vms()
    kept = marks.protected(repository)
    seen = verified.load(repository)
    rows = []
    for name in vms:
        gens = view.generations(name)
        for i, g in enumerate(gens):
            modes = [str((d.entry.source or {}).get("mode", "full")) for d in g.disks]
            kind = "incremental" if any(m == "changed" for m in modes) else "full"
            rows.append({**shapes.generation_ref(g), "kind": kind,
                         "logical_bytes": sum(d.entry.data_bytes for d in g.disks),
                         "capacity_bytes": sum(d.capacity for d in g.disks),
                         "new_bytes": sum(d.entry.new_bytes for d in g.disks),
                         "protected": g.manifest_name in kept,
                         "verified": bool(seen) and _all_verified(g, seen),
                         "latest": i == len(gens) - 1,
                         "disks": [{"label": d.label, "capacity": d.capacity, "data_bytes": d.entry.data_bytes}
                                   for d in g.disks],
                         "boot_verification": _boot_verification(view, g.manifest_name)})
    if json_out:
        emit(rows)
        return
    if not rows:
        typer.echo("no generations yet: back up a VM with 'repofs backup'")
        return
    header = ("VM", "GENERATION", "TIME (UTC)", "KIND", "LOGICAL", "NEW STORED", "FLAGS")
    table = [header] + [(r["vm"], r["generation"] + (" *" if r["latest"] else ""),
                         r["time"].replace("T", " ").rstrip("Z"), r["kind"],
                         format_size(r["logical_bytes"]), format_size(r["new_bytes"]),
                         ",".join(f for f, on in (("verified", r["verified"]), ("protected", r["protected"])) if on) or "-")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {4, 5}
    for row in table:
        typer.echo("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=False))).rstrip())
    typer.echo(f"{len(rows)} generation(s) of {len({r['vm'] for r in rows})} VM(s); * latest")


def _all_verified(g, seen: dict) -> bool:
    from format.verified import PREFIX_HEX
    try:
        return all(cid[:PREFIX_HEX // 2] in seen for d in g.disks for _o, cid in d.index.references())
    except Exception:  # noqa: BLE001 (a damaged index is check's to report, not the listing's)
        return False


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
    if getattr(repository.backend, "cache", None) is not None:
        # check the store itself, not this host's copies (only the S3 backend has a cache; the
        # CLI imports the S3 modules only for an s3:// repository, hence getattr, not isinstance)
        repository.backend.cache = None  # type: ignore[attr-defined]
    started = time.time_ns()
    from .progress import Progress
    progress = Progress("check", unit="chunks")
    with output.interrupted("check stopped; the repository is unchanged (chunks verified so far "
                            "may not be recorded)"):
        report = check_repository(repository, read_data=read, subset=subset,
                                  only_unverified=only_unverified or older_ns is not None,
                                  older_than_ns=older_ns,
                                  progress=(lambda done, total: progress("check", done, total)) if read else None)
    progress.finish()
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
                       f"{format_size(report.unreferenced_bytes)}")
    if not report.ok:
        raise typer.Exit(exitcodes.FAILURE)
