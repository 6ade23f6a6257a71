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


def forgotten(repo: Any) -> set[str]:
    """Manifest names of forgotten generations: a tombstone and no protection."""
    return set(tombstones(repo)) - protected(repo)


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
