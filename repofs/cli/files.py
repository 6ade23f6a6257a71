"""``repofs files``: guest files of a generation — ls, cat, stat, get (rootless), mount/umount.

Addressing: ``vm:NAME[@GENERATION][:DISK[/VOLUME[/path]]]``, e.g.
``vm:web01@2026-11-25T140300Z:scsi0-0/p1/etc/fstab`` or ``vm:web01:disk1/vg0/root/var/log``.
GENERATION defaults to the newest; VOLUME is ``p<N>`` (partition N of the MBR or GPT),
``whole`` (a disk without a partition table) or ``<vg>/<lv>`` (LVM). A VM name cannot contain
``:``; ``@`` splits at the last one.

Guest names (disk labels, volumes, file names, link targets) are printed through
``repofs.guest.names.shown`` in human output — control characters escaped, so a guest cannot
drive the terminal — and as they are in ``--json`` (JSON escapes them).

Thin commands: the work is in ``guestfs`` (reading), ``extract`` (copying out) and
``loopmount`` (the root path). The CLI module wires this sub-app in with ``build_app``
(annotations are evaluated eagerly here: typer reads the closures' option types).
"""
import atexit
import io
import json
import stat as st
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .common import PasswordFileOpt, RepoOpt, open_repository
from .progress import Progress
from repofs.guest.names import shown
from repofs.view.tree import RepositoryView

if TYPE_CHECKING:
    from repofs.guest.guestfs import GuestGeneration, GuestStat


@dataclass(frozen=True)
class Address:
    vm: str
    generation: str | None
    path: str                   # "disk/volume/inner", "" for the generation itself


def parse_address(text: str) -> Address:
    kind, sep, rest = text.partition(":")
    if kind != "vm" or not sep or not rest:
        raise typer.BadParameter(f"unknown address {text!r}: use vm:NAME[@GENERATION][:DISK[/VOLUME[/path]]]")
    who, _, path = rest.partition(":")
    vm, at, gen = who.rpartition("@")
    if not at:
        vm, gen = gen, ""
    if not vm:
        raise typer.BadParameter(f"no VM name in {text!r}")
    return Address(vm, gen or None, path.strip("/"))


def mode_string(mode: int) -> str:
    return st.filemode(mode)


def _time(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def _size(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


AddressArg = Annotated[str, typer.Argument(metavar="vm:NAME[@GEN][:DISK[/VOLUME[/path]]]")]


def _names_as_bytes() -> None:
    """Guest names need not be UTF-8: what does not decode goes out as the bytes it was."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")


def build_app() -> typer.Typer:
    """The ``files`` sub-app."""
    app = typer.Typer(no_args_is_help=True, help="Guest files of a generation: list, read, extract; "
                      "loop-mount partitions (root).")

    def guest(address: Address, repo: str | None, password_file: str | None) -> "GuestGeneration":
        from repofs.guest.guestfs import GuestGeneration  # noqa: PLC0415 (dissect: only the files commands pay for it)
        repository = open_repository(repo, password_file)
        # held until the command ends: a generation forgotten meanwhile stays readable
        atexit.register(repository.lease("reader").begin().end)
        view = RepositoryView(repository)
        return GuestGeneration(view.generation(address.vm, address.generation))

    @app.command("ls")
    def ls(target: AddressArg, repo: RepoOpt = None, password_file: PasswordFileOpt = None,
           long: Annotated[bool, typer.Option("--long", "-l", help="Modes, sizes, times.")] = False,
           json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
        """List disks, volumes, or a directory inside a guest filesystem."""
        _names_as_bytes()
        address = parse_address(target)
        g = guest(address, repo, password_file)
        parts = address.path.split("/") if address.path else []
        if not parts:
            rows = [{"name": d.label, "capacity": d.capacity} for d in g.gen.disks]
            if json_out:
                return _emit(rows)
            for r in rows:
                typer.echo(f"{shown(r['name'])}\t{_size(r['capacity'])}" if long else shown(r["name"]))
            return
        if len(parts) == 1:
            rows = [{"name": v.name, "offset": v.offset, "size": v.size, "fstype": v.fstype,
                     "description": v.description} for v in g.volumes(parts[0])]
            if json_out:
                return _emit(rows)
            for r in rows:
                typer.echo(f"{shown(r['name'])}\t{_size(r['size'])}\t{r['fstype'] or '-'}\t{shown(r['description'])}"
                           if long else shown(r["name"]))
            return
        s = g.stat(address.path, follow=True)
        if s.is_dir:
            entries = g.listdir(address.path)
            base = address.path
        else:
            entries = [(parts[-1], g.stat(address.path))]
            base = "/".join(parts[:-1])
        if json_out:
            return _emit([{"name": n, **e._asdict(), "type": _kind(e),
                           **({"target": g.readlink(f"{base}/{n}")} if e.is_symlink else {})}
                          for n, e in entries])
        out = sys.stdout
        for name, e in entries:
            if not long:
                out.write(shown(name) + "\n")
                continue
            link = f" -> {shown(g.readlink(f'{base}/{name}'))}" if e.is_symlink else ""
            out.write(f"{mode_string(e.mode)} {e.uid:>5} {e.gid:>5} {e.size:>12} {_time(e.mtime_ns)} {shown(name)}{link}\n")

    @app.command("cat")
    def cat(target: AddressArg, repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
        """Write a guest file's bytes to stdout."""
        address = parse_address(target)
        f = guest(address, repo, password_file).open(address.path)
        out = sys.stdout.buffer
        offset = 0
        while offset < f.stat.size:
            data = f.read(offset, min(1 << 20, f.stat.size - offset))
            if not data:
                break
            out.write(data)
            offset += len(data)
        out.flush()

    @app.command("stat")
    def stat_cmd(target: AddressArg, repo: RepoOpt = None, password_file: PasswordFileOpt = None,
                 json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
        """Show a guest file's type, size, mode, owner and times."""
        address = parse_address(target)
        g = guest(address, repo, password_file)
        s = g.stat(address.path)
        doc = {"path": address.path, "type": _kind(s), **s._asdict()}
        if s.is_symlink:
            doc["target"] = g.readlink(address.path)
        if json_out:
            return _emit(doc)
        typer.echo(f"  File: {shown(address.path)}{' -> ' + shown(doc['target']) if s.is_symlink else ''}")
        typer.echo(f"  Type: {doc['type']}  Size: {s.size}  Inode: {s.ino}  Links: {s.nlink}")
        typer.echo(f"  Mode: {oct(st.S_IMODE(s.mode))} ({mode_string(s.mode)})  Uid: {s.uid}  Gid: {s.gid}")
        for label, ns in (("Modify", s.mtime_ns), ("Access", s.atime_ns), ("Change", s.ctime_ns)):
            typer.echo(f"{label:>6}: {_time(ns)}.{ns % 10**9:09d} UTC")

    @app.command("get")
    def get(target: AddressArg,
            dest: Annotated[str, typer.Argument(help="Where to write (an existing directory: inside it).")] = ".",
            force: Annotated[bool, typer.Option("--force", help="Overwrite what exists.")] = False,
            keep_special_modes: Annotated[bool, typer.Option(
                "--keep-special-modes",
                help="Keep the guest's setuid/setgid/sticky bits and make its device nodes and FIFOs "
                     "(by default they are dropped and skipped: the guest is not trusted).")] = False,
            repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
        """Extract a file or a whole directory (names, modes, times, symlinks kept; setuid/setgid
        bits dropped and device nodes skipped unless --keep-special-modes)."""
        address = parse_address(target)
        if len(address.path.split("/")) < 2:
            raise typer.BadParameter("give at least DISK/VOLUME to extract (a volume extracts its whole tree)")
        g = guest(address, repo, password_file)
        progress = Progress("get")
        from repofs.guest.extract import extract  # noqa: PLC0415
        where, report = extract(g, address.path, dest, force=force, keep_special=keep_special_modes,
                                progress=progress if progress.enabled else None)
        progress.finish()
        skipped = f", skipped {len(report.skipped)} special files" if report.skipped else ""
        typer.echo(f"{shown(where)}: {report.files} files, {report.dirs} directories, {report.links} symlinks, "
                   f"{report.bytes} bytes{skipped}", err=True)

    @app.command("mount")
    def mount_cmd(target: Annotated[str, typer.Argument(metavar="vm:NAME[@GEN]")],
                  directory: Annotated[str, typer.Argument(metavar="DIR", help="Where DIR/<disk>/<volume> appear.")],
                  from_dir: Annotated[Optional[str], typer.Option(
                      "--from", help="A generation folder of an existing repofs mount (else one is started).")] = None,
                  repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
        """(root) Mount every volume under DIR/<disk>/<volume>: kernel loop mounts where possible.

        Read-only and without journal replay; volumes the kernel cannot mount are served by
        the rootless reader at the same place. Prints the path each volume took."""
        from repofs.mount import loopmount  # noqa: PLC0415 (root-only path)
        address = parse_address(target)
        if address.path:
            raise typer.BadParameter("files mount takes vm:NAME[@GENERATION], without a disk or path")

        def report(p) -> None:
            where = p.where or "-"
            typer.echo(shown(f"{p.disk}/{p.volume}") + f"\t{p.fstype or '-'}\t{p.how}\t{shown(where)}\t{shown(p.detail)}")

        open_repo = (lambda: open_repository(repo, password_file)) if repo else None
        loopmount.mount(directory, gen_dir=from_dir, open_repo=open_repo,
                        vm=address.vm, generation=address.generation, report=report)

    @app.command("umount")
    def umount_cmd(directory: Annotated[str, typer.Argument(metavar="DIR")]) -> None:
        """Undo 'repofs files mount DIR': unmount, detach loop devices, end the private mount."""
        from repofs.mount import loopmount  # noqa: PLC0415
        loopmount.umount(directory)

    return app


def _kind(s: "GuestStat") -> str:
    return "directory" if s.is_dir else "file" if s.is_file else "symlink" if s.is_symlink else "other"


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
