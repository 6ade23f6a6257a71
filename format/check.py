"""``check``: verify a repository's structure and, on request, every chunk's data.

Structure: every manifest opens (authenticated), every index it names opens and matches its
disk, every chunk an index names (slot bases, pieces, copy-stream chunks) exists whole (its
size is what its header declares), every manifest's parent exists, and nothing but manifests
lies in ``manifests/``. ``read_data`` additionally opens every referenced chunk (authenticate,
decompress, re-hash against its id), each once however many generations share it, in
parallel, and compares each index's copies with the bytes of the slots they repeat.

Problems are reported with the generation, disk and disk offset they affect, so an
administrator knows exactly which restores would fail.

Life cycle (docs/format.md section 9): objects a prune has moved aside (``trash/``) count
as present; ``subset`` reads only part of the chunks (the n-th of m groups by id, or a random
fraction); ``only_unverified``/``older_than_ns`` read the chunks the verification record
(format/verified.py) says are due, and the chunks read are added to it. Chunks no visible
generation references are counted (``unreferenced``) but are not damage: an interrupted
backup leaves them, and prune frees them.
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypedDict

from .errors import CorruptObject, ObjectMissing, RepoError, UnsupportedFormat
from .fixedindex import HOLE, FixedIndex
from .marks import tombstones
from .repository import MANIFEST_NAME, Repository, chunk_name, manifest_name


class _Where(TypedDict):
    """Where in the repository a problem was found (``Problem``'s fields of the same names)."""
    vm: str
    generation: str
    disk: str


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
    unreferenced_chunks: int = 0     # stored, referenced by no visible generation
    unreferenced_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _selector(subset: tuple[int, int] | float | None, only_unverified: bool,
              older_than_ns: int | None, repo: Repository) -> Callable[[bytes], bool]:
    """Which referenced chunks a ``read_data`` check reads."""
    import random
    import time

    from . import verified
    seen = verified.load(repo) if only_unverified or older_than_ns is not None else None
    now = time.time_ns()
    rng = random.Random()

    def wanted(cid: bytes) -> bool:
        if isinstance(subset, tuple) and int.from_bytes(cid[:4], "big") % subset[1] != subset[0] - 1:
            return False
        if isinstance(subset, float) and rng.random() >= subset:
            return False
        return seen is None or verified.due(cid, seen, older_than_ns, now)
    return wanted


def check(repo: Repository, read_data: bool = False, workers: int = 2,
          progress: Callable[[int, int], None] | None = None, *,
          subset: tuple[int, int] | float | None = None, only_unverified: bool = False,
          older_than_ns: int | None = None, record: bool = True) -> CheckReport:
    report = CheckReport()
    refs: dict[bytes, list[tuple[str, str, str, int]]] = defaultdict(list)
    copies_to_compare: list[tuple[FixedIndex, _Where]] = []
    names = repo.manifest_names()
    stones = tombstones(repo)  # forgotten on purpose: a parent that is gone by forget and prune
    for name in names:
        if not MANIFEST_NAME.fullmatch(name):
            report.problems.append(Problem(manifest_name(name), "not a manifest name (a stray file)"))
            continue
        try:
            manifest = repo.get_manifest(name)
        except (CorruptObject, ObjectMissing, UnsupportedFormat) as e:
            report.problems.append(Problem(manifest_name(name), _reason(e)))
            continue
        report.generations += 1
        if manifest.parent is not None and manifest.parent not in names and manifest.parent not in stones:
            report.problems.append(Problem(manifest_name(manifest.parent),
                                           "missing: the parent of this generation was removed",
                                           vm=manifest.vm, generation=manifest.generation))
        for disk in manifest.disks:
            report.disks += 1
            where = _Where(vm=manifest.vm, generation=manifest.generation, disk=disk.label)
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
            if read_data and index.copies is not None:
                copies_to_compare.append((index, where))
    report.chunks = len(refs)
    wanted = _selector(subset, only_unverified, older_than_ns, repo) if read_data else None
    read_ok: list[bytes] = []   # read and verified: recorded as such
    attempted: list[bytes] = []  # every chunk read, damaged ones included (chunks_read)

    def probe(cid: bytes) -> str | None:
        try:
            if wanted is not None and wanted(cid):
                attempted.append(cid)
                repo.get_chunk(cid)
                read_ok.append(cid)
            elif repo.stored_size(cid) is None:
                try:
                    repo.backend.size(chunk_name(cid))
                except ObjectMissing:
                    repo.get_object(chunk_name(cid))  # held by a prune's trash batch, or missing
                    return None
                # present but not whole: cut short by a power loss, padded, not a chunk
                return "not whole: its size does not match its header"
        except (CorruptObject, ObjectMissing, UnsupportedFormat) as e:
            return _reason(e)
        return None

    with ThreadPoolExecutor(workers if read_data else 1) as pool:
        for done, (cid, reason) in enumerate(zip(refs, pool.map(probe, refs), strict=True), 1):
            if progress:
                progress(done, len(refs))
            if reason is None:
                continue
            for vm, gen, label, offset in refs[cid]:
                report.problems.append(Problem(chunk_name(cid), reason, vm, gen, label, offset))
    for name in repo.backend.list("chunks"):
        try:
            cid = bytes.fromhex(name.rsplit("/", 1)[-1])
        except ValueError:
            continue
        if cid not in refs:
            report.unreferenced_chunks += 1
            try:
                report.unreferenced_bytes += repo.backend.size(name)
            except ObjectMissing:
                pass
    if read_data:
        report.chunks_read = len(attempted)
        if record and read_ok:
            from . import verified
            verified.record(repo, read_ok)
        for index, where in copies_to_compare:
            differ_at = _copies_differ(repo, index)
            if differ_at is not None:
                report.problems.append(Problem(
                    "copy table", "the copied bytes differ from the disk's at this offset", offset=differ_at, **where))
    return report


def _copies_differ(repo: Repository, index: FixedIndex) -> int | None:
    """The first disk offset where the index's copies differ from its slots (None: they
    agree, or a chunk involved is damaged, which the chunk probe reports)."""
    copies = index.copies
    assert copies is not None
    stream: dict[int, bytes] = {}
    slot: tuple[int, bytes] = (-1, b"")
    try:
        for off, length in copies.ranges:
            pos = copies.stream_pos(off, length)
            assert pos is not None
            at = off
            for k, inner, take in copies.stream_parts(pos, length):
                if k not in stream:
                    stream.clear()
                    cid = copies.ids[k]
                    stream[k] = repo.get_chunk(cid) if cid != HOLE else bytes(copies.chunk_length(k))
                    if len(stream[k]) != copies.chunk_length(k):
                        return copies.disk_offset(k * copies.chunk_size)
                mine = stream[k][inner:inner + take]
                for n in range(at // index.chunk_size, (at + take - 1) // index.chunk_size + 1):
                    if slot[0] != n:
                        slot = (n, index.assemble(n, repo.get_chunk))
                    start = n * index.chunk_size
                    lo, hi = max(at, start), min(at + take, start + index.chunk_size)
                    a, b = slot[1][lo - start:hi - start], mine[lo - at:hi - at]
                    if a != b:
                        first = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                        return lo + next(first, min(len(a), len(b)))
                at += take
    except (CorruptObject, ObjectMissing):
        pass                       # reported by the chunk probe, with its place
    return None


def _reason(e: RepoError) -> str:
    if isinstance(e, CorruptObject):
        return e.reason
    if isinstance(e, ObjectMissing):
        return "missing"
    return str(e)
