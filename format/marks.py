"""Marks on generations: tombstones (``forgotten/<m>``) and protection (``protected/<m>``),
docs/format.md section 9.1.

``forget`` only writes tombstones; the generation disappears from every listing at once but
its manifest, indexes and chunks stay until a prune finds it unheld (format/prune.py).
Protection wins over a tombstone, so a ``protect`` that races a ``forget`` keeps the
generation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import records
from .errors import RepoError
from .leases import SKEW_NS

TOMBSTONES = "forgotten"
PROTECTIONS = "protected"


class GenerationProtected(RepoError):
    """A protected generation was to be forgotten."""


@dataclass(frozen=True)
class Tombstone:
    manifest: str
    forgotten_ns: int


def tombstones(repo: Any) -> dict[str, Tombstone]:
    out = {}
    for name, doc in records.read_all(repo, TOMBSTONES, records.MAGIC_TOMBSTONE):
        try:
            if doc["manifest"] == name:
                out[name] = Tombstone(name, int(doc["forgotten_ns"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def protected(repo: Any) -> set[str]:
    return {name for name, doc in records.read_all(repo, PROTECTIONS, records.MAGIC_PROTECTION)
            if doc.get("manifest") == name}


def _authentic(repo: Any, folder: str, magic: bytes) -> set[str]:
    """Names in ``folder`` whose record opens and names its manifest. Each name is read once
    per Repository object (a listing runs every second in a mount): records of a name never
    change in what matters here, and a name that goes away drops out of the listing."""
    cache: dict[tuple[str, str], bool] = repo.__dict__.setdefault("_marks_seen", {})
    out = set()
    for name in records.names(repo, folder):
        ok = cache.get((folder, name))
        if ok is None:
            try:
                ok = records.get(repo, folder, name, magic).get("manifest") == name
            except (records.ObjectMissing, records.CorruptObject):
                continue
            cache[(folder, name)] = ok
        if ok:
            out.add(name)
    return out


def forgotten(repo: Any) -> set[str]:
    """Manifest names of forgotten generations: a tombstone and no protection."""
    return _authentic(repo, TOMBSTONES, records.MAGIC_TOMBSTONE) - \
        _authentic(repo, PROTECTIONS, records.MAGIC_PROTECTION)


def forget(repo: Any, manifest: str, vm: str, generation: str) -> None:
    """Write the tombstone of ``manifest``; refuse a protected generation. The tombstone's
    time is re-taken if writing took longer than SKEW/2 (section 9.1)."""
    if manifest in protected(repo):
        raise GenerationProtected(f"{vm} generation {generation} is protected")
    while True:
        when = time.time_ns()
        records.put(repo, TOMBSTONES, manifest, records.MAGIC_TOMBSTONE,
                    {"manifest": manifest, "forgotten_ns": when, "vm": vm, "generation": generation})
        if time.time_ns() - when < SKEW_NS // 2:
            return


def protect(repo: Any, manifest: str) -> None:
    records.put(repo, PROTECTIONS, manifest, records.MAGIC_PROTECTION,
                {"manifest": manifest, "protected_ns": time.time_ns()})


def unprotect(repo: Any, manifest: str) -> bool:
    return records.delete(repo, PROTECTIONS, manifest)
