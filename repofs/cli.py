"""The ``repofs`` command: thin commands over the layers below; the one place that wires all.

Errors are translated once, in ``main()``, through ``exitcodes``: one line on stderr and a
distinct exit code, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional

from . import keyahead

if __name__ == "__main__":  # python -m repofs.cli: the key derivation overlaps the imports below
    keyahead.start(sys.argv[1:])

import typer  # noqa: E402  (after the early start, on purpose)

from format.repository import DEFAULT_CHUNK_SIZE, Repository

from . import allocator, exitcodes
from .filescmd import build_app as build_files_app
from .ingest import BackupReport, backup as ingest_backup
from .passphrase import read_passphrase
from .progress import Progress
from .sources import DiskSource, load_changed_extents, open_image, sanitize_label
from .views import RepositoryView

# Modules only some commands need (the FUSE stack: pyfuse3 and trio; the checker; the
# restore writer) are imported inside those commands, so a backup does not pay for them.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="repofs: VM backups in a deduplicated, compressed, encrypted repository you can mount.")

RepoOpt = Annotated[Optional[str], typer.Option("--repo", "-r", envvar="REPOFS_REPOSITORY",
                                                help="Repository directory.")]
PasswordFileOpt = Annotated[Optional[str], typer.Option("--password-file", envvar="REPOFS_PASSWORD_FILE",
                                                        help="File holding the repository passphrase.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


class UsageProblem(typer.BadParameter):
    """A command line that cannot be carried out (exit code 2, like typer's own)."""


def _repo_path(repo: str | None) -> str:
    if not repo:
        raise UsageProblem("no repository given: use --repo/-r or REPOFS_REPOSITORY")
    return repo


def open_repository(repo: str | None, password_file: str | None) -> Repository:
    path = _repo_path(repo)
    passphrase = read_passphrase(password_file) if Repository.is_encrypted(path) else None
    return Repository.open(path, passphrase)


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@app.command()
def init(repo_arg: Annotated[Optional[str], typer.Argument(metavar="[REPO]", help="Directory to create.")] = None,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None,
         encryption: Annotated[str, typer.Option(help="'aes-256-gcm', or 'none' for an unencrypted repository.")] = "aes-256-gcm",
         chunk_size: Annotated[int, typer.Option(help="Chunk size in bytes.")] = DEFAULT_CHUNK_SIZE) -> None:
    """Create a new repository."""
    path = _repo_path(repo_arg or repo)
    if encryption not in ("aes-256-gcm", "none"):
        raise UsageProblem(f"unknown encryption {encryption!r}: use 'aes-256-gcm' or 'none'")
    encrypted = encryption != "none"
    if encrypted and os.path.exists(os.path.join(path, "config")):
        Repository.init(path, None)  # raises RepositoryExists before asking for a passphrase
    passphrase = read_passphrase(password_file, confirm=True) if encrypted else None
    try:
        Repository.init(path, passphrase, encrypted=encrypted, chunk_size=chunk_size)
    except ValueError as e:
        raise UsageProblem(str(e)) from None
    typer.echo(f"created {'an encrypted' if encrypted else 'an UNENCRYPTED'} repository at {path}")


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


@app.command()
def backup(sources: Annotated[list[str], typer.Argument(metavar="SOURCE...", help="file:PATH (one per disk), or vm:NAME / vapp:NAME / ivd:NAME (vSphere; several allowed).")],
           vm: Annotated[Optional[str], typer.Option("--vm", help="Name of the VM the disks belong to.")] = None,
           repo: RepoOpt = None, password_file: PasswordFileOpt = None,
           changed_extents: Annotated[Optional[list[str]], typer.Option(
               "--changed-extents", help="JSON list of [offset, length] to read (LABEL=FILE with several disks).")] = None,
           json_out: JsonOpt = False,
           server: Annotated[Optional[str], typer.Option("--server", envvar="VSPHERE_SERVER", help="vCenter or ESXi host[:port] (vm: sources).")] = None,
           user: Annotated[Optional[str], typer.Option("--user", envvar="VSPHERE_USER", help="vSphere user.")] = None,
           vsphere_password_file: Annotated[Optional[str], typer.Option("--vsphere-password-file", envvar="VSPHERE_PASSWORD_FILE", help="File holding the vSphere password (else VSPHERE_PASSWORD, else a prompt).")] = None,
           thumbprint: Annotated[Optional[str], typer.Option("--thumbprint", help="Pin the server certificate's SHA-1 thumbprint (AA:BB:...).")] = None,
           insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify the server certificate.")] = False,
           ca_file: Annotated[Optional[str], typer.Option("--ca-file", help="Trust these CA certificates (PEM) for the server.")] = None,
           quiesce: Annotated[bool, typer.Option("--quiesce", help="Quiesce the guest for the snapshot (retried once without).")] = False,
           transport: Annotated[str, typer.Option("--transport", help="VDDK transport modes, in order of preference.")] = "nbdssl:nbd",
           vddk_libdir: Annotated[Optional[str], typer.Option("--vddk-libdir", envvar="VDDK_LIBDIR", help="Directory of libvixDiskLib.so.")] = None,
           vddk_in_process: Annotated[bool, typer.Option("--vddk-in-process", help="Run VixDiskLib in this process, not in a worker.")] = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="vm: sources: print what would be read, write nothing.")] = False) -> None:
    """Back up disks (file:PATH ...) or vSphere VMs (vm:NAME ...) into new generations."""
    if any(spec.partition(":")[0] in ("vm", "vapp", "ivd") for spec in sources):
        _backup_vsphere(sources, repo, password_file, json_out, server=server, user=user,
                        password_file=vsphere_password_file, thumbprint=thumbprint, insecure=insecure,
                        ca_file=ca_file, quiesce=quiesce, transports=transport, vddk_libdir=vddk_libdir,
                        vddk_isolated=not vddk_in_process, dry_run=dry_run)
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
    images: list[DiskSource] = []
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
            next(i for i in images if i.label == label).limit_to_changes(load_changed_extents(path))
        progress = Progress()
        report = ingest_backup(repository, vm, images, progress=progress)
        progress.finish()
    finally:
        for image in images:
            image.close()
    _print_backup(report, json_out)


def _backup_vsphere(targets: list[str], repo: str | None, repo_password_file: str | None,
                    json_out: bool, **options: object) -> None:
    """The vm:/vapp:/ivd: path of ``backup``: restore/ does the vSphere side, ingest writes."""
    # Imported here: pyVmomi and VixDiskLib cost every other command their start-up time.
    import vddk
    from restore import errors as vsphere_errors, runner

    exitcodes.register([(vsphere_errors.CredentialsMissing, exitcodes.USAGE),
                        (vsphere_errors.VMNotFound, exitcodes.NOT_FOUND),
                        (vsphere_errors.AmbiguousVM, exitcodes.NOT_FOUND),
                        (vsphere_errors.UnsupportedTarget, exitcodes.UNSUPPORTED),
                        (vsphere_errors.VSphereError, exitcodes.VSPHERE),
                        (vddk.VddkError, exitcodes.VDDK)])
    bad = [t for t in targets if not runner.is_vsphere_target(t)]
    if bad:
        raise UsageProblem(f"cannot mix {bad[0]!r} with vSphere targets: back up files separately")
    opts = runner.Options(**options)  # type: ignore[arg-type]
    # A dry run needs no repository, but reads one when given, to plan incremental reads.
    repository = open_repository(repo, repo_password_file) if repo or not opts.dry_run else None
    progress = Progress()

    def ingest(vm: str, sources: list, metadata: dict) -> BackupReport:
        if repository is None or opts.dry_run:
            raise AssertionError("a dry run writes nothing")
        report = ingest_backup(repository, vm, sources, metadata=metadata, progress=progress)
        progress.finish()
        return report

    def previous(vm: str) -> dict[str, dict]:
        gens = RepositoryView(repository).generations(vm) if repository is not None else []
        return {d.label: dict(d.entry.source or {}) for d in gens[-1].disks} if gens else {}

    def show(outcome: runner.Outcome) -> None:
        if not json_out:
            for line in runner.outcome_lines(outcome):
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
        _emit([runner.outcome_json(o) for o in result.outcomes])
    if result.failed:
        if len(result.outcomes) == 1:
            raise result.failed[0].error  # type: ignore[misc]  # its own exit code
        raise typer.Exit(exitcodes.FAILURE)


def _print_backup(report: BackupReport, json_out: bool) -> None:
    if json_out:
        _emit({"vm": report.vm, "generation": report.generation, "manifest": report.manifest,
               "seconds": round(report.seconds, 3),
               "disks": [vars(d) for d in report.disks]})
        return
    typer.echo(f"{report.vm}: generation {report.generation} written in {report.seconds:.1f}s")
    for d in report.disks:
        typer.echo(f"  {d.summary()}")


@app.command()
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
        _emit(rows)
        return
    for r in rows:
        disks = ", ".join(f"{d['label']} {d['capacity'] / 2**30:.2f} GiB" for d in r["disks"])
        typer.echo(f"{r['vm']}\t{r['generation']}\t{disks}")


def _vm_target(target: str) -> str:
    kind, sep, name = target.partition(":")
    if kind != "vm" or not sep or not name:
        raise UsageProblem(f"unknown target {target!r}: use vm:NAME")
    return name


@app.command()
def restore(targets: Annotated[list[str], typer.Argument(metavar="vm:NAME...", help="The VMs to restore.")],
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
            force: Annotated[bool, typer.Option("--force", help="With --overwrite: also a powered-on VM.")] = False,
            import_vmx: Annotated[bool, typer.Option("--import", help="Register the saved .vmx instead of creating from the saved configuration.")] = False,
            recover_identity: Annotated[bool, typer.Option("--recover-identity", help="Keep the UUIDs and MAC addresses (default: new ones).")] = False,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
            from_dir: Annotated[Optional[str], typer.Option("--from", help="A generation folder of a mount, instead of the repository.")] = None,
            server: Annotated[Optional[str], typer.Option("--server", envvar="VSPHERE_SERVER", help="vCenter host[:port].")] = None,
            user: Annotated[Optional[str], typer.Option("--user", envvar="VSPHERE_USER", help="vSphere user.")] = None,
            vsphere_password_file: Annotated[Optional[str], typer.Option("--vsphere-password-file", envvar="VSPHERE_PASSWORD_FILE", help="File holding the vSphere password (else VSPHERE_PASSWORD, else a prompt).")] = None,
            thumbprint: Annotated[Optional[str], typer.Option("--thumbprint", help="Pin the server certificate's SHA-1 thumbprint (AA:BB:...).")] = None,
            insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify the server certificate.")] = False,
            ca_file: Annotated[Optional[str], typer.Option("--ca-file", help="Trust these CA certificates (PEM) for the server.")] = None,
            transport: Annotated[str, typer.Option("--transport", help="VDDK transport modes, in order of preference (san/hotadd write through a snapshot).")] = "nbdssl:nbd",
            vddk_libdir: Annotated[Optional[str], typer.Option("--vddk-libdir", envvar="VDDK_LIBDIR", help="Directory of libvixDiskLib.so.")] = None,
            vddk_in_process: Annotated[bool, typer.Option("--vddk-in-process", help="Run VixDiskLib in this process, not in a worker.")] = False,
            threads: Annotated[int, typer.Option("--threads", help="Disk pieces read and written at once.")] = 4,
            verify_written: Annotated[bool, typer.Option("--verify-written", help="Read every written piece back through VixDiskLib and compare (twice the I/O).")] = False) -> None:
    """Restore VMs into vCenter (or, with --to-dir, a generation's disks to local files)."""
    vms = [_vm_target(t) for t in targets]
    if to_dir:
        if len(vms) != 1:
            raise UsageProblem("--to-dir restores one VM at a time")
        vm = vms[0]
        from .restorefile import FORMATS, restore_to_dir
        if fmt not in FORMATS:
            raise UsageProblem(f"unknown format {fmt!r}: use raw or vmdk")
        view = RepositoryView(open_repository(repo, password_file))
        gen = view.generation(vm, generation)
        progress = Progress()
        done = restore_to_dir(gen, to_dir, fmt, progress=progress)
        progress.finish()
        if json_out:
            _emit({"vm": vm, "generation": gen.name, "disks": [vars(d) for d in done]})
        else:
            for d in done:
                typer.echo(f"{d.label}: {', '.join(d.paths)} ({d.written_bytes} bytes of data)")
        return
    if name and len(vms) > 1:
        raise UsageProblem("--name names one VM: restore the VMs one at a time")
    if from_dir and len(vms) > 1:
        raise UsageProblem("--from is one generation folder: restore one VM with it")
    if force and not overwrite:
        raise UsageProblem("--force only goes with --overwrite")
    if threads < 1:
        raise UsageProblem("--threads must be at least 1")
    _restore_vsphere(vms, repo=repo, password_file=password_file, generation=generation,
                     from_dir=from_dir, json_out=json_out,
                     options=dict(name=name, datacenter=datacenter, folder=folder,
                                  resource_pool=resource_pool, host=host, storage_profile=storage_profile,
                                  power_on=power_on, overwrite=overwrite, force=force, import_vmx=import_vmx,
                                  recover_identity=recover_identity, transports=transport, dry_run=dry_run,
                                  workers=threads, verify_written=verify_written),
                     datastores=datastore or [], networks=network or [],
                     session=dict(server=server, user=user, password_file=vsphere_password_file,
                                  thumbprint=thumbprint, insecure=insecure, ca_file=ca_file,
                                  transports=transport, vddk_libdir=vddk_libdir,
                                  vddk_isolated=not vddk_in_process, dry_run=dry_run))


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
                     options: dict, datastores: list[str], networks: list[str], session: dict) -> None:
    """The vCenter path of ``restore``: restore/ does the vSphere side; the generations come
    from the repository's views, or from a mounted generation folder (repofs.genfolder)."""
    # Imported here: pyVmomi and VixDiskLib cost every other command their start-up time.
    # These modules do not import pyVmomi: restorerun does, once the data is on its way.
    import vddk
    from restore import errors as vsphere_errors, restoreerrors, restorerun
    from restore.options import Options as SessionOptions, RestoreOptions

    from .genfolder import GenerationFolder

    exitcodes.register([(vsphere_errors.CredentialsMissing, exitcodes.USAGE),
                        (restoreerrors.PlacementError, exitcodes.NOT_FOUND),
                        (restoreerrors.VMExists, exitcodes.BUSY),
                        (restoreerrors.SourceUnusable, exitcodes.UNSUPPORTED),
                        (restoreerrors.DiskWriteFailed, exitcodes.VDDK),
                        (vsphere_errors.VMNotFound, exitcodes.NOT_FOUND),
                        (vsphere_errors.AmbiguousVM, exitcodes.NOT_FOUND),
                        (vsphere_errors.VSphereError, exitcodes.VSPHERE),
                        (vddk.VddkError, exitcodes.VDDK)])
    vm_datastore = [d for d in datastores if "=" not in d]
    if len(vm_datastore) > 1:
        raise UsageProblem("give one --datastore DS for the VM; per disk use --datastore LABEL=DS")
    opts = RestoreOptions(**options, datastore=vm_datastore[0] if vm_datastore else None,
                          disk_datastores=_pairs([d for d in datastores if "=" in d], "--datastore",
                                                 allow_empty=False),
                          networks=_pairs(networks, "--network", allow_empty=True))
    opened: list = []
    view = None if from_dir else RepositoryView(open_repository(repo, password_file))

    def loader(vm: str):
        def load():
            if from_dir:
                folder = GenerationFolder.open(from_dir, vm)
                opened.append(folder)
                return folder
            assert view is not None
            return view.generation(vm, generation)
        return load

    progress = Progress()

    def show(outcome: restorerun.Outcome) -> None:
        progress.finish()
        if not json_out:
            for line in restorerun.outcome_lines(outcome):
                (typer.echo if outcome.ok else lambda t: typer.echo(t, err=True))(line)

    try:
        outcomes = restorerun.run([(f"vm:{vm}", loader(vm)) for vm in vms], opts,
                                  SessionOptions(**session), on_event=lambda t: typer.echo(t, err=True),
                                  on_progress=progress, on_outcome=show)
    finally:
        for folder in opened:
            folder.close()
    if json_out:
        _emit([restorerun.outcome_json(o) for o in outcomes])
    failed = [o for o in outcomes if not o.ok]
    if failed:
        if len(outcomes) == 1:
            raise failed[0].error  # type: ignore[misc]  # its own exit code
        raise typer.Exit(exitcodes.FAILURE)


@app.command()
def check(repo: RepoOpt = None, password_file: PasswordFileOpt = None,
          read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and re-hash every chunk.")] = False,
          json_out: JsonOpt = False) -> None:
    """Verify the repository; exit 1 when anything is damaged."""
    from format.check import check as check_repository
    repository = open_repository(repo, password_file)
    report = check_repository(repository, read_data=read_data)
    if json_out:
        _emit({"ok": report.ok, "generations": report.generations, "disks": report.disks,
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


@app.command()
def mount(first: Annotated[str, typer.Argument(metavar="[REPO]", show_default=False, help=(
              "The repository; leave it out to take it from -r/REPOFS_REPOSITORY."))],
          second: Annotated[Optional[str], typer.Argument(metavar="MOUNTPOINT", show_default=False,
                                                          help="An empty directory.")] = None,
          repo: RepoOpt = None, password_file: PasswordFileOpt = None,
          foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Stay in the foreground; log to stderr.")] = False,
          options: Annotated[Optional[list[str]], typer.Option(
              "-o", help="Mount options: allow_other, allow_root, and our own as key=value "
                         "(cache_size, io_timeout, password_file, read_ahead, direct_io=0|1, prefill=0|1).")] = None,
          cache_size: Annotated[str, typer.Option("--cache-size", help="Chunk cache, bytes or e.g. 512M, 2G.")] = "256M",
          io_timeout: Annotated[float, typer.Option("--io-timeout", help="Seconds a read may wait for storage before EIO.")] = 30.0,
          read_ahead: Annotated[int, typer.Option("--read-ahead", help="Chunks prefetched ahead of a sequential reader (0: off).")] = 8,
          direct_io: Annotated[bool, typer.Option("--direct-io/--no-direct-io", help="Flat disk files bypass the page cache (faster streaming).")] = True,
          log_file: Annotated[Optional[str], typer.Option("--log-file", help="Log here (default: stderr with -f, else syslog).")] = None) -> None:
    """Mount the repository read-only: one folder per VM, one per generation."""
    from .fusefs import MountSettings
    from .mount import MountRequest, fsname_of, parse_size, run as run_mount, split_options
    _register_mount_errors()
    mountpoint = second if second is not None else first
    repo_path = first if second is not None else repo
    fuse_opts, ours = split_options(options or [])
    try:
        cache_bytes = parse_size(ours.pop("cache_size", cache_size))
        io_timeout = float(ours.pop("io_timeout", io_timeout))
        read_ahead = int(ours.pop("read_ahead", read_ahead))
        if "direct_io" in ours:
            direct_io = ours.pop("direct_io") not in ("0", "no", "false")
        prefill = ours.pop("prefill", "0") not in ("0", "no", "false")
    except ValueError as e:
        raise UsageProblem(str(e)) from None
    password_file = ours.pop("password_file", None) or password_file
    if ours:
        raise UsageProblem(f"unknown mount option(s): {', '.join(sorted(ours))}")
    if cache_bytes < (4 << 20) or io_timeout <= 0 or read_ahead < 0:
        raise UsageProblem("--cache-size must be at least 4M, --io-timeout positive, --read-ahead >= 0")
    # Absolute paths: the background process changes its directory to "/".
    repository = open_repository(os.path.abspath(repo_path) if repo_path else None, password_file)
    # Read-ahead never claims more than half the cache, or it would evict what it fetched.
    read_ahead = min(read_ahead, max(0, cache_bytes // 2 // repository.chunk_size))
    view = RepositoryView(repository, cache_bytes)
    settings = MountSettings(io_timeout=io_timeout, readahead_chunks=read_ahead, direct_io=direct_io,
                             prefill=prefill)
    run_mount(view, MountRequest(mountpoint, foreground=foreground, fuse_options=fuse_opts,
                                 settings=settings, fsname=fsname_of(repository.location),
                                 log_file=os.path.abspath(log_file) if log_file else None))


@app.command()
def umount(mountpoint: Annotated[str, typer.Argument(help="Where a repository is mounted.")],
           lazy: Annotated[bool, typer.Option("--lazy", "-z", help="Detach now, even if busy.")] = False) -> None:
    """End a mount made by 'repofs mount'."""
    from .mount import unmount as unmount_fs
    _register_mount_errors()
    unmount_fs(mountpoint, lazy=lazy)


def _register_mount_errors() -> None:
    from .mount import MountError
    exitcodes.register([(MountError, exitcodes.FAILURE)])


# `repofs files ...`: guest files of a generation (repofs/filescmd.py)
app.add_typer(build_files_app(open_repository, RepoOpt, PasswordFileOpt), name="files")


def main(argv: list[str] | None = None) -> None:
    allocator.tune()
    keyahead.start(sys.argv[1:] if argv is None else argv)
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="repofs")
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        sys.stderr.write("repofs: error: interrupted\n")
        rc = exitcodes.INTERRUPTED
    except typer.TyperException as e:  # usage errors, typer's own or ours
        sys.stderr.write(f"repofs: error: {e.format_message()}\n")
        rc = exitcodes.USAGE
    except KeyboardInterrupt:
        sys.stderr.write("repofs: error: interrupted\n")
        rc = exitcodes.INTERRUPTED
    except Exception as e:  # translated once, here
        rc = exitcodes.classify(e)
        sys.stderr.write(f"repofs: error: {exitcodes.message(e)}\n")
        if rc == exitcodes.INTERNAL and os.environ.get("REPOFS_DEBUG"):
            raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
