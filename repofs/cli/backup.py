"""``repofs backup``: local disk sources (file:PATH) or vSphere targets (vm:, vapp:, ivd:)."""
from __future__ import annotations

from typing import Annotated, Any, Optional, Sequence

import typer

from . import exitcodes, output, outcomes, shapes
from .common import JsonOpt, PasswordFileOpt, QuietOpt, RepoOpt, UsageProblem, emit, open_repository
from .progress import Progress
from .units import format_duration, format_rate, format_ratio, format_size, parse_duration
from .sessionopts import (CaFileOpt, InsecureOpt, ServerOpt, ThumbprintOpt, TransportOpt, TRANSPORTS, UserOpt,
                          VddkInProcessOpt, VddkLibdirOpt, VSpherePasswordFileOpt, session_options)
from repofs.ingest.backup import BackupReport, backup as ingest_backup, latest_generation
from repofs.ingest.sources import (DiskSource, LocalImage, SparseImage, load_changed_extents, open_image,
                                   sanitize_label)
from repofs.view.targets import check_vm_name
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
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be read; write nothing.")] = False,
           quiet: QuietOpt = False,
           lock_wait: Annotated[str, typer.Option("--lock-wait", help="If another backup of the VM holds its lock, retry for this long (e.g. 30s, 5m).")] = "0",
           at_time: Annotated[Optional[str], typer.Option("--time", help="Record this time (ISO 8601, UTC unless it names a zone, e.g. 2025-01-31T02:00:00Z) as the generation's, for imports of older backups.")] = None) -> None:
    """Back up disks (file:PATH ...) or vSphere VMs (vm:NAME ...) into new generations."""
    if quiet:
        output.set_level(quiet=True)
    try:
        wait_s = parse_duration(lock_wait)
    except ValueError as e:
        raise UsageProblem(f"--lock-wait: {e}") from None
    time_ns = parse_time(at_time) if at_time else None
    if any(spec.partition(":")[0] in ("vm", "vapp", "ivd") for spec in sources):
        session = session_options(server=server, user=user, password_file=vsphere_password_file,
                                  thumbprint=thumbprint, insecure=insecure, ca_file=ca_file,
                                  transport=transport, vddk_libdir=vddk_libdir,
                                  vddk_in_process=vddk_in_process)
        _backup_vsphere(sources, repo, password_file, json_out,
                        BackupOptions(session=session, quiesce=quiesce, dry_run=dry_run), time_ns=time_ns,
                        lock_wait=wait_s)
        return
    paths = []
    for spec in sources:
        kind, sep, rest = spec.partition(":")
        if kind != "file" or not sep or not rest:
            raise UsageProblem(f"unknown source {spec!r}: use file:PATH")
        paths.append(rest)
    if not vm:
        raise UsageProblem("give --vm NAME for file sources")
    check_vm_name(vm)
    repository = open_repository(repo, password_file) if repo or not dry_run else None
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
        parent = latest_generation(repository, vm) if repository is not None else None
        if dry_run:
            _print_plan(vm, images, parent is not None, json_out)
            return
        assert repository is not None
        progress = Progress(f"backup {vm}")
        with output.interrupted(f"backup of VM {vm!r} stopped; no generation was written; chunks it "
                                "stored are unreferenced until 'repofs prune'"):
            report = with_lock_wait(vm, wait_s, lambda: ingest_backup(repository, vm, images, progress=progress,
                                                                       time_ns=time_ns))
        progress.finish()
    finally:
        for image in images:
            image.close()
    manifest = repository.manifests().get(report.manifest)
    _print_backup(report, json_out, parent is not None, images,
                  manifest.time_ns if manifest is not None else None)


def with_lock_wait(vm: str, wait_s: float, attempt):
    """``attempt()``, retried while the VM's lock is held by another backup, for ``wait_s``.
    A refused lock is taken before anything is written, so a retry starts clean."""
    import time

    from format.errors import RepositoryBusy
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return attempt()
        except RepositoryBusy:
            if time.monotonic() >= deadline:
                raise
            if not said and not output.quiet():
                typer.echo(f"waiting up to {format_duration(wait_s)} for another backup of {vm} to end", err=True)
                said = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _print_plan(vm: str, images: Sequence[DiskSource], has_parent: bool, json_out: bool) -> None:
    """``backup --dry-run`` of file sources: what would be read, nothing written."""
    disks: list[dict[str, Any]] = []
    for image in images:
        planned = sum(n for _o, n in image.extents())
        mode = "changed" if image.extents_are_changes else "full"
        disks.append({"label": image.label, "capacity_bytes": image.capacity,
                      "planned_bytes": planned, "mode": mode})
    if json_out:
        emit({"vm": vm, "dry_run": True, "incremental_possible": has_parent, "disks": disks})
        return
    typer.echo(f"{vm}: dry run, nothing written")
    for d in disks:
        typer.echo(f"  would read {d['label']}: {format_size(d['planned_bytes'])} of "
                   f"{format_size(d['capacity_bytes'])} ({d['mode']})")


def summary(report: BackupReport, has_parent: bool, images: Sequence[DiskSource] | None = None) -> dict:
    """The figures of a finished backup, as ``--json`` gives them and the summary prints them."""
    read = sum(d.read_bytes for d in report.disks)
    new = sum(d.new_bytes for d in report.disks)
    plain = sum(getattr(d, "new_plain_bytes", 0) for d in report.disks)
    incremental = any(d.mode == "changed" for d in report.disks)
    if incremental:
        why = None
    elif not has_parent:
        why = "first backup of this VM"
    else:
        reasons = [d.mode[len("full ("):-1] for d in report.disks if d.mode.startswith("full (")]
        why = reasons[0] if reasons else "no change list given: every allocated byte read, unchanged chunks deduplicated"
    return {"kind": "incremental" if incremental else "full", "full_reason": why,
            "read_bytes": read, "new_bytes": new, "new_plain_bytes": plain,
            "dedup_ratio": round(read / plain, 3) if plain else None,
            "compression_ratio": round(plain / new, 3) if new else None,
            "seconds": round(report.seconds, 3),
            "bytes_per_second": int(read / report.seconds) if report.seconds > 0 else 0}


def summary_lines(report: BackupReport, figures: dict) -> list[str]:
    kind = figures["kind"] + (f" ({figures['full_reason']})" if figures["full_reason"] else "")
    dedup = format_ratio(figures["dedup_ratio"]) if figures["dedup_ratio"] else "all deduplicated"
    compression = format_ratio(figures["compression_ratio"]) if figures["compression_ratio"] else "-"
    lines = [f"{report.vm}: generation {report.generation} written",
             f"  kind:        {kind}",
             f"  read:        {format_size(figures['read_bytes'])}",
             f"  stored new:  {format_size(figures['new_bytes'])} (after dedup and compression)",
             f"  dedup:       {dedup}   compression: {compression}",
             f"  duration:    {format_duration(report.seconds)} at {format_rate(figures['read_bytes'], report.seconds)}"]
    if output.verbose():
        lines += [f"  {outcomes.disk_summary(d)}" for d in report.disks]
    return lines


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
                    json_out: bool, opts: BackupOptions, time_ns: int | None = None,
                    lock_wait: float = 0.0) -> None:
    """The vm:/vapp:/ivd: path of ``backup``: restore/ does the vSphere side, ingest writes."""
    # Imported here: pyVmomi and VixDiskLib cost every other command their start-up time.
    from restore.backup import runner

    bad = [t for t in targets if not runner.is_vsphere_target(t)]
    if bad:
        raise UsageProblem(f"cannot mix {bad[0]!r} with vSphere targets: back up files separately")
    # A dry run needs no repository, but reads one when given, to plan incremental reads.
    repository = open_repository(repo, repo_password_file) if repo or not opts.dry_run else None
    progress = Progress("backup")

    def ingest(vm: str, sources: list, metadata: dict) -> BackupReport:
        if repository is None or opts.dry_run:
            raise AssertionError("a dry run writes nothing")
        check_vm_name(vm)
        report = with_lock_wait(vm, lock_wait, lambda: ingest_backup(
            repository, vm, sources, metadata=metadata, progress=progress, time_ns=time_ns))
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
    except KeyboardInterrupt as e:
        # say what became of the VM (app.main prints it, with the code of Ctrl-C or SIGTERM)
        raise output.OperationInterrupted("the backup snapshot was removed, no generation written",
                                          type(e).__name__ == "Terminated") from None
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if json_out:
        emit([outcomes.backup_json(o) for o in result.outcomes])
    if result.failed:
        if len(result.outcomes) == 1:
            raise result.failed[0].error  # type: ignore[misc]  # its own exit code
        raise typer.Exit(exitcodes.FAILURE)


def _print_backup(report: BackupReport, json_out: bool, has_parent: bool,
                  images: Sequence[DiskSource], time_ns: int | None) -> None:
    figures = summary(report, has_parent, images)
    if json_out:
        emit({"vm": report.vm, "generation": report.generation, "manifest": report.manifest,
              **(shapes.time_fields(time_ns) if time_ns is not None else {}),
              **figures, "disks": [vars(d) for d in report.disks]})
        return
    if output.quiet():
        return
    for line in summary_lines(report, figures):
        typer.echo(line)
