"""``repofs find PATTERN [vm:NAME...]``: which generations hold a guest file matching a
pattern, with its size and time in each (as ``restic find`` does for snapshots).

PATTERN is a shell pattern (``fnmatch``: ``*``, ``?``, ``[...]``) matched against each
entry's name, or against its whole path below the volume when it contains ``/``
(``etc/*.conf``); ``--ignore-case`` folds case. Every browsable volume of every disk of
every generation of the VMs named (default: all) is walked with the rootless readers.
Guest bytes are untrusted: names are data, each walk visits a directory inode once (a
directory graph with loops ends) and stops after ``--max-entries`` entries of a volume, with
a note. A volume that cannot be read is skipped with a note (``--verbose``: the reason).
"""
from __future__ import annotations

import fnmatch
import io
import sys
from typing import Annotated, Optional

import typer

from . import output, shapes
from .common import JsonOpt, PasswordFileOpt, RepoOpt, emit, open_repository
from .units import format_size, format_time
from repofs.view import targets
from repofs.view.tree import RepositoryView

MAX_ENTRIES = 1_000_000


def _matcher(pattern: str, ignore_case: bool):
    pat = pattern.lower() if ignore_case else pattern
    whole = "/" in pat.strip("/")
    pat = pat.strip("/")

    def match(name: str, path: str) -> bool:
        subject = path if whole else name
        return fnmatch.fnmatchcase(subject.lower() if ignore_case else subject, pat)
    return match


def _walk(guest, root: str, limit: int):
    """(path below the volume, GuestStat) of every entry; (None, note) when stopped."""
    seen: set[int] = set()
    stack = [""]
    count = 0
    while stack:
        inner = stack.pop()
        for name, info in sorted(guest.listdir(f"{root}/{inner}" if inner else root)):
            if name in (".", "..") or "/" in name:
                continue
            path = f"{inner}/{name}" if inner else name
            count += 1
            if count > limit:
                yield None, f"{root}: more than {limit} entries, walk stopped"
                return
            yield path, info
            if info.is_dir and info.ino not in seen:
                seen.add(info.ino)
                stack.append(path)


def find(pattern: Annotated[str, typer.Argument(help="Shell pattern for the name (or, with a /, the path below the volume).")],
         vm_targets: Annotated[Optional[list[str]], typer.Argument(metavar="[vm:NAME[@GEN]...]", help="Where to look (default: every VM, every generation).")] = None,
         ignore_case: Annotated[bool, typer.Option("--ignore-case", "-i", help="Match without regard to case.")] = False,
         max_entries: Annotated[int, typer.Option("--max-entries", help="Stop walking a volume after this many entries.")] = MAX_ENTRIES,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Which generations hold a guest file matching PATTERN, with its size and time in each."""
    from repofs.guest.guestfs import GuestError, GuestGeneration
    if max_entries < 1:
        from .common import UsageProblem
        raise UsageProblem("--max-entries must be at least 1")
    match = _matcher(pattern, ignore_case)
    repository = open_repository(repo, password_file)
    with repository.lease("reader"):
        view = RepositoryView(repository)
        chosen = []
        for text in vm_targets or []:
            t = targets.parse(text)
            chosen += [targets.resolve_generation(view, t.vm, t.generation)] if t.generation \
                else targets.resolve_vm(view, t.vm)
        if not vm_targets:
            chosen = [g for vm in view.vms() for g in view.generations(vm)]
        results, notes = [], []
        for gen in chosen:
            guest = GuestGeneration(gen)
            matches = []
            for disk in gen.disks:
                try:
                    volumes = [v for v in guest.volumes(disk.label) if v.browsable]
                except GuestError as e:
                    notes.append(f"{gen.vm}@{gen.name} {disk.label}: skipped ({e})")
                    continue
                for volume in volumes:
                    root = f"{disk.label}/{volume.name}"
                    try:
                        for path, info in _walk(guest, root, max_entries):
                            if path is None:
                                notes.append(f"{gen.vm}@{gen.name} {info}")
                                break
                            if match(path.rpartition("/")[2], path):
                                matches.append({"path": f"{root}/{path}", "type": _kind(info),
                                                "size_bytes": info.size,
                                                **shapes.time_fields(info.mtime_ns, "mtime_")})
                    except GuestError as e:
                        notes.append(f"{gen.vm}@{gen.name} {root}: skipped ({e})")
            if matches:
                results.append({**shapes.generation_ref(gen), "matches": matches})
    if json_out:
        emit({"pattern": pattern, "generations": results, "notes": notes})
        return
    if isinstance(sys.stdout, io.TextIOWrapper):     # guest names need not be UTF-8
        sys.stdout.reconfigure(errors="surrogateescape")
    for r in results:
        typer.echo(f"vm:{r['vm']}@{r['generation']} ({r['time'].replace('T', ' ').rstrip('Z')} UTC)")
        for m in r["matches"]:
            typer.echo(f"  {format_size(m['size_bytes']):>10}  {format_time(m['mtime_ns'])}  {m['path']}")
    if not results:
        typer.echo(f"no generation holds a file matching {pattern!r}", err=True)
    for note in notes if output.verbose() else notes[:1]:
        typer.echo(f"note: {note}", err=True)
    if len(notes) > 1 and not output.verbose():
        typer.echo(f"note: {len(notes) - 1} more volume(s) skipped (--verbose lists them)", err=True)


def _kind(s) -> str:
    return "directory" if s.is_dir else "file" if s.is_file else "symlink" if s.is_symlink else "other"
