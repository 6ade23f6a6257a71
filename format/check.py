"""``check``: verify a repository's structure and, on request, every chunk's data.

Structure: every manifest opens (authenticated), every index it names opens and matches its
disk, every chunk an index names (slot bases and pieces) exists with a plausible size. ``read_data`` additionally
opens every referenced chunk (authenticate, decompress, re-hash against its id), each once
however many generations share it, in parallel.

Problems are reported with the generation, disk and disk offset they affect, so an
administrator knows exactly which restores would fail.
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .errors import CorruptObject, ObjectMissing, RepoError, UnsupportedFormat
from .repository import MIN_OBJECT_SIZE, Repository, chunk_name, manifest_name


@dataclass(frozen=True)
class Problem:
    object: str                 # the damaged or missing object
    reason: str
    vm: str | None = None
    generation: str | None = None
    disk: str | None = None
    offset: int | None = None   # disk offset of the affected chunk

    def describe(self) -> str:
        where = []
        if self.vm is not None:
            where.append(f"VM {self.vm}")
        if self.generation is not None:
            where.append(f"generation {self.generation}")
        if self.disk is not None:
            where.append(f"disk {self.disk}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        place = ", ".join(where) or "repository"
        return f"{place}: {self.object}: {self.reason}"


@dataclass
class CheckReport:
    generations: int = 0
    disks: int = 0
    chunks: int = 0
    chunks_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(repo: Repository, read_data: bool = False, workers: int = 2,
          progress: Callable[[int, int], None] | None = None) -> CheckReport:
    report = CheckReport()
    refs: dict[bytes, list[tuple[str, str, str, int]]] = defaultdict(list)
    for name in repo.manifest_names():
        try:
            manifest = repo.get_manifest(name)
        except (CorruptObject, ObjectMissing, UnsupportedFormat) as e:
            report.problems.append(Problem(manifest_name(name), _reason(e)))
            continue
        report.generations += 1
        for disk in manifest.disks:
            report.disks += 1
            where = dict(vm=manifest.vm, generation=manifest.generation, disk=disk.label)
            try:
                index = repo.get_index(disk.index)
            except (CorruptObject, ObjectMissing, UnsupportedFormat) as e:
                report.problems.append(Problem(f"indexes/{disk.index}", _reason(e), **where))
                continue
            if index.capacity != disk.capacity or index.chunk_size != disk.chunk_size:
                report.problems.append(Problem(f"indexes/{disk.index}",
                                               "index does not match the disk's capacity or chunk size", **where))
                continue
            for offset, cid in index.references():
                refs[cid].append((manifest.vm, manifest.generation, disk.label, offset))
    report.chunks = len(refs)

    def probe(cid: bytes) -> str | None:
        try:
            if read_data:
                repo.get_chunk(cid)
            elif repo.backend.size(chunk_name(cid)) < MIN_OBJECT_SIZE:
                return "too short to be a chunk"
        except (CorruptObject, ObjectMissing, UnsupportedFormat) as e:
            return _reason(e)
        return None

    with ThreadPoolExecutor(workers if read_data else 1) as pool:
        for done, (cid, reason) in enumerate(zip(refs, pool.map(probe, refs)), 1):
            if progress:
                progress(done, len(refs))
            if reason is None:
                continue
            for vm, gen, label, offset in refs[cid]:
                report.problems.append(Problem(chunk_name(cid), reason, vm, gen, label, offset))
    if read_data:
        report.chunks_read = len(refs)
    return report


def _reason(e: RepoError) -> str:
    if isinstance(e, CorruptObject):
        return e.reason
    if isinstance(e, ObjectMissing):
        return "missing"
    return str(e)
