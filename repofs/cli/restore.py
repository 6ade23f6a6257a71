"""``repofs restore``: into vCenter, or a generation's disks to local files (--to-dir)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import exitcodes, output, outcomes, shapes
from .common import JsonOpt, PasswordFileOpt, QuietOpt, RepoOpt, UsageProblem, emit, open_repository, opening_repository, vm_target
from .progress import Progress
from .units import format_duration, format_rate, format_size
from .sessionopts import (CaFileOpt, InsecureOpt, ServerOpt, ThumbprintOpt, TransportOpt, TRANSPORTS, UserOpt,
                          VddkInProcessOpt, VddkLibdirOpt, VSpherePasswordFileOpt, session_options)
from repofs.view.chunkcache import DEFAULT_CACHE_BYTES
from repofs.view.tree import RepositoryView
from restore.vsphere.options import RestoreOptions
from restore.vsphere.outcome import Outcome


def restore(targets: Annotated[list[str], typer.Argument(metavar="vm:NAME[@GEN]...", help="The VMs (or ivd:NAME first-class disks), and generations, to restore.")],
            to_dir: Annotated[Optional[str], typer.Option("--to-dir", help="Write the disks as files here (no vCenter).")] = None,
            generation: Annotated[Optional[str], typer.Option("--generation", "-g", help="Default: the latest.")] = None,
            fmt: Annotated[str, typer.Option("--format", help="raw or vmdk (with --to-dir).")] = "raw",
            repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False,
            name: Annotated[Optional[str], typer.Option("--name", help="Name of the restored VM (default: <vm>-restored-<generation>).")] = None,
            datacenter: Annotated[Optional[str], typer.Option("--datacenter", help="Default: the saved one.")] = None,
            folder: Annotated[Optional[str], typer.Option("--folder", help="VM folder, below the datacenter's (default: the saved one, created if missing).")] = None,
            resource_pool: Annotated[Optional[str], typer.Option("--resource-pool", help="Resource pool, cluster or host path below the datacenter's host folder.")] = None,
            host: Annotated[Optional[str], typer.Option("--host", help="ESXi host (default: vCenter's choice).")] = None,
            datastore: Annotated[Optional[list[str]], typer.Option("--datastore", help="DS for the VM and its disks, or LABEL=DS for one disk (repeatable).")] = None,
            storage_profile: Annotated[Optional[str], typer.Option("--storage-profile", help="Storage policy for the VM and its disks.")] = None,
            network: Annotated[Optional[list[str]], typer.Option("--network", help="OLD=NEW network mapping (repeatable); OLD= leaves the NIC disconnected.")] = None,
            power_on: Annotated[bool, typer.Option("--power-on", help="Power the VM on at the end.")] = False,
            overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a VM of the same name (destroyed once the restore succeeded).")] = False,
            force: Annotated[bool, typer.Option("--force", help="With --to-dir: replace existing files; with --overwrite: also a powered-on VM.")] = False,
            quiet: QuietOpt = False,
            import_vmx: Annotated[bool, typer.Option("--import", help="Register the saved .vmx instead of creating from the saved configuration.")] = False,
            recover_identity: Annotated[bool, typer.Option("--recover-identity", help="Keep the UUIDs and MAC addresses (default: new ones).")] = False,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
            in_place: Annotated[bool, typer.Option("--in-place", help="Quick Rollback: write back into the existing VM only the blocks that differ from the generation.")] = False,
            from_dir: Annotated[Optional[str], typer.Option("--from", help="A generation folder of a mount, instead of the repository.")] = None,
            server: ServerOpt = None, user: UserOpt = None,
            vsphere_password_file: VSpherePasswordFileOpt = None, thumbprint: ThumbprintOpt = None,
            insecure: InsecureOpt = False, ca_file: CaFileOpt = None, transport: TransportOpt = TRANSPORTS,
            vddk_libdir: VddkLibdirOpt = None, vddk_in_process: VddkInProcessOpt = False,
            threads: Annotated[int, typer.Option("--threads", help="Disk pieces read and written at once.")] = 4,
            verify_written: Annotated[bool, typer.Option("--verify-written", help="Read every written piece back through VixDiskLib and compare (twice the I/O).")] = False) -> None:
    """Restore VMs into vCenter (or, with --to-dir, a generation's disks to local files)."""
    if quiet:
        output.set_level(quiet=True)
    # ivd:NAME, a first-class disk, is stored as ivd-NAME (restore/backup/firstclass.py).
    parsed = [vm_target(f"vm:ivd-{t[4:]}") if t.startswith("ivd:") and len(t) > 4 else vm_target(t) for t in targets]
    gens = {t.generation for t in parsed if t.generation}
    if gens and generation:
        raise UsageProblem("give the generation once: vm:NAME@GEN or --generation, not both")
    if len(gens) > 1 or (gens and len(parsed) > 1):
        raise UsageProblem("vm:NAME@GEN names one generation: restore one VM at a time with it")
    generation = generation or (gens.pop() if gens else None)
    vms = [t.vm for t in parsed]
    if to_dir:
        if len(vms) != 1:
            raise UsageProblem("--to-dir restores one VM at a time")
        vm = vms[0]
        import time

        from repofs.view.export import DEFAULT_WORKERS, FORMATS, restore_to_dir
        if fmt not in FORMATS:
            raise UsageProblem(f"unknown format {fmt!r}: use raw or vmdk")
        repository = open_repository(repo, password_file)
        with repository.lease("reader"):   # what it reads stays while it reads (docs/format.md 9.2)
            view = RepositoryView(repository)
            gen = view.generation(vm, generation)
            progress = Progress(f"restore {vm}")
            started = time.monotonic()
            # object storage answers slowly but in parallel: as many reads as it takes uploads
            workers = max(DEFAULT_WORKERS, getattr(repository.backend, "parallelism", 2))
            with output.interrupted(f"restore of {vm} generation {gen.name} to {to_dir} stopped; the disk "
                                    "being written was removed, disks already restored stay"):
                done = restore_to_dir(gen, to_dir, fmt, workers=workers, force=force, progress=progress)
            progress.finish()
            seconds = time.monotonic() - started
        written = sum(d.written_bytes for d in done)
        if json_out:
            emit({**shapes.generation_ref(gen), "seconds": round(seconds, 3), "written_bytes": written,
                  "disks": [vars(d) for d in done]})
        elif not output.quiet():
            for d in done:
                typer.echo(f"{d.label}: {', '.join(d.paths)} ({format_size(d.written_bytes)} of data)")
            typer.echo(f"{vm} generation {gen.name}: {format_size(written)} written in "
                       f"{format_duration(seconds)} ({format_rate(written, seconds)})")
        return
    if name and len(vms) > 1:
        raise UsageProblem("--name names one VM: restore the VMs one at a time")
    if from_dir and len(vms) > 1:
        raise UsageProblem("--from is one generation folder: restore one VM with it")
    if in_place:
        clash = [flag for flag, given in (("--overwrite", overwrite), ("--name", name), ("--import", import_vmx),
                                          ("--datastore", datastore), ("--network", network), ("--folder", folder),
                                          ("--resource-pool", resource_pool), ("--host", host),
                                          ("--recover-identity", recover_identity), ("--dry-run", dry_run),
                                          ("--from", from_dir)) if given]
        if clash:
            raise UsageProblem(f"--in-place writes into the existing VM: {clash[0]} does not apply")
    elif force and not overwrite and not to_dir:
        raise UsageProblem("--force only goes with --overwrite (or --in-place)")
    if threads < 1:
        raise UsageProblem("--threads must be at least 1")
    vm_datastore = [d for d in datastore or [] if "=" not in d]
    if len(vm_datastore) > 1:
        raise UsageProblem("give one --datastore DS for the VM; per disk use --datastore LABEL=DS")
    session = session_options(server=server, user=user, password_file=vsphere_password_file,
                              thumbprint=thumbprint, insecure=insecure, ca_file=ca_file,
                              transport=transport, vddk_libdir=vddk_libdir, vddk_in_process=vddk_in_process)
    options = RestoreOptions(
        session=session, name=name, datacenter=datacenter, folder=folder, resource_pool=resource_pool,
        host=host, datastore=vm_datastore[0] if vm_datastore else None,
        disk_datastores=_pairs([d for d in datastore or [] if "=" in d], "--datastore", allow_empty=False),
        storage_profile=storage_profile, networks=_pairs(network or [], "--network", allow_empty=True),
        power_on=power_on, overwrite=overwrite, force=force, import_vmx=import_vmx,
        recover_identity=recover_identity, dry_run=dry_run, workers=threads, verify_written=verify_written,
        in_place=in_place)
    _restore_vsphere(vms, repo=repo, password_file=password_file, generation=generation,
                     from_dir=from_dir, json_out=json_out, options=options)


def rollback_cache_bytes(threads: int) -> int:
    """The chunk cache of a Quick Rollback: more than the chunks of its read-ahead window (4
    pieces of at most a chunk per thread with changed blocks, 2 of ~4 MiB when comparing), so
    that a chunk two neighbouring pieces share is read once."""
    return max(32 << 20, 2 * threads * (6 << 20))


def _pairs(specs: list[str], option: str, *, allow_empty: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        old, sep, new = spec.partition("=")
        if not sep or not old or (not new and not allow_empty):
            raise UsageProblem(f"{option} {spec!r}: use {option} OLD=NEW")
        out[old] = new
    return out


def _restore_vsphere(vms: list[str], *, repo: str | None, password_file: str | None,
                     generation: str | None, from_dir: str | None, json_out: bool,
                     options: RestoreOptions) -> None:
    """The vCenter path of ``restore``: restore/ does the vSphere side; the generations come
    from the repository's views, or from a mounted generation folder (repofs.genfolder)."""
    # Imported here: pyVmomi and VixDiskLib cost every other command their start-up time.
    # These modules do not import pyVmomi: restorerun does, once the data is on its way.
    from restore.vm import runner as restorerun

    from repofs.view.folder import GenerationFolder

    opened: list = []
    # Quick Rollback reads each chunk it needs once, in disk order, never again: a small cache
    # (what a piece shares with the next) keeps reusing the same memory, where the views'
    # default 256 MiB would hold every chunk read, each in fresh pages the kernel must fault
    # in and zero (a fifth of the rollback's read threads' CPU, measured with perf).
    cache_bytes = rollback_cache_bytes(options.workers) if options.in_place else DEFAULT_CACHE_BYTES
    # The repository opens (its key derived) on a thread while the restore imports pyVmomi;
    # the restore waits for it before it logs in (``ready``).
    opening = None if from_dir else opening_repository(repo, password_file)
    views: list[RepositoryView] = []

    def ready() -> None:
        if opening is not None:
            views.append(RepositoryView(opening(), cache_bytes))

    def loader(vm: str):
        def load():
            if from_dir:
                folder = GenerationFolder.open(from_dir, vm)
                opened.append(folder)
                return folder
            return views[0].generation(vm, generation)
        return load

    progress = Progress("restore")

    def show(outcome: Outcome) -> None:
        progress.finish()
        if not json_out:
            for line in outcomes.restore_lines(outcome):
                (typer.echo if outcome.ok else lambda t: typer.echo(t, err=True))(line)

    try:
        results = restorerun.run([(f"vm:{vm}", loader(vm)) for vm in vms], options,
                                 on_event=lambda t: typer.echo(t, err=True),
                                 on_progress=progress, on_outcome=show, ready=ready)
    finally:
        for folder in opened:
            folder.close()
    if json_out:
        emit([outcomes.restore_json(o) for o in results])
    failed = [o for o in results if not o.ok]
    if failed:
        if len(results) == 1:
            raise failed[0].error  # type: ignore[misc]  # its own exit code
        raise typer.Exit(exitcodes.FAILURE)
