"""``stats``: what a repository holds and what forgetting a generation would free.

For every generation: its logical size (disk capacities, and bytes in stored slots), the
stored size of the chunks it references (after deduplication and compression, sealed sizes),
and its *unique* bytes: the stored size of the chunks no other generation references — what
forgetting it and pruning would free. Per VM: the same over its generations, chunks shared
between them counted once. Total: every referenced chunk once.

Memory: one entry per referenced chunk (id -> [size, referencing generations or a count]);
for very large repositories this is the command to run on a host with memory to spare,
unlike prune (format/idset.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ObjectMissing
from .repository import chunk_name, index_name


@dataclass
class GenerationStats:
    vm: str
    generation: str
    manifest: str
    time: str
    capacity: int = 0
    data_bytes: int = 0
    chunks: int = 0
    stored_bytes: int = 0       # sealed bytes of the chunks it references
    unique_chunks: int = 0
    unique_bytes: int = 0       # freed by forgetting it (and pruning)


@dataclass
class VMStats:
    vm: str
    generations: list[GenerationStats] = field(default_factory=list)
    chunks: int = 0
    stored_bytes: int = 0
    unique_bytes: int = 0       # freed by forgetting the whole VM


@dataclass
class Stats:
    vms: list[VMStats] = field(default_factory=list)
    chunks: int = 0
    stored_bytes: int = 0       # every referenced chunk once
    index_bytes: int = 0
    logical_bytes: int = 0      # sum of generations' data bytes


def collect(repo: Any, generations: list[tuple[str, Any]]) -> Stats:
    """Stats of the generations ``[(manifest name, manifest)]`` given, chunks shared with
    generations outside the list counted as shared (pass every visible generation for
    true unique sizes, then filter what to show)."""
    owners: dict[bytes, int] = {}       # chunk -> generation number, or -1 when shared
    vm_owner: dict[bytes, str | None] = {}
    sizes: dict[bytes, int] = {}
    per_gen: list[GenerationStats] = []
    stats = Stats()
    seen_indexes: set[str] = set()
    vm_chunks: dict[str, set[bytes]] = {}
    for number, (name, m) in enumerate(generations):
        g = GenerationStats(m.vm, m.generation, name, m.time)
        mine: set[bytes] = set()
        for disk in m.disks:
            g.capacity += disk.capacity
            g.data_bytes += disk.data_bytes
            index = repo.get_index(disk.index)
            if disk.index not in seen_indexes:
                seen_indexes.add(disk.index)
                try:
                    stats.index_bytes += repo.backend.size(index_name(disk.index))
                except ObjectMissing:
                    pass
            mine.update(cid for _off, cid in index.references())
        for cid in mine:
            if cid not in sizes:
                try:
                    sizes[cid] = repo.backend.size(chunk_name(cid))
                except ObjectMissing:
                    sizes[cid] = 0
                owners[cid] = number
                vm_owner[cid] = m.vm
            else:
                owners[cid] = -1
                if vm_owner[cid] != m.vm:
                    vm_owner[cid] = None
            g.stored_bytes += sizes[cid]
        g.chunks = len(mine)
        vm_chunks.setdefault(m.vm, set()).update(mine)
        per_gen.append(g)
        stats.logical_bytes += g.data_bytes
    vms: dict[str, VMStats] = {}
    for g in per_gen:
        vms.setdefault(g.vm, VMStats(g.vm)).generations.append(g)
    for cid, owner in owners.items():
        size = sizes[cid]
        stats.chunks += 1
        stats.stored_bytes += size
        if owner >= 0:
            per_gen[owner].unique_chunks += 1
            per_gen[owner].unique_bytes += size
        vm = vm_owner[cid]
        if vm is not None:
            vms[vm].unique_bytes += size
    for vm, ids in vm_chunks.items():
        vms[vm].chunks = len(ids)
        vms[vm].stored_bytes = sum(sizes[cid] for cid in ids)
    stats.vms = sorted(vms.values(), key=lambda v: v.vm)
    return stats
