"""The figures of a report, gathered once from the repository: a plain JSON-able dict.

Sizes come from ``format.stats.collect`` over every visible generation (what ``repofs stats
--json`` prints, field for field, under ``stats``), plus per generation its time, kind,
protection, share of chunks verified by ``check``, its latest boot test (``repofs verify
--boot``, ``format.verification``) and its new bytes before and after
compression (``new_plain_bytes``, recorded by backups since it exists); and the last
operations and errors of this repository from the log of operations
(``repofs.cli.oplog``). Reading is bounded by the repository (indexes, no chunk).
"""
from __future__ import annotations

import os
import time
from typing import Any

from format import marks, verified
from format.stats import collect

from repofs.view.tree import RepositoryView

LAST_ERRORS = 20
LAST_OPERATIONS = 50


def stats_document(repository, view: RepositoryView) -> dict[str, Any]:
    """The document ``repofs stats --json`` prints for the whole repository."""
    everything = [(g.manifest_name, g.manifest) for vm in view.vms() for g in view.generations(vm)]
    times = {name: m.time_ns for name, m in everything}
    result = collect(repository, everything)
    vms = [{"vm": v.vm, "chunks": v.chunks, "stored_bytes": v.stored_bytes, "unique_bytes": v.unique_bytes,
            "generations": [vars(g) | {"time_ns": times[g.manifest]} for g in v.generations]} for v in result.vms]
    return {"vms": vms, "total": {"chunks": result.chunks, "stored_bytes": result.stored_bytes,
                                  "index_bytes": result.index_bytes, "logical_bytes": result.logical_bytes}}


def _boot_test(repository, manifest: str) -> dict | None:
    """The latest boot verification of a generation (``repofs verify --boot``), if any."""
    try:
        from format.verification import latest
        v = latest(repository, manifest)
    except Exception:  # noqa: BLE001 (a record that cannot be read is no result, not a failed report)
        return None
    if v is None:
        return None
    return {"result": "passed" if v.passed else "failed", "time_ns": v.time_ns, "check": v.check,
            "reason": v.reason, "seconds": v.seconds}


def gather(repository, operations: list[dict]) -> dict[str, Any]:
    view = RepositoryView(repository)
    stats = stats_document(repository, view)
    kept = marks.protected(repository)
    seen = verified.load(repository)
    gens: list[dict[str, Any]] = []
    for vm in view.vms():
        for _i, g in enumerate(view.generations(vm)):
            refs = {cid for d in g.disks for _o, cid in d.index.references()}
            checked = sum(1 for cid in refs if cid[:verified.PREFIX_HEX // 2] in seen)
            modes = [str((d.entry.source or {}).get("mode", "full")) for d in g.disks]
            plain = [(d.entry.source or {}).get("new_plain_bytes") for d in g.disks]
            gens.append({"vm": vm, "generation": g.name, "manifest": g.manifest_name, "time_ns": g.time_ns,
                         "kind": "incremental" if "changed" in modes else "full",
                         "logical_bytes": sum(d.entry.data_bytes for d in g.disks),
                         "capacity_bytes": sum(d.capacity for d in g.disks),
                         "new_bytes": sum(d.entry.new_bytes for d in g.disks),
                         "new_plain_bytes": sum(p for p in plain if isinstance(p, int))
                         if all(isinstance(p, int) for p in plain) else None,
                         "protected": g.manifest_name in kept,
                         "chunks": len(refs), "verified_chunks": checked,
                         "boot_test": _boot_test(repository, g.manifest_name),
                         "latest": False})
        if gens:
            gens[-1]["latest"] = True
    known = [g for g in gens if g["new_plain_bytes"] is not None]
    plain_bytes = sum(g["new_plain_bytes"] for g in known)
    sealed = sum(g["new_bytes"] for g in known)
    logical = stats["total"]["logical_bytes"]
    ratios = {"dedup": round(logical / plain_bytes, 3) if plain_bytes and len(known) == len(gens) else None,
              "compression": round(plain_bytes / sealed, 3) if sealed else None,
              "overall": round(logical / stats["total"]["stored_bytes"], 3) if stats["total"]["stored_bytes"] else None}
    errors = [op for op in operations if op.get("exit_code")][-LAST_ERRORS:]
    return {"repository": os.path.abspath(repository.location), "generated_ns": time.time_ns(), "stats": stats,
            "generations": gens, "ratios": ratios, "operations": operations[-LAST_OPERATIONS:],
            "errors": errors}
