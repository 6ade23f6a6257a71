"""What ``backup vm:`` and ``restore vm:`` print for each VM: lines for people, a JSON object
for ``--json``. The runners in restore/ return ``restore.vsphere.outcome.Outcome`` objects and
print nothing; this module turns them into text, so printing stays in the CLI.
"""
from __future__ import annotations

from typing import Any

from restore.vsphere.outcome import Outcome

from .units import format_rate, format_size as size_text

from repofs.errors import first_line


def backup_lines(outcome: Outcome) -> list[str]:
    """What the CLI prints for one VM a backup read (or planned to read)."""
    if not outcome.ok:
        name = outcome.vm or outcome.target
        return [f"{name}: FAILED: {first_line(outcome.error)}"]
    r = outcome.result
    assert r is not None
    lines = []
    if r.dry_run:
        lines.append(f"{r.vm} ({r.moref}): dry run, nothing written")
        for d in r.disks:
            lines.append(f"  would read {d.label} {d.file}: {size_text(d.planned_bytes)} of "
                         f"{size_text(d.capacity)}, {d.mode} ({d.reason})")
    else:
        rep = r.report
        if rep is not None:
            lines.append(f"{r.vm}: generation {rep.generation} written in {rep.seconds:.1f}s; "
                         + (f"snapshot {r.snapshot} removed" if r.snapshot else "read without a snapshot"))
            read = sum(d.read_bytes for d in rep.disks)
            new = sum(d.new_bytes for d in rep.disks)
            plain = sum(getattr(d, "new_plain_bytes", 0) for d in rep.disks)
            kind = "incremental" if any(d.mode == "changed" for d in rep.disks) else "full"
            lines.append(f"  {kind}: read {size_text(read)}, stored {size_text(new)} new after dedup and "
                         f"compression (dedup {read / plain:.2f}x, compression "
                         f"{(plain / new if new else 0):.2f}x), {format_rate(read, rep.seconds)}"
                         if plain else f"  {kind}: read {size_text(read)}, nothing new to store, "
                                       f"{format_rate(read, rep.seconds)}")
            reasons = {d.label: d.reason for d in r.disks}
            for d in rep.disks:
                lines.append(f"  {disk_summary(d)} ({reasons.get(d.label, '')})")
    for text in r.skipped:
        lines.append(f"  skipped {text}")
    for note in r.notes:
        lines.append(f"  note: {note}")
    return lines


def disk_summary(d) -> str:
    """One line for people about one disk of a backup (an ingest ``DiskReport``)."""
    patched = f", {d.patched_slots} chunks updated by their changed pieces" if d.patched_slots else ""
    copied = f", {size_text(d.copied_bytes)} of guest metadata copied" if d.copied_bytes else ""
    return (f"{d.label}: {size_text(d.capacity)}, {d.mode}, read {size_text(d.read_bytes)}, "
            f"stored {size_text(d.new_bytes)} new in {d.new_chunks} chunks{patched}{copied}")


def backup_json(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {"target": outcome.target, "vm": outcome.vm, "ok": outcome.ok}
    if outcome.error is not None:
        out["error"] = {"type": type(outcome.error).__name__, "message": first_line(outcome.error)}
    r = outcome.result
    if r is not None:
        out.update(moref=r.moref, snapshot=r.snapshot, dry_run=r.dry_run, notes=r.notes,
                   skipped=r.skipped, change_tracking_enabled_now=r.change_tracking_enabled_now,
                   plan=[vars(d) for d in r.disks])
        rep = r.report
        if rep is not None:
            out.update(generation=rep.generation, manifest=rep.manifest, seconds=round(rep.seconds, 3),
                       disks=[vars(d) for d in rep.disks])
    return out


def restore_lines(outcome: Outcome) -> list[str]:
    """What the CLI prints for one VM a restore wrote (or planned)."""
    if not outcome.ok:
        return [f"{outcome.target}: FAILED: {first_line(outcome.error)}"]
    r = outcome.result
    assert r is not None
    if hasattr(r, "lines") and not hasattr(r, "plan"):  # a first-class disk (firstclass.FcdResult)
        return r.lines()
    if not hasattr(r, "dry_run"):  # an in-place restore (rollback.RollbackResult)
        return _rollback_lines(r)
    if r.dry_run:
        return ["dry run, nothing changed:", *r.plan.lines()]
    lines = [f"{r.source_vm} generation {r.generation}: restored as {r.vm} ({r.moref}) in {r.seconds:.1f}s"
             + (", powered on" if r.powered_on else "")]
    for d in r.disks:
        lines.append(f"  {d.label} -> {d.path}: {size_text(d.written_bytes)} written of {size_text(d.capacity)} "
                     f"({size_text(d.skipped_zero_bytes)} of zeros skipped; transport {d.transport}; "
                     f"{format_rate(d.written_bytes, d.seconds)})")
    if r.replaced:
        lines.append(f"  replaced VM {r.replaced} destroyed")
    for w in r.warnings:
        lines.append(f"  warning: {w}")
    return lines


def restore_json(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {"target": outcome.target, "ok": outcome.ok}
    if outcome.error is not None:
        out["error"] = {"type": type(outcome.error).__name__, "message": first_line(outcome.error),
                        "step": getattr(outcome.error, "step", None)}
    r = outcome.result
    if r is not None and hasattr(r, "lines") and not hasattr(r, "plan"):  # a first-class disk
        out.update(first_class_disk=r.name, id=r.id, datastore=r.datastore, path=r.path,
                   generation=r.generation, source=r.source, seconds=round(r.seconds, 3),
                   steps=r.steps, disks=[vars(d) for d in r.disks],
                   storage_profile=r.storage_profile, warnings=r.warnings)
    elif r is not None and not hasattr(r, "dry_run"):  # an in-place restore
        out.update(vm=r.vm, moref=r.moref, generation=r.generation, source_vm=r.source_vm,
                   in_place=True, powered_on=r.powered_on, seconds=round(r.seconds, 3),
                   steps=r.steps, notes=r.notes, written_bytes=r.written_bytes,
                   disks=[vars(d) for d in r.disks])
    elif r is not None:
        out.update(vm=r.vm, moref=r.moref, generation=r.generation, source_vm=r.source_vm,
                   dry_run=r.dry_run, powered_on=r.powered_on, replaced=r.replaced,
                   seconds=round(r.seconds, 3), steps=r.steps, warnings=r.warnings,
                   plan=r.plan.lines(), disks=[vars(d) for d in r.disks])
    return out

def _rollback_lines(r: Any) -> list[str]:
    """What the CLI prints for an in-place restore."""
    lines = [f"{r.source_vm} generation {r.generation}: {r.vm} ({r.moref}) rolled back in place "
             f"in {r.seconds:.1f}s, {r.written_bytes} bytes written"
             + (", powered on" if r.powered_on else "")]
    for d in r.disks:
        lines.append(f"  {d.label}: {d.mode}, {d.written_bytes} bytes written of "
                     f"{d.changed_bytes} {'changed' if d.mode == 'changed' else 'compared'} "
                     f"({d.reason})")
    lines += [f"  note: {n}" for n in r.notes]
    return lines
