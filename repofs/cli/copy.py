"""``repofs copy``: generations to a second repository (format/copy.py)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from format.copy import Copier, select
from format.location import normalize
from format.repository import Repository

from .units import format_size
from .progress import Progress
from .common import (JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository,
                     vm_target)
from .passphrase import read_passphrase


def copy(targets: Annotated[Optional[list[str]], typer.Argument(
             metavar="[vm:NAME]...", help="VMs to copy (default: every VM).")] = None,
         to: Annotated[str, typer.Option("--to", metavar="REPO", help=(
             "The target repository (a directory or s3://bucket/prefix), created beforehand "
             "with 'repofs init' and the same --chunk-size."))] = "",
         to_password_file: Annotated[Optional[str], typer.Option(
             "--to-password-file", envvar="REPOFS_TO_PASSWORD_FILE",
             help="The target's passphrase (default: the source's).")] = None,
         generation: Annotated[Optional[str], typer.Option(
             "--generation", help="Only this generation of each VM ('latest': the newest).")] = None,
         verify: Annotated[bool, typer.Option("--verify", help="Read every sent chunk back from the target.")] = False,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Copy generations to another repository, sending only the chunks it lacks (resumable)."""
    parsed = [vm_target(t) for t in targets or []]
    vms = [t.vm for t in parsed]
    if generation is None and len(parsed) == 1 and parsed[0].generation:
        generation = parsed[0].generation   # vm:NAME@GEN names the generation too
    if not to:
        raise UsageProblem("give the target repository with --to REPO")
    target_location = normalize(to)
    source = open_repository(repo, password_file)
    if target_location == normalize(source.location):
        raise UsageProblem("--to names the source repository itself")
    needs = Repository.is_encrypted(target_location)
    passphrase = None
    if needs:
        passphrase = read_passphrase(to_password_file) if to_password_file else \
            read_passphrase(password_file)
    target = Repository.open(target_location, passphrase)
    names = select(source, vms, generation)
    progress = Progress("copy", unit="chunks")
    try:
        report = Copier(source, target, verify=verify, progress=progress).copy(names)
    finally:
        progress.finish()
    if json_out:
        emit({"copied": [list(c) for c in report.copied], "skipped": [list(s) for s in report.skipped],
              "chunks_read": report.chunks_read, "chunks_sent": report.chunks_sent,
              "bytes_sent": report.bytes_sent, "chunks_present": report.chunks_present})
        return
    for vm, gen in report.copied:
        typer.echo(f"copied {vm} {gen}")
    for vm, gen, why in report.skipped:
        typer.echo(f"skipped {vm} {gen}: {why}")
    typer.echo(f"{len(report.copied)} generation(s) copied: {report.chunks_sent} chunks sent "
               f"({format_size(report.bytes_sent)}), {report.chunks_present} already in the target")
