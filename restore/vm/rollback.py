"""Quick Rollback: ``repofs restore vm:NAME --in-place`` puts a VM's own disks back to a
generation, writing only the blocks that differ.

The steps:

  find the VM            the generation's VM (instance UUID, else name); each disk of the
                         generation matched to the VM's disk of the same label and capacity
  leftovers              a safety snapshot of ours left by a killed run (its process gone): the
                         VM is reverted to it and it is removed, so the disks are as before that run
  power off              a powered-on VM is refused unless ``--force`` (then powered off, and on
                         again at the end)
  safety snapshot        ``repofs-rollback-…`` with the owner marker: what a failure reverts to
  what differs           per disk, the areas written since the generation's snapshot:
                         ``QueryChangedDiskAreas(safety snapshot, key, the generation's change id)``,
                         page after page in a thread (``changedareas``), the first pages' areas
                         read and written while the later ones are asked for; when
                         changed-block tracking cannot be trusted (off, no change id, a revert
                         since the generation, KB 1020128 — see ``changetrust``) or its answer
                         cannot be used (a fault, pages that do not advance, areas out of
                         order — also after some areas were written: they hold the
                         generation's bytes), every area that holds data on either side, read
                         through VixDiskLib and compared with the generation piece by piece
  write                  the generation's bytes over those areas, zeros included (the disk
                         holds data there now)
  remove the snapshot    consolidating; power on when the VM was on or ``--power-on``

A failure after the safety snapshot reverts the VM to it, removes it and powers the VM on again
if it was on; the error says so. Time and bytes written are proportional to the changed blocks
(compare mode reads the disk, and writes only what differs).

Limits: the disks must be those of the generation (same labels and capacities): a disk added,
removed or resized since is refused — restore a new VM instead. The VM's configuration is not
changed. A disk that was not in the generation is left as it is.
"""
from __future__ import annotations

import collections
import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from pyVmomi import vim

from format.spans import merge

from restore.vsphere import changetrust
from restore.vsphere.errors import VMNotFound
from restore.vsphere.inventory import find_vm
from restore.vsphere.options import RestoreOptions
from restore.vsphere.ownership import owner_description, owner_of
from restore.vsphere.session import Session
from restore.vsphere.tasks import content, properties, wait
from restore.vsphere.vddkprovider import VddkProvider, connect_params
from restore.vsphere.vmmeta import disk_label
from . import steps
from .changedareas import ChangedAreas, ChangedAreasUnusable
from .errors import DiskWriteFailed, RestoreError, SourceUnusable, StepFailed, VMPoweredOn
from .generation import GenerationSource, block_size, piece_size
from .writepipe import WritePipe

IDENTITY = "repofs-rollback"
SNAPSHOT_PREFIX = "repofs-rollback-"
SECTOR = 512

Say = Callable[[str], None]


@dataclass
class RolledBackDisk:
    label: str
    path: str
    capacity: int
    mode: str                 # "changed" (CBT since the generation) or "compared"
    reason: str
    changed_bytes: int        # the areas that may differ (CBT) or were compared
    written_bytes: int        # bytes written back
    seconds: float


@dataclass
class RollbackResult:
    source_vm: str
    generation: str
    vm: str
    moref: str
    disks: list[RolledBackDisk] = field(default_factory=list)
    powered_on: bool = False
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def written_bytes(self) -> int:
        return sum(d.written_bytes for d in self.disks)


def _walk(nodes: Any) -> Iterator[Any]:
    for node in nodes or []:
        yield node
        yield from _walk(node.childSnapshotList)


def _find(si: Any, source: GenerationSource) -> Any:
    vm_doc = source.metadata.get("vm") or {}
    uuid = vm_doc.get("instance_uuid")
    if uuid:
        found = content(si).searchIndex.FindByUuid(uuid=uuid, vmSearch=True, instanceUuid=True)
        if found is not None:
            return found
    return find_vm(si, vm_doc.get("name") or source.vm)


def _pieces(areas: Iterable[tuple[int, int]], size: int, capacity: int) -> Iterator[tuple[int, int]]:
    """Whole-sector pieces covering ``areas``, cut at the multiples of ``size``: with ``size``
    a multiple of the reader's chunk size, a piece lies within whole chunks, and a piece of
    one chunk is read without a copy (the chunk's bytes themselves). ``areas`` come in disk
    order; an area that, widened to whole sectors, overlaps the pieces before it gives only
    the rest (a sector is never written twice)."""
    done = 0
    for offset, length in areas:
        start = max(offset - offset % SECTOR, done)
        end = min(capacity, offset + length + (-(offset + length)) % SECTOR)
        pos = start
        while pos < end:
            stop = min(end, (pos // size + 1) * size)
            yield pos, stop - pos
            pos = stop
        done = max(done, end)


def rollback_vm(session: Session, source: GenerationSource, options: RestoreOptions, *,
                provider: VddkProvider, on_event: Say | None = None) -> RollbackResult:
    """Put the VM's disks back to ``source``; see the module's docstring."""
    return _Rollback(session, source, options, provider, on_event or (lambda _t: None)).run()


@dataclass
class _Target:
    label: str
    key: int
    path: str
    capacity: int
    reader: Any
    change_id: str | None


class _Rollback:
    def __init__(self, session: Session, source: GenerationSource, options: RestoreOptions,
                 provider: VddkProvider, say: Say) -> None:
        self.session, self.si = session, session.si
        self.source, self.options, self.provider, self.say = source, options, provider, say
        self.vm: Any = None
        self.name = source.vm
        self.snapshot: Any = None
        self.was_on = False
        self.result: RollbackResult | None = None

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        return steps.step(name, lambda: self.say(f"{self.name}: {name}"),
                          self.result.steps if self.result is not None else None)

    def run(self) -> RollbackResult:
        started = time.monotonic()
        with self.step("find the VM"):
            try:
                self.vm = _find(self.si, self.source)
            except VMNotFound as e:
                raise SourceUnusable("find the VM", f"{e}: --in-place restores into the VM "
                                     "the generation was taken of") from None
            # Everything the run decides on, in one round trip; the snapshot tree as the
            # backup recorded it, before a snapshot of ours exists (changetrust).
            props = properties(self.si, self.vm, ["name", "runtime.powerState",
                                                  "config.hardware.device",
                                                  "config.changeTrackingEnabled", "snapshot"])
            self.name = props.get("name", self.vm._moId)
            targets = self._match(props.get("config.hardware.device") or [])
        self.result = RollbackResult(self.source.vm, self.source.name, self.name, self.vm._moId)
        self.result.steps.append("find the VM")
        tree = props.get("snapshot")
        if self._leftovers(tree):
            tree = properties(self.si, self.vm, ["snapshot"]).get("snapshot")
        state = changetrust.state_of(tree, SNAPSHOT_PREFIX)
        self.was_on = props.get("runtime.powerState") == "poweredOn"
        if self.was_on:
            if not self.options.force:
                raise VMPoweredOn("power off", f"{self.name} is powered on: power it off, or give "
                                  "--force to have it powered off (and on again afterwards)")
            with self.step("power off"):
                wait(self.si, self.vm.PowerOffVM_Task(), f"power off {self.name}")
        lib = self.provider.get()
        try:
            with self.step("safety snapshot"):
                self.snapshot = wait(self.si, self.vm.CreateSnapshot_Task(
                    name=f"{SNAPSHOT_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}",
                    description=owner_description(
                        "taken by repofs before an in-place restore; reverted to on failure"),
                    memory=False, quiesce=False), f"snapshot {self.name}")
            plans = self._plan(targets, bool(props.get("config.changeTrackingEnabled")), state)
            self._write(lib, targets, plans)
        except BaseException as e:
            undone = self._undo()
            if isinstance(e, RestoreError):
                e.rolled_back.extend(undone)
            elif isinstance(e, Exception):
                err = StepFailed("write the disks", str(e), cause=e)
                err.rolled_back.extend(undone)
                raise err from e
            raise
        with self.step("remove the snapshot"):
            wait(self.si, self.snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
                 f"remove the safety snapshot of {self.name}")
            self.snapshot = None
        if self.was_on or self.options.power_on:
            with self.step("power on"):
                wait(self.si, self.vm.PowerOnVM_Task(), f"power on {self.name}")
                self.result.powered_on = True
        self.result.seconds = time.monotonic() - started
        return self.result

    # -- steps -------------------------------------------------------------------------------

    def _match(self, devices: list[Any]) -> list[_Target]:
        controllers = {d.key: d for d in devices}
        current = {}
        for d in devices:
            if isinstance(d, vim.vm.device.VirtualDisk):
                label = disk_label(controllers.get(d.controllerKey), d.unitNumber)
                current[label] = d
        saved = {d["label"]: d for d in self.source.metadata.get("disks") or []}
        problems, targets = [], []
        for reader in self.source.disks:
            disk = current.get(reader.label)
            if disk is None:
                problems.append(f"the VM has no disk {reader.label}")
                continue
            capacity = disk.capacityInBytes or (disk.capacityInKB or 0) * 1024
            if capacity != reader.capacity:
                problems.append(f"disk {reader.label} has {capacity} bytes, the generation "
                                f"{reader.capacity}")
                continue
            if not isinstance(disk.backing, vim.vm.device.VirtualDevice.FileBackingInfo):
                problems.append(f"disk {reader.label} is not backed by a file")
                continue
            targets.append(_Target(reader.label, disk.key, disk.backing.fileName, capacity, reader,
                                   (saved.get(reader.label) or {}).get("change_id")))
        if problems:
            raise SourceUnusable("find the VM", "; ".join(problems)
                                 + ": --in-place needs the generation's disks; restore a new VM")
        return targets

    def _leftovers(self, tree: Any) -> bool:
        """A safety snapshot that a killed run left (in ``tree``, the VM's ``snapshot``):
        revert to it (the disks as before that run) and remove it; whether there was one.
        One of a run that may still be going stops this one."""
        found = False
        for node in list(_walk(tree.rootSnapshotList if tree else [])):
            if not node.name.startswith(SNAPSHOT_PREFIX):
                continue
            owner = owner_of(node.description)
            if owner is None or not owner.gone:
                who = f"pid {owner.pid} on {owner.host}" if owner else "an unknown run"
                raise StepFailed("leftovers", f"{self.name} has the safety snapshot {node.name} "
                                 f"of {who}, which may still be running; if it is not, revert "
                                 "the VM to that snapshot and remove it")
            with self.step("leftovers"):
                wait(self.si, node.snapshot.RevertToSnapshot_Task(),
                     f"revert {self.name} to {node.name}")
                wait(self.si, node.snapshot.RemoveSnapshot_Task(removeChildren=False,
                                                                consolidate=True),
                     f"remove {node.name}")
            assert self.result is not None
            self.result.notes.append(
                f"the safety snapshot {node.name} of a killed in-place restore (pid {owner.pid}) "
                "was reverted to and removed: the disks were as before that run")
            found = True
        return found

    def _plan(self, targets: list[_Target], tracking: bool,
              now: dict[str, Any]) -> dict[str, tuple[str, str, Any]]:
        """Per disk: (mode, reason, its ``ChangedAreas`` or None for compare); ``now`` is the
        VM's ``changetrust`` state, read before the safety snapshot."""
        doc = self.source.metadata
        why = None
        if not tracking:
            why = "changed-block tracking is off on the VM"
        else:
            previous = {"vm_state": doc.get("vm_state"), "tracking": doc.get("change_tracking")}
            why = changetrust.distrust(self.si, self.vm, previous, now)
        plans: dict[str, tuple[str, str, ChangedAreas | None]] = {}
        for t in targets:
            reason: str | None
            if why is None and not t.change_id:
                reason = "the generation has no change id for this disk"
            else:
                reason = why
            if reason is None and t.change_id:       # (no reason: a change id and trust in it)
                # asked for page by page once the disk's writes begin (the first disk's now)
                plans[t.label] = ("changed", f"changed since {t.change_id}",
                                  ChangedAreas(self.vm, self.snapshot, t.key, t.capacity, t.change_id))
                continue
            plans[t.label] = ("compared", f"{reason}: every block compared", None)
        return plans

    def _write(self, lib: Any, targets: list[_Target], plans: dict[str, tuple[str, str, Any]]) -> None:
        assert self.result is not None
        params = connect_params(self.session, self.vm._moId)
        # The first disk's changed pieces start being read (decompressed, verified) now,
        # while VixDiskLib prepares, connects and opens: on a real vCenter that takes seconds.
        early: _ReadAhead | None = None
        first = next((t for t in targets if plans[t.label][0] == "changed"), None)
        if first is not None:
            early = _ReadAhead(first.reader.read_part, _pieces(plans[first.label][2].start(),
                                                               block_size(first.reader), first.capacity),
                               self.options.workers, per_worker=4)
        try:
            with self.step("prepare for access"):
                lib.prepare_for_access(params, IDENTITY)
            try:
                with self.step("connect"):
                    conn = lib.connect(params, read_only=False,
                                       transports=self.options.session.transports)
                try:
                    for t in targets:
                        mode, reason, areas = plans[t.label]
                        self.say(f"{self.name}: {t.label}: {mode} ({reason})")
                        ahead, early = (early, None) if t is first else (None, early)
                        self.result.disks.append(self._write_disk(conn, t, mode, reason, areas,
                                                                  ahead))
                finally:
                    try:
                        conn.close()
                    except Exception:
                        pass
            finally:
                with self.step("end access"):
                    lib.end_access(params, IDENTITY)
        finally:
            if early is not None:
                early.close()
            for _mode, _reason, areas in plans.values():
                if areas is not None:
                    areas.close()

    def _write_disk(self, conn: Any, t: _Target, mode: str, reason: str,
                    areas: ChangedAreas | None,
                    ahead: _ReadAhead | None = None) -> RolledBackDisk:
        """Write one disk; ``ahead``: its pieces' reads, already started. Changed areas that
        turn out unusable part-way: what was written stays, every block is compared."""
        started = time.monotonic()
        size = piece_size(t.reader)
        written = looked = 0
        try:
            disk = conn.open(t.path, read_only=False, unbuffered=self.options.session.unbuffered)
        except BaseException:
            if ahead is not None:
                ahead.close()
            raise
        offset = 0
        pipe: WritePipe | None = None
        failed_at: list[int] = []   # where a write of the pipe's thread failed

        def write(at: int, view: memoryview) -> None:
            try:
                disk.write_from(at, view)
            except BaseException:
                failed_at.append(at)
                raise

        try:
            if mode == "changed":
                assert areas is not None
                if ahead is None:
                    # Changed areas are read a chunk at a time (no piece joins chunks: no copy
                    # but the one into the write buffers).
                    ahead = _ReadAhead(t.reader.read_part, _pieces(areas, block_size(t.reader), t.capacity),
                                       self.options.workers, per_worker=4)
                # Every piece is written: each is copied into a buffer shared with VixDiskLib
                # while the buffer before it is being written, and the next pieces are read.
                pipe = WritePipe(disk, size, write, name="rollback-write")
                unusable: ChangedAreasUnusable | None = None
                try:
                    for offset, length, want in ahead:
                        looked += length
                        pipe.add(offset, want)
                        written += length
                except ChangedAreasUnusable as e:
                    unusable = e
                pipe.finish()
                if unusable is not None:
                    ahead.close()
                    ahead = None
                    mode, reason = "compared", (f"the generation's change id is unusable "
                                                f"({unusable}): every block compared")
                    self.say(f"{self.name}: {t.label}: {mode} ({reason})")
            if mode == "compared":
                # Both sides' data: what the disk holds now and what the generation holds,
                # read and written by this thread alone, piece by piece.
                both = _union(disk.allocated_extents(), t.reader.extents(), t.capacity)
                ahead = _ReadAhead(t.reader.read, _pieces(both, size, t.capacity), self.options.workers)
                buf = disk.buffer(size)
                for offset, length, want in ahead:
                    looked += length
                    disk.read_into(offset, buf[:length])
                    if buf[:length] == want:
                        continue
                    buf[:length] = want
                    disk.write_from(offset, buf[:length])
                    written += length
            disk.flush()
        except RestoreError:
            raise
        except Exception as e:
            offset = failed_at[0] if failed_at else offset
            raise DiskWriteFailed("write the disks", f"{t.label} at offset {offset}: {e}",
                                  label=t.label, offset=offset, cause=e) from e
        finally:
            if pipe is not None:
                pipe.abort()   # (joins its thread: nothing writes to the disk once it is closed)
            if ahead is not None:
                ahead.close()
            disk.close()
        return RolledBackDisk(t.label, t.path, t.capacity, mode, reason, looked, written,
                              time.monotonic() - started)

    def _undo(self) -> list[str]:
        """Back to the safety snapshot; what was done, in words."""
        done = []
        if self.snapshot is not None:
            try:
                wait(self.si, self.snapshot.RevertToSnapshot_Task(), f"revert {self.name}")
                done.append(f"{self.name} reverted to its safety snapshot")
                wait(self.si, self.snapshot.RemoveSnapshot_Task(removeChildren=False,
                                                                consolidate=True),
                     f"remove the safety snapshot of {self.name}")
                done.append("safety snapshot removed")
            except Exception as e:  # said in the error: the administrator finishes
                done.append(f"reverting to the safety snapshot failed ({e}): revert {self.name} "
                            "to the snapshot named repofs-rollback-… by hand")
        if self.was_on:
            try:
                wait(self.si, self.vm.PowerOnVM_Task(), f"power on {self.name}")
                done.append(f"{self.name} powered on again")
            except Exception as e:
                done.append(f"powering {self.name} on again failed ({e})")
        return done


class _ReadAhead:
    """``(offset, length, data)`` of the generation's ``pieces``, in order, read with
    ``read(offset, length)`` — a changed area's ``read_part``, which may fetch only the
    frames holding it; compare mode's large pieces' ``read`` — by ``workers`` threads ahead
    of the writer (decompression and hashing release the GIL); the first reads start at once.
    At most ``per_worker × workers`` pieces in memory (4 for chunk-sized pieces, 2 for the
    larger ones of compare mode). An error of ``pieces`` (their areas' source) is raised
    after the pieces before it. ``close()`` drops what was not taken and waits for the reads
    under way (idempotent)."""

    def __init__(self, read: Callable[[int, int], bytes], pieces: Iterator[tuple[int, int]], workers: int,
                 per_worker: int = 2) -> None:
        self._read = read
        self._pieces = pieces
        self._depth = per_worker * max(1, workers)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="rollback-read")
        self._window: collections.deque[tuple[int, int, Future[bytes]]] = collections.deque()
        self._error: Exception | None = None   # of ``pieces``: raised after the pieces before it
        self._fill()

    def _fill(self) -> None:
        while self._error is None and len(self._window) < self._depth:
            try:
                piece = next(self._pieces, None)
            except Exception as e:
                self._error = e
                return
            if piece is None:
                return
            offset, length = piece
            self._window.append((offset, length, self._pool.submit(self._read, offset, length)))

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        while self._window:
            offset, length, future = self._window.popleft()
            self._fill()
            yield offset, length, future.result()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        for *_, future in self._window:
            future.cancel()
        self._window.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]], capacity: int) -> list[tuple[int, int]]:
    """The spans ``a`` or ``b`` cover, clipped to ``capacity``: ascending, apart."""
    return merge((o, min(capacity, o + n) - o) for o, n in [*a, *b] if o < capacity)
