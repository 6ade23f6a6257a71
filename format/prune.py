"""Prune: delete what no generation references, safely beside backups, readers and other
prunes on any host (the protocol, and why it is safe: docs/format.md section 9.3).

One run: write a ``prune`` lease; read manifests, tombstones and protections, *then* leases;
delete the manifests of forgotten generations no live lease holds; mark every object the
remaining manifests reference (``IdSet``: bounded memory); move unreferenced chunks and
indexes into a trash batch ``trash/<b>/`` recorded in ``pending/<b>``; seal the batch with
the backups running then; sweep every sealed batch whose backups have all ended — objects a
manifest written meanwhile references go back, the rest are deleted.

Every step can be interrupted (kill -9): the batch record is written before the first move,
every move and delete is idempotent, and the next run seals and sweeps what is left.
``REPOFS_PRUNE_KILL_AFTER=K`` (tests only) makes this process SIGKILL itself after K moves or
deletions, a real kill at a chosen point. ``REPOFS_PRUNE_FRESH_SECONDS`` (tests) changes how
long before the oldest running backup's start objects count as fresh (default ``SKEW``);
``-1`` condemns fresh objects too, which safety does not need: the sweep puts back whatever
a generation written meanwhile references — the tests use it to exercise exactly that.

On an S3 repository with Object Lock (docs/s3.md) the storage refuses to delete what is
under retention, even to us. Such objects are skipped and reported (``locked_*`` in the
report, with the latest date their retention is known to end), never an error: a forgotten
generation whose manifest is locked stays marked — its chunks are locked as long as it is —
and an unreferenced chunk written less than the retention ago is skipped from the listing's
time alone, without a request. A later prune removes them once the retention ended.

Listings: a backend with ``list_stat`` (S3) gives each object's size and time with the
listing, so neither the condemning walk nor the sweep sends a request per object.

Memory: the marks take about 7 bytes per referenced chunk (format/idset.py); indexes are read
page by page and listings folder by folder, so neither grows with a disk or the repository.
On a local repository the shards are walked in forked worker processes (``WORKERS``: at most 4,
one per core; format/forkpool.py), which share the marks with the prune copy-on-write; each
holds one shard's part of the marks as a set of hex prefixes and that shard's listing: 1/256
of each, about 9 MiB a worker at 10 M chunks; and the run keeps 4 bytes per object it moves
(the sizes its own sweep reports without a second ``stat``): 40 MB if 10 M objects go.
"""
from __future__ import annotations

import datetime as dt
import mmap
import os
from array import array
import re
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import forkpool, records
from .errors import ObjectLocked, ObjectMissing, RepoError
from .fixedindex import HOLE
from .indexobject import index_id, read_index
from .idset import IdSet
from .immutability import locked_at_least_until, locked_until
from .leases import SKEW_NS, leases, live_leases
from .marks import PROTECTIONS, protected, tombstones
from .processes import running

PENDING = "pending"
TRASH = "trash"
TMP_AGE_NS = 86400 * 1_000_000_000
EXPIRED_LEASE_AGE_NS = 86400 * 1_000_000_000
_OBJECT = re.compile(r"^(chunks|indexes)/([0-9a-f]{2})/([0-9a-f]{64})$")


class PruneAborted(RepoError):
    """Raised by the progress callback to stop a prune between steps (never half a step)."""


@dataclass
class PruneReport:
    generations_removed: int = 0     # forgotten generations whose manifests were deleted
    referenced_chunks: int = 0
    moved_chunks: int = 0            # moved to the trash by this run
    moved_indexes: int = 0
    moved_bytes: int = 0
    freed_chunks: int = 0            # deleted for good by this run's sweeps
    freed_indexes: int = 0
    freed_bytes: int = 0
    restored: int = 0                # put back: a generation written meanwhile needs them
    batches_swept: int = 0
    batches_waiting: int = 0         # sealed batches whose backups still run
    waiting_for: list[str] = field(default_factory=list)
    temporaries_removed: int = 0
    locked_manifests: int = 0        # forgotten generations whose manifest retention keeps
    locked_objects: int = 0          # unreferenced chunks and indexes retention keeps
    locked_bytes: int = 0
    locked_until: str | None = None  # ISO 8601: the latest date their retention is known to end
    dry_run: bool = False

    def note_locked(self, until: dt.datetime | None, size: int = 0, manifest: bool = False) -> None:
        if manifest:
            self.locked_manifests += 1
        else:
            self.locked_objects += 1
            self.locked_bytes += size
        if until is not None:
            text = until.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.locked_until = max(self.locked_until or text, text)


class _Killer:
    """Counts destructive steps; SIGKILLs the prune after REPOFS_PRUNE_KILL_AFTER of them.
    Steps made in worker processes (``share`` before they fork) count in memory shared with
    them; the worker that makes the last one kills the prune's process, then itself (the
    kernel kills the other workers with their parent)."""

    def __init__(self) -> None:
        value = os.environ.get("REPOFS_PRUNE_KILL_AFTER", "")
        self.left = int(value) if value.isdigit() else -1
        self._lock: Any = threading.Lock()
        self._owner = os.getpid()
        self._shared: mmap.mmap | None = None   # the count, once workers share it

    def armed(self) -> bool:
        return self.left >= 0

    def share(self) -> None:
        if self.left < 0 or self._shared is not None:
            return
        import multiprocessing      # tests only: a lock that forked workers share
        self._lock = multiprocessing.get_context("fork").Lock()
        self._shared = mmap.mmap(-1, 8)
        self._shared[:] = self.left.to_bytes(8, "little")

    def step(self) -> None:
        if self.left < 0:
            return
        with self._lock:
            left = self.left if self._shared is None else int.from_bytes(self._shared[:], "little")
            if left == 0:
                if os.getpid() != self._owner:
                    os.kill(self._owner, signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            if self._shared is None:
                self.left = left - 1
            else:
                self._shared[:] = (left - 1).to_bytes(8, "little")


def _listing(backend: Any, folder: str) -> Iterator[tuple[str, int | None, int | None]]:
    """(name, size, mtime_ns) below ``folder``; size and time None when the backend's listing
    does not carry them (then they are asked for per object, where needed)."""
    list_stat = getattr(backend, "list_stat", None)
    if list_stat is not None:
        yield from list_stat(folder)
    else:
        for name in backend.list(folder):
            yield name, None, None


def _walk_objects(repo: Any, folder: str) -> Iterator[tuple[str, bytes, int | None, int | None]]:
    for name, size, mtime in _listing(repo.backend, folder):
        m = _OBJECT.match(name)
        if m:
            yield name, bytes.fromhex(m.group(3)), size, mtime


def _mark(repo: Any, manifest_names: list[str], marks: IdSet, indexes: set[str]) -> None:
    """Add what ``manifest_names`` reference to ``marks`` (chunks) and ``indexes`` (hex ids).
    A manifest or index that cannot be read marks nothing more — and stops the prune: what
    it references is unknown, so nothing may be deleted."""
    for name in manifest_names:
        try:
            manifest = repo.get_manifest(name)
        except ObjectMissing:
            continue                    # deleted meanwhile by another prune
        for disk in manifest.disks:
            if disk.index in indexes:
                continue
            _mark_index(repo, disk.index, marks)   # CorruptObject/ObjectMissing stop the prune
            indexes.add(disk.index)


def _mark_index(repo: Any, hex_id: str, marks: IdSet) -> None:
    """Mark what one index references. The object is read, decrypted, hashed and decoded page
    by page (``format/indexobject.py``), the id table marked as it streams and not kept:
    memory is a few pages whatever the disk's size (an index of a 10 TiB disk at 1 MiB chunks
    holds 320 MB of ids), and the patch and copy tables. The pages are authenticated only at
    the end; marking them first is safe, because extra marks only keep objects and a corrupt
    index stops the prune before anything is condemned."""
    name = f"indexes/{hex_id[:2]}/{hex_id}"
    iid = index_id(hex_id, name)
    stream, size = repo.open_object(name)
    with stream:
        index = read_index(repo.sealer, iid, stream, size, name, keep_ids=False,
                           on_ids=lambda ids: marks.add_ids(ids, skip=HOLE))
    for _off, cid in index.table_references():
        marks.add(cid)


def prune(repo: Any, *, dry_run: bool = False, wait: float = 0.0,
          progress: Callable[[str], None] | None = None) -> PruneReport:
    """One prune run (docs/format.md 9.3). ``wait``: seconds to wait for running backups
    before giving up on sweeping this run's batch (it is then swept by a later run)."""
    report = PruneReport(dry_run=dry_run)
    killer = _Killer()
    say = progress or (lambda _text: None)
    lease = repo.lease("prune")
    if not dry_run:
        lease.begin()
    try:
        # 2. state, in this order: manifests and marks, then leases
        stored = repo.stored_manifest_names()
        stones = tombstones(repo)
        kept = protected(repo)
        now = time.time_ns()
        all_leases = live_leases(repo, now)
        others = [lease_ for lease_ in all_leases if lease_.name != lease.name]
        holders = [lease_.since_ns for lease_ in others if lease_.kind != "prune"]

        def held(forgotten_ns: int) -> bool:
            return any(since <= forgotten_ns + SKEW_NS for since in holders)

        # 3. drop forgotten generations nobody holds
        live_manifests = []
        stored_set = set(stored)
        for name in stored:
            stone = stones.get(name)
            if stone is not None and name not in kept and not held(stone.forgotten_ns):
                report.generations_removed += 1
                if not dry_run:
                    # the tombstone stays: the authenticated record that this generation was
                    # forgotten on purpose, so that check tells a pruned parent from a deleted one
                    try:
                        records.delete(repo, "manifests", name)
                    except ObjectLocked:
                        # retention keeps it, and so every chunk it needs (they were locked at
                        # least as long): it stays marked, and a later prune removes it
                        report.generations_removed -= 1
                        report.note_locked(locked_until(repo.backend, f"manifests/{name}"), manifest=True)
                        live_manifests.append(name)
                        continue
                    killer.step()
                continue
            live_manifests.append(name)
        if not dry_run:
            for name in records.names(repo, PROTECTIONS):
                if name not in stored_set and not repo.backend.exists(f"manifests/{name}"):
                    records.delete(repo, PROTECTIONS, name)
            for info in leases(repo):
                if now > info.expires_ns + EXPIRED_LEASE_AGE_NS:
                    records.delete(repo, "leases", info.name)
        say(f"marking what {len(live_manifests)} generations reference")

        # 4. mark
        marks, indexes = IdSet(), set[str]()
        _mark(repo, live_manifests, marks, indexes)
        marks.freeze()
        report.referenced_chunks = len(marks)
        read_manifests = set(live_manifests)

        # 5. condemn
        backups = [lease_ for lease_ in others if lease_.kind == "backup"]
        fresh = _fresh_margin_ns()
        cutoff = now if fresh < 0 else min([now] + [lease_.since_ns - fresh for lease_ in backups])
        batch = secrets.token_hex(16)
        record = {"state": "moving", "started_ns": now, "owner": lease.name}
        if not dry_run:
            records.put(repo, PENDING, batch, records.MAGIC_BATCH, record)
        say("moving unreferenced objects aside")
        moved_sizes: dict[tuple[str, str], array | None] = {}
        workers = 1
        if getattr(repo.backend, "open_folder", None) is not None:
            workers = _workers(repo.backend)
            if workers > 1:
                killer.share()

            def started(pids: list[int]) -> None:
                # who moves objects into the batch besides this process: another prune seals
                # it only once none of them runs (_seal_all)
                if not dry_run:
                    records.put(repo, PENDING, batch, records.MAGIC_BATCH,
                                {**record, "host": socket.gethostname(), "workers": pids})
            moved_sizes = _condemn_folders(repo, batch, marks, indexes, cutoff, now, report, killer,
                                           dry_run, workers, started)
            walked: tuple[str, ...] = OBJECT_FOLDERS      # their temporaries went on the way
        else:
            _condemn_listed(repo, batch, marks, indexes, cutoff, report, killer, dry_run)
            walked = ()
        if not dry_run:
            report.temporaries_removed += _remove_old_temporaries(repo, now, killer, walked)

        # 6. seal (this batch and any a killed run left in state "moving")
        if dry_run:
            report.freed_chunks, report.freed_indexes = report.moved_chunks, report.moved_indexes
            report.freed_bytes = report.moved_bytes
            return report
        deadline = time.monotonic() + wait
        pending = _seal_all(repo, lease.name)
        # 7. sweep
        while True:
            writers_live = {lease_.name for lease_ in live_leases(repo) if lease_.kind == "backup"}
            ready = [(b, doc) for b, doc in pending if not set(doc.get("writers", ())) & writers_live]
            waiting = [(b, doc) for b, doc in pending if set(doc.get("writers", ())) & writers_live]
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        new = []
        if ready:
            new = [n for n in repo.stored_manifest_names() if n not in read_manifests]
            _mark(repo, new, marks, indexes)
            marks.freeze()
        for b, _doc in ready:
            say(f"sweeping batch {b}")
            _sweep(repo, b, marks, indexes, report, killer, unreferenced=b == batch and not new,
                   sizes=moved_sizes if b == batch else {}, workers=workers)
            report.batches_swept += 1
        report.batches_waiting = len(waiting)
        report.waiting_for = sorted({w for _b, doc in waiting for w in doc.get("writers", ())
                                     if w in writers_live})
        return report
    finally:
        if not dry_run:
            lease.end()


def _fresh_margin_ns() -> int:
    value = os.environ.get("REPOFS_PRUNE_FRESH_SECONDS", "")
    try:
        return int(float(value) * 1e9) if value else SKEW_NS
    except ValueError:
        return SKEW_NS


OBJECT_FOLDERS = ("indexes", "chunks")
_SHARDS = [f"{k:02x}" for k in range(256)]       # objects live in <folder>/<2 hex digits>/
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Worker processes that walk shards side by side (format/forkpool.py: processes, because the
# work is short system calls, and two threads making them hand the GIL to each other at every
# call). More than a few gain nothing: a rename between folders takes the file system's rename
# lock, one at a time. A repository estimated below ``FORK_FROM`` objects is walked in this
# process, one shard after the other (forking costs more than such a walk).
WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))     # the cores this process may use
FORK_FROM = 20_000


def _unreferenced(folder: str, shard: str, names: list[str], marks: IdSet, indexes: set[str]) -> list[str]:
    """The names of ``folder/shard`` that the marks do not name (not yet checked to be ids).
    Chunks are compared by their first 8 bytes in hex against the shard's part of the marks
    as a set: one set lookup a name, no object made per name."""
    if folder == "indexes":
        return [n for n in names if n not in indexes]
    marked = marks.hex_prefixes(int(shard, 16))
    return [n for n in names if n[:16] not in marked]


def _workers(backend: Any) -> int:
    """How many processes walk the shards: ``WORKERS``, or 1 (this process) when one shard's
    listing says the repository holds fewer than ``FORK_FROM`` objects
    (``REPOFS_PRUNE_FORK_FROM``, tests: another threshold)."""
    if WORKERS == 1:
        return 1
    value = os.environ.get("REPOFS_PRUNE_FORK_FROM", "")
    threshold = int(value) if value.isdigit() else FORK_FROM
    folder = backend.open_folder("chunks/00")
    if folder is None:
        return WORKERS if threshold == 0 else 1
    with folder:
        estimate = len(folder.names()[0]) * len(_SHARDS)
    return WORKERS if estimate >= threshold else 1


def _each_shard(work: Callable[[str, str], Any], workers: int,
                started: Callable[[list[int]], None] | None = None) -> list[tuple[str, str, Any]]:
    """``work(folder, shard)`` for every shard of both object folders, in ``workers``
    processes (1: in this one); ``(folder, shard, result)`` in order. ``started(pids)``: the
    workers' process ids, before any of them starts (not called when none is forked). On an
    exception (or Ctrl-C) no further shard starts; it is raised once the shards under way have
    finished."""
    jobs = [(folder, shard) for folder in OBJECT_FOLDERS for shard in _SHARDS]
    if workers == 1:
        return [(folder, shard, work(folder, shard)) for folder, shard in jobs]
    results = forkpool.run(jobs, work, workers, started)
    return [(folder, shard, result) for (folder, shard), result in zip(jobs, results, strict=True)]


def _condemn_folders(repo: Any, batch: str, marks: IdSet, indexes: set[str], cutoff: int, now: int,
                     report: PruneReport, killer: _Killer, dry_run: bool, workers: int = 1,
                     started: Callable[[list[int]], None] | None = None) -> dict[tuple[str, str], array | None]:
    """Step 5 on a backend with folders (LocalBackend): shard by shard (in ``workers``
    processes; ``started`` as for ``_each_shard``), each folder held open,
    one ``stat`` per unreferenced object (its time and size) and one ``rename`` into the
    batch, names relative to the two open folders. Memory: one shard's listing per worker.
    The moves are not made durable one by one: a move lost in a crash leaves the object at its
    name, where the next prune finds it again (docs/format.md 9.3). Writers' ``.tmp`` files
    older than a day are deleted on the way (not in a dry run).

    Returns, per ``(folder, shard)`` it moved objects from, their sizes in the order of their
    sorted names (4 bytes an object; None when one does not fit), so that the sweep of this
    batch needs no second ``stat`` per object (``_sweep_folders``)."""
    backend = repo.backend
    killing = killer.armed()

    def work(folder: str, shard: str) -> tuple[int, int, int, array | None]:
        moved = size_sum = removed = 0
        src = backend.open_folder(f"{folder}/{shard}")
        if src is None:
            return 0, 0, 0, None
        dst = None
        done: list[tuple[str, int]] = []
        try:
            objects, temporaries = src.names()
            for name in temporaries if not dry_run else ():
                try:
                    if now - src.stat(name)[1] > TMP_AGE_NS:
                        src.delete(name)
                        removed += 1
                        if killing:
                            killer.step()
                except ObjectMissing:
                    continue
            for name in _unreferenced(folder, shard, objects, marks, indexes):
                if not _HEX64.fullmatch(name):
                    continue
                try:
                    size, mtime = src.stat(name)
                    if mtime >= cutoff:
                        continue        # a running backup may have just written it
                    if not dry_run:
                        if dst is None:
                            dst = backend.open_folder(f"{TRASH}/{batch}/{folder}/{shard}", create=True)
                        src.move(name, dst)
                        if killing:
                            killer.step()
                except ObjectMissing:
                    continue            # another prune moved it, or it is no file
                moved += 1
                size_sum += size
                done.append((name, size))
        finally:
            src.close()
            if dst is not None:
                dst.close()
        return moved, size_sum, removed, _sizes_by_name(done)

    out: dict[tuple[str, str], array | None] = {}
    for folder, shard, (moved, size_sum, removed, sizes) in _each_shard(work, workers, started):
        if folder == "chunks":
            report.moved_chunks += moved
        else:
            report.moved_indexes += moved
        report.moved_bytes += size_sum
        report.temporaries_removed += removed
        if moved:
            out[folder, shard] = sizes
    return out


def _sizes_by_name(moved: list[tuple[str, int]]) -> array | None:
    """The sizes of ``moved`` objects in the order of their sorted names, packed 4 bytes each;
    None when a size does not fit in 4 bytes (then the sweep asks the file system)."""
    if not moved:
        return None
    moved.sort()
    try:
        return array("I", [size for _name, size in moved])
    except OverflowError:
        return None


def _condemn_listed(repo: Any, batch: str, marks: IdSet, indexes: set[str], cutoff: int,
                    report: PruneReport, killer: _Killer, dry_run: bool) -> None:
    """Step 5 on any backend: from its listing (with sizes and times where the listing has
    them: S3), one object at a time; what Object Lock retention keeps is skipped and reported."""
    for folder in OBJECT_FOLDERS:
        for name, oid, size, mtime in _walk_objects(repo, folder):
            if (oid.hex() in indexes) if folder == "indexes" else (oid in marks):
                continue
            try:
                if mtime is None:
                    mtime = repo.backend.mtime_ns(name)
                if mtime >= cutoff:
                    continue            # a running backup may have just written it
                if size is None:
                    size = repo.backend.size(name)
                until = locked_at_least_until(repo.backend, mtime)
                if until is not None:   # certainly still locked: no request spent on it
                    report.note_locked(until, size)
                    continue
                if not dry_run:
                    repo.backend.rename(name, f"{TRASH}/{batch}/{name}")
                    killer.step()
            except ObjectMissing:
                continue
            except ObjectLocked:        # its retention was extended by a later backup
                report.note_locked(locked_until(repo.backend, name), size or 0)
                continue
            if folder == "chunks":
                report.moved_chunks += 1
            else:
                report.moved_indexes += 1
            report.moved_bytes += size


def _seal_all(repo: Any, me: str) -> list[tuple[str, dict]]:
    """Every pending batch that is sealed or can be sealed now: this run's own, and those a
    prune that no longer runs left "moving", get the backup leases live now as their writers.
    A batch another running prune is still filling is left to it (sealing it now would miss
    the backups that start before its last move)."""
    out = []
    running = {lease_.name for lease_ in live_leases(repo) if lease_.kind == "prune"}
    for b, doc in records.read_all(repo, PENDING, records.MAGIC_BATCH):
        if doc.get("state") != "sealed":
            if doc.get("owner") != me and (doc.get("owner") in running or _workers_alive(doc)):
                continue
            writers = sorted(lease_.name for lease_ in live_leases(repo) if lease_.kind == "backup")
            doc = {"state": "sealed", "started_ns": doc.get("started_ns", 0),
                   "sealed_ns": time.time_ns(), "writers": writers}
            records.put(repo, PENDING, b, records.MAGIC_BATCH, doc)
        out.append((b, doc))
    return out


def _workers_alive(doc: dict) -> bool:
    """Whether a worker process that a batch's record names (``host``, ``workers``) may still
    run: one of this host that still exists and is not a zombie. The kernel kills a prune's
    workers when the prune ends, but a rename one had under way still finishes; until they are
    gone the batch is not sealed. On doubt (a malformed record) they count as running."""
    pids = doc.get("workers")
    if not pids or doc.get("host") != socket.gethostname():
        return False
    if not isinstance(pids, list):
        return True
    return any(not isinstance(pid, int) or isinstance(pid, bool) or running(pid) for pid in pids)


def _sweep(repo: Any, batch: str, marks: IdSet, indexes: set[str], report: PruneReport,
           killer: _Killer, unreferenced: bool = False,
           sizes: dict[tuple[str, str], array | None] | None = None, workers: int = 1) -> None:
    """Step 7 for one batch. ``unreferenced``: every object in it is known not to be marked
    (this run's own batch, when no manifest appeared since the marks were made), so none is
    looked up again. ``sizes``: what ``_condemn_folders`` returned, for this run's own batch."""
    if getattr(repo.backend, "open_folder", None) is not None:
        _sweep_folders(repo, batch, marks, indexes, report, killer, unreferenced, sizes or {}, workers)
    else:
        _sweep_listed(repo, batch, marks, indexes, report, killer)


def _put_back(backend: Any, name: str, trashed: str) -> None:
    """Step 7 for an object a manifest written meanwhile references: back to its name (durably:
    the batch's record is deleted after this), or, when it exists there again, the trash copy
    deleted."""
    if backend.exists(name):
        backend.delete(trashed)
    else:
        backend.rename(trashed, name)


def _sweep_folders(repo: Any, batch: str, marks: IdSet, indexes: set[str], report: PruneReport,
                   killer: _Killer, unreferenced: bool, sizes: dict[tuple[str, str], array | None],
                   workers: int = 1) -> None:
    """Step 7 on a backend with folders (LocalBackend), shard by shard in ``workers`` processes:
    one ``unlink`` per object, relative to the open folder, and one ``stat`` before it for the
    size freed — except in this run's own batch, whose sizes the condemning walk kept
    (``sizes``). Only this run moves objects into its batch and other prunes only take them
    out, so a shard of it that still holds as many objects as were moved into it holds exactly
    those, and their sorted names pair with the kept sizes; a shard that holds fewer (another
    prune swept part of it) is swept with a ``stat`` per object."""
    backend = repo.backend
    prefix = f"{TRASH}/{batch}"
    killing = killer.armed()

    def work(folder: str, shard: str) -> tuple[int, int, int]:
        freed = size_sum = restored = 0
        trash = backend.open_folder(f"{prefix}/{folder}/{shard}")
        if trash is None:
            return 0, 0, 0
        with trash:
            names = [n for n in trash.names()[0] if _HEX64.fullmatch(n)]
            needed = set() if unreferenced else set(names).difference(
                _unreferenced(folder, shard, names, marks, indexes))
            known = sizes.get((folder, shard))
            if known is not None and len(known) == len(names):
                names.sort()
            else:
                known = None
            for k, name in enumerate(names):
                try:
                    if name in needed:
                        _put_back(backend, f"{folder}/{shard}/{name}", f"{trash.name}/{name}")
                        restored += 1
                        if killing:
                            killer.step()
                        continue
                    size = known[k] if known is not None else trash.stat(name)[0]
                    trash.delete(name)
                except ObjectMissing:
                    continue            # another prune swept it (and counts it)
                freed += 1
                size_sum += size
                if killing:
                    killer.step()
        return freed, size_sum, restored

    for folder, _shard, (freed, size_sum, restored) in _each_shard(work, workers):
        if folder == "chunks":
            report.freed_chunks += freed
        else:
            report.freed_indexes += freed
        report.freed_bytes += size_sum
        report.restored += restored
    records.delete(repo, PENDING, batch)
    backend.remove_empty_folders(prefix)


def _sweep_listed(repo: Any, batch: str, marks: IdSet, indexes: set[str], report: PruneReport,
                  killer: _Killer) -> None:
    """Step 7 on any backend, from its listing of the batch; deletions many at a time where
    the backend can (S3 ``DeleteObjects``); what retention keeps stays, and so does the record."""
    prefix = f"{TRASH}/{batch}/"
    left = 0
    doomed: list[tuple[str, str, int | None]] = []

    def free() -> None:
        nonlocal left
        failures = _delete_many(repo.backend, [full for full, _f, _s in doomed])
        for full, folder, size in doomed:
            error = failures.get(full)
            if isinstance(error, ObjectMissing):
                continue                # another prune swept it
            if isinstance(error, ObjectLocked):
                # a bucket whose default retention locked the trash copy too: it stays, and
                # so does the batch's record, for a later prune
                report.note_locked(locked_until(repo.backend, full), size or 0)
                left += 1
                continue
            if error is not None:
                raise error
            if folder == "chunks":
                report.freed_chunks += 1
            else:
                report.freed_indexes += 1
            report.freed_bytes += size or 0
            killer.step()
        doomed.clear()
    for full, size, _mtime in _listing(repo.backend, f"{TRASH}/{batch}"):   # streamed
        name = full[len(prefix):]
        m = _OBJECT.match(name)
        if not m:
            continue
        folder, oid = m.group(1), bytes.fromhex(m.group(3))
        needed = (m.group(3) in indexes) if folder == "indexes" else (oid in marks)
        try:
            if needed:
                _put_back(repo.backend, name, full)
                report.restored += 1
                killer.step()
            else:
                if size is None:
                    size = repo.backend.size(full)
                doomed.append((full, folder, size))
                if len(doomed) >= 1000:
                    free()
        except ObjectMissing:
            continue                    # another prune swept it
    free()
    if left:
        return
    records.delete(repo, PENDING, batch)
    remove = getattr(repo.backend, "remove_empty_folders", None)
    if remove is not None:
        remove(f"{TRASH}/{batch}")


def _delete_many(backend: Any, names: list[str]) -> dict[str, RepoError]:
    """Delete ``names``; the failures by name. One request per name, unless the backend
    deletes many at once (S3: ``delete_many``)."""
    many = getattr(backend, "delete_many", None)
    if many is not None:
        return many(names)
    failures: dict[str, RepoError] = {}
    for name in names:
        try:
            backend.delete(name)
        except (ObjectMissing, ObjectLocked) as e:
            failures[name] = e
    return failures


def _remove_old_temporaries(repo: Any, now: int, killer: _Killer, walked: tuple[str, ...] = ()) -> int:
    """Delete writers' ``.tmp`` files older than a day (left by killed writers), except in
    the shards of the folders ``walked`` (the condemning walk did those)."""
    root = getattr(repo.backend, "root", None)
    if root is None:
        return 0
    removed = 0
    shards = set(_SHARDS)
    for folder in ("chunks", "indexes", "manifests"):
        top = os.path.join(root, folder)
        for dirpath, dirs, files in os.walk(top):
            if folder in walked and dirpath == top:
                dirs[:] = [d for d in dirs if d not in shards]
            for f in files:
                if not f.endswith(".tmp"):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    if now - os.stat(path).st_mtime_ns > TMP_AGE_NS:
                        os.unlink(path)
                        removed += 1
                        killer.step()
                except OSError:
                    continue
    return removed
