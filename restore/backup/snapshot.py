"""The backup snapshot: changed-block tracking switched on, one snapshot per backup, always removed.

Role: ``enable_change_tracking`` turns CBT on when it is off and runs the snapshot cycle (create
and remove a snapshot) that makes it take effect on a running VM; ``backup_snapshot`` is a
context manager that creates the snapshot (quiesced on request; one retry without quiescing,
never more) and removes it when the block ends — on success, on any exception, on Ctrl-C —
and also when it was interrupted while the create task was still running (the snapshot is
found again by its unique name). A second Ctrl-C during the removal is held back until the
removal is done.

Ownership: the snapshot's description carries the owner marker (``restore.vsphere.ownership``)
with the host, process id and start time of the run. ``remove_orphans`` (run before the next backup
of the VM) removes the
snapshots of ours that a killed run left: named with our prefix, marked, and either made by a
process of this host that is gone, or older than ``ORPHAN_AGE``; others of our name are
reported, not touched (another run may be reading them).

Consolidation: a removal whose disk merge failed leaves ``runtime.consolidationNeeded``; the
removal then runs ``ConsolidateVMDisks_Task`` and says so (``BackupSnapshot.consolidation``).

Limits: memory is never included. A removal that fails is reported (``SnapshotRemovalFailed``)
unless another error is already on its way out, which then wins and the removal failure is
attached as a note.
"""
from __future__ import annotations

import contextlib
import datetime
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pyVmomi import vim

from restore.vsphere.errors import ChangeTrackingFailed, SnapshotFailed, SnapshotRemovalFailed, TaskFailed
from restore.vsphere.ownership import ORPHAN_AGE, owner_description, owner_of
from restore.vsphere.tasks import properties, wait

SNAPSHOT_PREFIX = "repofs-backup-"
CREATE_TIMEOUT = 1800.0
REMOVE_TIMEOUT = 3600.0
CONSOLIDATE_TIMEOUT = 3600.0


@dataclass
class BackupSnapshot:
    """The snapshot a backup reads from."""
    moref: str
    name: str
    obj: vim.vm.Snapshot
    quiesced: bool
    notes: list[str] = field(default_factory=list)  # e.g. "quiesce failed: …; taken without"
    removed: bool = False
    consolidation: str | None = None  # what was done about consolidationNeeded, if anything


def _walk(nodes: Any) -> Iterator[Any]:
    for node in nodes or []:
        yield node
        yield from _walk(node.childSnapshotList)


def snapshots_of(si: Any, vm: vim.VirtualMachine) -> list[tuple[str, str]]:
    """(name, moref) of every snapshot of ``vm``, read so that an unset tree is just empty."""
    info = properties(si, vm, ["snapshot"]).get("snapshot")
    if info is None:
        return []
    return [(n.name, n.snapshot._moId) for n in _walk(info.rootSnapshotList)]


def enable_change_tracking(si: Any, vm: vim.VirtualMachine) -> bool:
    """Turn CBT on if it is off; True when this call turned it on."""
    props = properties(si, vm, ["config.changeTrackingEnabled", "name"])
    if props.get("config.changeTrackingEnabled"):
        return False
    name = props.get("name", vm._moId)
    try:
        wait(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)),
             f"enable changed-block tracking on {name}")
        # CBT takes effect at the next stun/unstun of the VM: a snapshot cycle.
        with backup_snapshot(si, vm, quiesce=False, purpose="cbt"):
            pass
    except (TaskFailed, SnapshotFailed, SnapshotRemovalFailed) as e:
        raise ChangeTrackingFailed(f"cannot enable changed-block tracking on {name}: {e}") from None
    return True


def remove_orphans(si: Any, vm: vim.VirtualMachine, *, max_age: datetime.timedelta = ORPHAN_AGE,
                   now: datetime.datetime | None = None) -> list[str]:
    """Remove snapshots of ours left by a killed run; return what was done, in words."""
    info = properties(si, vm, ["snapshot", "name"])
    vm_name = info.get("name", vm._moId)
    tree = info.get("snapshot")
    if tree is None:
        return []
    if now is None:
        now = si.CurrentTime()
    notes = []
    for node in list(_walk(tree.rootSnapshotList)):
        if not node.name.startswith(SNAPSHOT_PREFIX):
            continue
        owner = owner_of(node.description)
        age = now - node.createTime if node.createTime is not None else None
        if owner is None:
            notes.append(f"snapshot {node.name} has our name but not our marker: left alone; "
                         "remove it if it is not in use")
            continue
        host, pid = owner.host, owner.pid
        gone = owner.gone
        old = age is not None and age > max_age
        if not (gone or old):
            notes.append(f"snapshot {node.name} belongs to a run (pid {pid} on {host}) that may "
                         "still be reading it: left alone")
            continue
        why = (f"its run (pid {pid} on {host}) is gone" if gone
               else f"it is {age} old, more than {max_age}")
        try:
            _remove(si, node.snapshot, f"remove orphaned snapshot {node.name} of {vm_name}")
        except Exception as e:  # reported; the backup goes on with its own snapshot
            notes.append(f"orphaned snapshot {node.name} ({why}) could not be removed: {e}")
        else:
            notes.append(f"removed orphaned snapshot {node.name}: {why}")
    return notes


def consolidate_if_needed(si: Any, vm: vim.VirtualMachine) -> str | None:
    """Consolidate the VM's disks when vCenter says it is needed; what was done, in words."""
    props = properties(si, vm, ["runtime.consolidationNeeded", "name"])
    if not props.get("runtime.consolidationNeeded"):
        return None
    name = props.get("name", vm._moId)
    try:
        wait(si, vm.ConsolidateVMDisks_Task(), f"consolidate the disks of {name}",
             timeout=CONSOLIDATE_TIMEOUT)
    except TaskFailed as e:
        return (f"the disks of {name} need consolidation after the snapshot removal, and it "
                f"failed: {e}; consolidate them in vCenter")
    return f"the disks of {name} needed consolidation after the snapshot removal: consolidated"


def reset_change_tracking(si: Any, vm: vim.VirtualMachine) -> None:
    """Switch tracking off and on again, with the snapshot cycle that makes it take effect."""
    name = properties(si, vm, ["name"]).get("name", vm._moId)
    try:
        wait(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)),
             f"switch changed-block tracking off on {name}")
    except TaskFailed as e:
        raise ChangeTrackingFailed(f"cannot reset changed-block tracking on {name}: {e}") from None
    enable_change_tracking(si, vm)


def _create(si: Any, vm: vim.VirtualMachine, name: str, quiesce: bool, what: str) -> vim.vm.Snapshot:
    task = vm.CreateSnapshot_Task(name=name, description=owner_description(
                                      "taken by repofs for a backup; removed afterwards"),
                                  memory=False, quiesce=quiesce)
    return wait(si, task, what, timeout=CREATE_TIMEOUT)


def _remove(si: Any, snapshot: vim.vm.Snapshot, what: str) -> None:
    wait(si, snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True), what,
         timeout=REMOVE_TIMEOUT)


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM back for the duration of the block (main thread only); raise
    KeyboardInterrupt after it if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signals}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def backup_snapshot(si: Any, vm: vim.VirtualMachine, *, quiesce: bool = False,
                    purpose: str = "backup",
                    on_event: Callable[[str], None] | None = None) -> Iterator[BackupSnapshot]:
    """Create the snapshot, yield it, remove it whatever happens."""
    vm_name = properties(si, vm, ["name"]).get("name", vm._moId)
    name = f"{SNAPSHOT_PREFIX}{purpose}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    notes: list[str] = []
    snap_obj: vim.vm.Snapshot | None = None
    try:
        try:
            snap_obj = _create(si, vm, name, quiesce, f"create snapshot of {vm_name}")
            quiesced = quiesce
        except TaskFailed as first:
            if not quiesce:
                raise SnapshotFailed(f"cannot snapshot {vm_name}: {first}") from None
            notes.append(f"quiesced snapshot failed ({first}); taken without quiescing")
            if on_event:
                on_event(notes[-1])
            try:
                snap_obj = _create(si, vm, name, False, f"create snapshot of {vm_name} (not quiesced)")
            except TaskFailed as second:
                raise SnapshotFailed(f"cannot snapshot {vm_name}: quiesced: {first}; "
                                     f"not quiesced: {second}") from None
            quiesced = False
        snapshot = BackupSnapshot(snap_obj._moId, name, snap_obj, quiesced, notes)
        yield snapshot
    except BaseException as e:
        # Also when interrupted during the create task: find what it made by its name.
        with signals_deferred():
            removal = _cleanup(si, vm, vm_name, name, snap_obj)
        if removal is not None:
            e.add_note(str(removal))
        raise
    with signals_deferred():
        removal = _cleanup(si, vm, vm_name, name, snap_obj)
        if removal is None:
            try:
                snapshot.consolidation = consolidate_if_needed(si, vm)
            except Exception as e:  # the backup is good; the VM's state is reported
                snapshot.consolidation = f"consolidationNeeded could not be checked: {e}"
    snapshot.removed = removal is None
    if removal is not None:
        raise removal


def _cleanup(si: Any, vm: vim.VirtualMachine, vm_name: str, name: str,
             snap_obj: vim.vm.Snapshot | None) -> SnapshotRemovalFailed | None:
    """Remove the snapshot; the error to report if that failed."""
    targets: list[vim.vm.Snapshot] = []
    if snap_obj is not None:
        targets.append(snap_obj)
    else:
        # The create may still be running: give it a moment to leave a snapshot to remove.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                found = [m for n, m in snapshots_of(si, vm) if n == name]
            except Exception:
                found = []
            if found or time.monotonic() > deadline or not _create_running(si, vm):
                break
            time.sleep(0.2)
        targets = [vim.vm.Snapshot(m, si._stub) for m in found]
    failure: Exception | None = None
    for target in targets:
        try:
            _remove(si, target, f"remove snapshot {name} of {vm_name}")
        except Exception as e:  # every way out must try; report below
            failure = e
    try:
        # Anything else of ours under that unique name (a failed quiesced attempt that left one).
        for moref in [m for n, m in snapshots_of(si, vm) if n == name]:
            _remove(si, vim.vm.Snapshot(moref, si._stub), f"remove snapshot {name} of {vm_name}")
    except Exception as e:
        failure = failure or e
    if failure is not None:
        return SnapshotRemovalFailed(f"the snapshot {name} of {vm_name} could not be removed: "
                                     f"{failure}; remove it by hand")
    return None


def _create_running(si: Any, vm: vim.VirtualMachine) -> bool:
    try:
        tasks = properties(si, vm, ["recentTask"]).get("recentTask") or []
        for t in tasks:
            p = properties(si, t, ["info.state", "info.descriptionId"])
            what = str(p.get("info.descriptionId", "")).lower()
            if p.get("info.state") in ("queued", "running") and "snapshot" in what:
                return True
    except Exception:
        return False
    return False
