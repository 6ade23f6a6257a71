"""``repofs forget``, ``protect``, ``unprotect``, ``prune``, ``stats``, ``diff``: the life
cycle of a repository (docs/format.md section 9; docs/cli.md)."""
from __future__ import annotations

import contextlib
import datetime as dt
import os
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from format import marks, retention
from format.prune import PruneReport, prune as prune_repository
from format.repository import Repository
from . import shapes
from .common import JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository
from .units import format_size
from repofs.view import targets
from repofs.view.tree import GenerationView, RepositoryView


# Prune is maintenance: it runs below backups and restores on the CPU. At normal priority a
# prune slowed a backup beside it by 1.28x (median; up to 2x), at nice 10 by 0.88x (max 1.20x)
# (docs/performance.md, "Backups beside a prune").
PRUNE_NICE = 10
NiceOpt = Annotated[int, typer.Option("--nice", help="CPU niceness while pruning, 0-19 (0: leave it as it is).")]


@contextlib.contextmanager
def _as_maintenance(nice: int) -> Iterator[None]:
    """Run the body at CPU niceness ``nice`` at least (never raised); the earlier priority is
    put back afterwards where allowed (root), for callers that run commands in-process."""
    if not 0 <= nice <= 19:
        raise UsageProblem("--nice must be between 0 and 19")
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        if nice and before < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        before = None               # a priority we cannot read or change: prune as we are
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, before)


def _gen_target(target: str) -> tuple[str, str | None]:
    """``vm:NAME[@GEN]`` -> (NAME, GEN or None) (repofs.view.targets)."""
    t = targets.parse(target)
    return t.vm, t.generation


def _time(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def forget(vm_targets: Annotated[Optional[list[str]], typer.Argument(metavar="[vm:NAME...]", help="The VMs (default: every VM).")] = None,
           keep_last: Annotated[int, typer.Option("--keep-last", help="Keep the N newest generations.")] = 0,
           keep_hourly: Annotated[int, typer.Option("--keep-hourly", help="Keep the newest of each of the last N hours.")] = 0,
           keep_daily: Annotated[int, typer.Option("--keep-daily", help="Keep the newest of each of the last N days.")] = 0,
           keep_weekly: Annotated[int, typer.Option("--keep-weekly", help="… ISO weeks.")] = 0,
           keep_monthly: Annotated[int, typer.Option("--keep-monthly", help="… months.")] = 0,
           keep_yearly: Annotated[int, typer.Option("--keep-yearly", help="… years.")] = 0,
           keep_within: Annotated[Optional[str], typer.Option("--keep-within", help="Keep generations younger than this (e.g. 30d, 1y6m) than the newest.")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be forgotten; change nothing.")] = False,
           then_prune: Annotated[bool, typer.Option("--prune", help="Prune afterwards.")] = False,
           allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Allow forgetting every generation of a VM.")] = False,
           repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Forget generations by a retention policy, per VM (protected ones are always kept)."""
    try:
        policy = retention.Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
                                  keep_yearly, retention.Duration.parse(keep_within) if keep_within else None)
        if policy.empty and not allow_empty:
            raise retention.PolicyError("no keep rule given: refusing to forget every generation "
                                        "(give --keep-last, --keep-daily, … or --keep-within)")
        if policy.empty and not vm_targets:
            raise retention.PolicyError("--allow-empty without keep rules forgets whole VMs: name them (vm:NAME)")
    except retention.PolicyError as e:
        raise UsageProblem(str(e)) from None
    repository = open_repository(repo, password_file)
    view = RepositoryView(repository)
    vms = [_gen_target(t)[0] for t in vm_targets] if vm_targets else view.vms()
    kept = marks.protected(repository)
    out: list[dict[str, Any]] = []
    for vm in vms:
        gens = targets.resolve_vm(view, vm)      # VMNotFound, with the closest names
        table = [retention.Generation(g.manifest_name, g.name, g.time_ns, g.manifest_name in kept) for g in gens]
        decisions = retention.apply(policy, table, allow_empty=allow_empty)
        row: dict[str, Any] = {"vm": vm, "keep": [], "remove": []}
        for d in decisions:
            item = {"vm": vm, "generation": d.generation.name, "manifest": d.generation.id,
                    **shapes.time_fields(d.generation.time_ns), "reasons": d.reasons}
            row["keep" if d.keep else "remove"].append(item)
            if not d.keep and not dry_run:
                marks.forget(repository, d.generation.id, vm, d.generation.name)
        if row["remove"] and not dry_run and repository.known is not None:
            # our own forget is not a rollback: the client's record follows it down
            left = [(g.time_ns, g.name) for g in gens if g.name not in {r["generation"] for r in row["remove"]}]
            repository.known.lower(vm, max(left) if left else None)
        out.append(row)
    report = None
    if then_prune and not dry_run:
        with _as_maintenance(PRUNE_NICE):
            report = prune_repository(repository)
    if json_out:
        emit({"dry_run": dry_run, "vms": out, "prune": vars(report) if report else None})
        return
    for row in out:
        typer.echo(f"{row['vm']}: keep {len(row['keep'])}, {'would remove' if dry_run else 'remove'} {len(row['remove'])}")
        for item in row["keep"]:
            typer.echo(f"  keep    {item['generation']:<24} {_time(item['time_ns'])}  {', '.join(item['reasons'])}")
        for item in row["remove"]:
            typer.echo(f"  remove  {item['generation']:<24} {_time(item['time_ns'])}")
    if report:
        _print_prune(report)


def _resolve(view: RepositoryView, target: str) -> GenerationView:
    vm, gen = _gen_target(target)
    if gen is None:
        raise UsageProblem(f"name the generation: {target}@GENERATION (or @latest)")
    return targets.resolve_generation(view, vm, gen)


def protect(targets: Annotated[list[str], typer.Argument(metavar="vm:NAME@GEN...", help="Generations to protect.")],
            repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Protect generations from every retention policy."""
    _mark(targets, repo, password_file, json_out, marks.protect, "protected")


def unprotect(targets: Annotated[list[str], typer.Argument(metavar="vm:NAME@GEN...", help="Generations to unprotect.")],
              repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Remove the protection of generations."""
    _mark(targets, repo, password_file, json_out, marks.unprotect, "unprotected")


def _mark(targets: list[str], repo: str | None, password_file: str | None, json_out: bool,
          mark: Callable[[Repository, str], object], done_word: str) -> None:
    repository = open_repository(repo, password_file)
    view = RepositoryView(repository)
    done = []
    for target in targets:
        g = _resolve(view, target)
        mark(repository, g.manifest_name)
        done.append(shapes.generation_ref(g))
    _print_marked(done, done_word, json_out)


def _print_marked(done: list[dict], what: str, json_out: bool) -> None:
    if json_out:
        emit(done)
    else:
        for d in done:
            typer.echo(f"{d['vm']} generation {d['generation']} {what}")


def prune(repo: RepoOpt = None, password_file: PasswordFileOpt = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be freed; change nothing.")] = False,
          wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for running backups so this run can free what it moved aside.")] = 0.0,
          nice: NiceOpt = PRUNE_NICE,
          json_out: JsonOpt = False) -> None:
    """Delete what no generation references; safe beside backups, mounts, restores and other prunes."""
    if wait < 0:
        raise UsageProblem("--wait must not be negative")
    from . import output

    def step(text: str) -> None:
        if not output.quiet():
            typer.echo(f"prune: {text}", err=True)
    with _as_maintenance(nice):
        repository = open_repository(repo, password_file)
        with output.interrupted("prune stopped between steps; nothing referenced was removed, "
                                "the next prune finishes the work"):
            report = prune_repository(repository, dry_run=dry_run, wait=wait, progress=step)
    if json_out:
        emit(vars(report))
    else:
        _print_prune(report)


def _print_prune(r: PruneReport) -> None:
    if r.dry_run:
        typer.echo(f"would remove {r.generations_removed} forgotten generations and free "
                   f"{r.freed_chunks} chunks, {r.freed_indexes} indexes, {format_size(r.freed_bytes)}")
        _print_locked(r)
        return
    typer.echo(f"removed {r.generations_removed} forgotten generations; freed {r.freed_chunks} chunks, "
               f"{r.freed_indexes} indexes, {format_size(r.freed_bytes)}; {r.referenced_chunks} chunks referenced")
    if r.restored:
        typer.echo(f"{r.restored} objects put back (generations written meanwhile need them)")
    _print_locked(r)
    if r.batches_waiting:
        typer.echo(f"{r.batches_waiting} batch(es) moved aside wait for {len(r.waiting_for)} running "
                   "backup(s); the next prune frees them")


def _print_locked(r: PruneReport) -> None:
    """What Object Lock retention kept (docs/s3.md): reported, not an error."""
    if r.locked_manifests or r.locked_objects:
        typer.echo(f"kept under Object Lock retention: {r.locked_manifests} forgotten generations, "
                   f"{r.locked_objects} objects ({format_size(r.locked_bytes)}), until "
                   f"{r.locked_until or 'an unknown date'} at least; a later prune removes them")


def stats(vm_targets: Annotated[Optional[list[str]], typer.Argument(metavar="[vm:NAME[@GEN]...]", help="What to show (default: everything).")] = None,
          repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Logical and stored sizes, and what forgetting each generation would free."""
    from format.stats import collect
    repository = open_repository(repo, password_file)
    with repository.lease("reader"):
        view = RepositoryView(repository)
        wanted: list[tuple[str, str | None]] = []
        for text in vm_targets or []:
            vm, gen = _gen_target(text)
            if gen is None:
                targets.resolve_vm(view, vm)                  # VMNotFound, with the closest names
                wanted.append((vm, None))
            else:                                             # a unique prefix names one generation
                wanted.append((vm, targets.resolve_generation(view, vm, gen).name))
        times = {g.manifest_name: g.time_ns for vm in view.vms() for g in view.generations(vm)}
        everything = [(g.manifest_name, g.manifest) for vm in view.vms() for g in view.generations(vm)]
        result = collect(repository, everything)

    def shown(vm: str, gen: str | None) -> bool:
        return not wanted or any(w == vm and (g is None or g == gen) for w, g in wanted)

    vms: list[dict[str, Any]] = []
    for v in result.vms:
        if not shown(v.vm, None) and not any(shown(v.vm, g.generation) for g in v.generations):
            continue
        gens = [vars(g) | {"time_ns": times[g.manifest]} for g in v.generations if shown(v.vm, g.generation)]
        vms.append({"vm": v.vm, "chunks": v.chunks, "stored_bytes": v.stored_bytes,
                    "unique_bytes": v.unique_bytes, "generations": gens})
    doc: dict[str, Any] = {"vms": vms, "total": {"chunks": result.chunks, "stored_bytes": result.stored_bytes,
                                 "index_bytes": result.index_bytes, "logical_bytes": result.logical_bytes}}
    if json_out:
        emit(doc)
        return
    for row in vms:
        typer.echo(f"{row['vm']}: {row['chunks']} chunks, {format_size(row['stored_bytes'])} stored, "
                   f"{format_size(row['unique_bytes'])} only this VM's")
        for g in row["generations"]:
            typer.echo(f"  {g['generation']:<24} logical {format_size(g['data_bytes'])} of {format_size(g['capacity'])}, "
                       f"references {format_size(g['stored_bytes'])} stored, unique {format_size(g['unique_bytes'])}")
    t = doc["total"]
    typer.echo(f"total: {format_size(t['logical_bytes'])} logical in generations, {format_size(t['stored_bytes'])} "
               f"stored in {t['chunks']} chunks (+{format_size(t['index_bytes'])} in indexes)")


def diff(target: Annotated[str, typer.Argument(metavar="vm:NAME@GEN1", help="The older generation.")],
         other: Annotated[str, typer.Argument(metavar="GEN2", help="The newer generation (or 'latest').")],
         files: Annotated[bool, typer.Option("--files/--no-files", help="Also compare guest ext2/3/4 files.")] = True,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Which disk ranges (and guest files) changed between two generations of a VM."""
    from format.diff import changed_ranges
    repository = open_repository(repo, password_file)
    with repository.lease("reader"):
        view = RepositoryView(repository)
        a = _resolve(view, target)
        b = view.generation(a.vm, other)
        disks: list[dict[str, Any]] = []
        for disk in b.disks:
            old = next((d for d in a.disks if d.label == disk.label), None)
            ranges = changed_ranges(old.index if old else None, disk.index)
            entry: dict[str, Any] = {"label": disk.label, "changed": [[o, n] for o, n in ranges],
                     "changed_bytes": sum(n for _o, n in ranges)}
            if files and old is not None:
                from repofs.guest.diff import diff_files
                entry["files"] = diff_files(a, b, disk.label)
            disks.append(entry)
        removed = [d.label for d in a.disks if d.label not in {x.label for x in b.disks}]
    doc = {"vm": a.vm, "from": a.name, "to": b.name, "disks": disks, "removed_disks": removed}
    if json_out:
        emit(doc)
        return
    for d in disks:
        typer.echo(f"{d['label']}: {format_size(d['changed_bytes'])} in {len(d['changed'])} changed ranges")
        for o, n in d["changed"]:
            typer.echo(f"  {o:#x}+{n:#x}")
        for f in d.get("files", []):
            typer.echo(f"  {f['change']:<8} {f['path']}")
    for label in removed:
        typer.echo(f"{label}: removed")
