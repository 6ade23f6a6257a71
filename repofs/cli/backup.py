"""``repofs backup``: local disk sources (file:PATH) or vSphere targets (vm:, vapp:, ivd:)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import exitcodes, outcomes
from .common import JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository
from .progress import Progress
from .sessionopts import (CaFileOpt, InsecureOpt, ServerOpt, ThumbprintOpt, TransportOpt, TRANSPORTS, UserOpt,
                          VddkInProcessOpt, VddkLibdirOpt, VSpherePasswordFileOpt, session_options)
from repofs.ingest.backup import BackupReport, backup as ingest_backup
from repofs.ingest.sources import LocalImage, SparseImage, load_changed_extents, open_image, sanitize_label
from repofs.view.tree import RepositoryView
from restore.vsphere.options import BackupOptions
from restore.vsphere.outcome import Outcome


def _parse_changed(specs: list[str], labels: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if sep and label in labels:
            out[label] = path
        elif len(labels) == 1:
            out[labels[0]] = spec
        else:
            raise UsageProblem("with several disks, give --changed-extents LABEL=FILE")
    return out


def backup(sources: Annotated[list[str], typer.Argument(metavar="SOURCE...", help="file:PATH (one per disk), or vm:NAME / vapp:NAME / ivd:NAME (vSphere; several allowed).")],
           vm: Annotated[Optional[str], typer.Option("--vm", help="Name of the VM the disks belong to.")] = None,
           repo: RepoOpt = None, password_file: PasswordFileOpt = None,
           changed_extents: Annotated[Optional[list[str]], typer.Option(
               "--changed-extents", help="JSON list of [offset, length] to read (LABEL=FILE with several disks).")] = None,
           json_out: JsonOpt = False,
           server: ServerOpt = None, user: UserOpt = None,
           vsphere_password_file: VSpherePasswordFileOpt = None, thumbprint: ThumbprintOpt = None,
           insecure: InsecureOpt = False, ca_file: CaFileOpt = None,
           quiesce: Annotated[bool, typer.Option("--quiesce", help="Quiesce the guest for the snapshot (retried once without).")] = False,
           transport: TransportOpt = TRANSPORTS, vddk_libdir: VddkLibdirOpt = None,
           vddk_in_process: VddkInProcessOpt = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="vm: sources: print what would be read, write nothing.")] = False,
           at_time: Annotated[Optional[str], typer.Option("--time", help="Record this time (ISO 8601, UTC unless it names a zone, e.g. 2025-01-31T02:00:00Z) as the generation's, for imports of older backups.")] = None) -> None:
    """Back up disks (file:PATH ...) or vSphere VMs (vm:NAME ...) into new generations."""
    time_ns = parse_time(at_time) if at_time else None
    if any(spec.partition(":")[0] in ("vm", "vapp", "ivd") for spec in sources):
        session = session_options(server=server, user=user, password_file=vsphere_password_file,
                                  thumbprint=thumbprint, insecure=insecure, ca_file=ca_file,
                                  transport=transport, vddk_libdir=vddk_libdir,
                                  vddk_in_process=vddk_in_process)
        _backup_vsphere(sources, repo, password_file, json_out,
                        BackupOptions(session=session, quiesce=quiesce, dry_run=dry_run), time_ns=time_ns)
        return
    paths = []
    for spec in sources:
        kind, sep, rest = spec.partition(":")
        if kind != "file" or not sep or not rest:
            raise UsageProblem(f"unknown source {spec!r}: use file:PATH")
        paths.append(rest)
    if not vm:
        raise UsageProblem("give --vm NAME for file sources")
    repository = open_repository(repo, password_file)
    images: list[LocalImage | SparseImage] = []
    try:
        used: set[str] = set()
        for path in paths:
            image = open_image(path)
            label, n = image.label, 1
            while label in used:
                label, n = f"{image.label}_{n}", n + 1
            image.label = sanitize_label(label)
            used.add(image.label)
            images.append(image)
        for label, path in _parse_changed(changed_extents or [], [i.label for i in images]).items():
            next(i for i in images if i.label == label).limit_to_changes(load_changed_extents(path),
                                                                         origin=path)
        progress = Progress()
        report = ingest_backup(repository, vm, images, progress=progress, time_ns=time_ns)
        progress.finish()
    finally:
        for image in images:
            image.close()
    _print_backup(report, json_out)


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from ISO 8601 (``2025-01-31T02:00:00Z``, ``…+01:00``, or
    without a zone: UTC; also ``2025-01-31 02:00:00``)."""
    import datetime as dt
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageProblem(f"--time: not an ISO 8601 time: {text!r} (e.g. 2025-01-31T02:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    seconds = int(when.timestamp())
    if not 0 <= seconds < 1 << 33:
        raise UsageProblem(f"--time: {text!r} is out of range")
    return seconds * 1_000_000_000 + when.microsecond * 1000


def _backup_vsphere(targets: list[str], repo: str | None, repo_password_file: str | None,
                    json_out: bool, opts: BackupOptions, time_ns: int | None = None) -> None:
    """The vm:/vapp:/ivd: path of ``backup``: restore/ does the vSphere side, ingest writes."""
    # Imported here: pyVmomi and VixDiskLib cost every other command their start-up time.
    from restore.backup import runner

    bad = [t for t in targets if not runner.is_vsphere_target(t)]
    if bad:
        raise UsageProblem(f"cannot mix {bad[0]!r} with vSphere targets: back up files separately")
    # A dry run needs no repository, but reads one when given, to plan incremental reads.
    repository = open_repository(repo, repo_password_file) if repo or not opts.dry_run else None
    progress = Progress()

    def ingest(vm: str, sources: list, metadata: dict) -> BackupReport:
        if repository is None or opts.dry_run:
            raise AssertionError("a dry run writes nothing")
        report = ingest_backup(repository, vm, sources, metadata=metadata, progress=progress,
                               time_ns=time_ns)
        progress.finish()
        return report

    def previous(vm: str) -> dict[str, dict]:
        gens = RepositoryView(repository).generations(vm) if repository is not None else []
        return {d.label: dict(d.entry.source or {}) for d in gens[-1].disks} if gens else {}

    def show(outcome: Outcome) -> None:
        if not json_out:
            for line in outcomes.backup_lines(outcome):
                (typer.echo if outcome.ok else lambda t: typer.echo(t, err=True))(line)

    try:
        result = runner.run(targets, opts, ingest=ingest, previous=previous,
                            chunk_size=repository.chunk_size if repository is not None and not opts.dry_run else None,
                            on_event=lambda text: typer.echo(text, err=True), on_outcome=show)
    except KeyboardInterrupt:
        # typer turns Ctrl-C into a silent exit 130: say what became of the VM.
        typer.echo("repofs: error: interrupted; the backup snapshot was removed, no generation written", err=True)
        raise
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if json_out:
        emit([outcomes.backup_json(o) for o in result.outcomes])
    if result.failed:
        if len(result.outcomes) == 1:
            raise result.failed[0].error  # type: ignore[misc]  # its own exit code
        raise typer.Exit(exitcodes.FAILURE)


def _print_backup(report: BackupReport, json_out: bool) -> None:
    if json_out:
        emit({"vm": report.vm, "generation": report.generation, "manifest": report.manifest,
               "seconds": round(report.seconds, 3),
               "disks": [vars(d) for d in report.disks]})
        return
    typer.echo(f"{report.vm}: generation {report.generation} written in {report.seconds:.1f}s")
    for d in report.disks:
        typer.echo(f"  {d.summary()}")
