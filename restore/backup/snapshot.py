"""The backup snapshot: changed-block tracking switched on, one snapshot per backup, always removed.

Role: ``enable_change_tracking`` turns CBT on when it is off and runs the snapshot cycle (create
and remove a snapshot) that makes it take effect on a running VM; ``backup_snapshot`` is a
context manager that creates the snapshot (quiesced on request; one retry without quiescing,
never more) and removes it when the block ends — on success, on any exception, on Ctrl-C —
and also when it was interrupted while the create task was still running (the snapshot is
found again by its unique name). A second Ctrl-C during the removal is held back until the
removal is done.

Limits: memory is never included. A removal that fails is reported (``SnapshotRemovalFailed``)
unless another error is already on its way out, which then wins and the removal failure is
attached as a note.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pyVmomi import vim

from restore.vsphere.errors import ChangeTrackingFailed, SnapshotFailed, SnapshotRemovalFailed, TaskFailed
from restore.vsphere.tasks import properties, wait

SNAPSHOT_PREFIX = "repofs-backup-"
CREATE_TIMEOUT = 1800.0
REMOVE_TIMEOUT = 3600.0


@dataclass
class BackupSnapshot:
    """The snapshot a backup reads from."""
    moref: str
    name: str
    obj: vim.vm.Snapshot
    quiesced: bool
    notes: list[str] = field(default_factory=list)  # e.g. "quiesce failed: …; taken without"
    removed: bool = False


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


def _create(si: Any, vm: vim.VirtualMachine, name: str, quiesce: bool, what: str) -> vim.vm.Snapshot:
    task = vm.CreateSnapshot_Task(name=name, description="taken by repofs for a backup; removed afterwards",
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
