"""First-class disks (improved virtual disks, ``ivd:NAME``): the same backup as a VM's disk.

Role: find a first-class disk by name (or ``id=…``) on the datastores of the inventory; turn
its changed-block tracking on (``SetVStorageObjectControlFlags``); take a snapshot of it
(``VStorageObjectCreateSnapshot_Task``) that is deleted whatever happens; describe it
(``capture``); plan what to read with ``VStorageObjectManager.QueryChangedDiskAreas`` against
the previous generation's change id; and read it through VDDK with a vStorage-object spec
(disk id, datastore moref, snapshot id).

Its generation is stored under the name ``ivd-<NAME>``, with one disk labelled ``disk``.

Limits: the disk's own snapshot only; a disk attached to a VM is better backed up with the VM
(one consistent snapshot for all its disks).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pyVmomi import vim, vmodl

import vddk
from format.spans import merge

from .changed import ChangedAreasRefused, ReadPlan, check_answer, collect
from restore.vsphere.errors import (AmbiguousVM, CertificateError, ChangeTrackingFailed, SnapshotFailed,
                                    SnapshotRemovalFailed, TaskFailed, VMNotFound)
from .metadata import storage_profiles
from .snapshot import signals_deferred
from restore.vsphere.tasks import fault_text, properties, wait
from restore.vsphere.vmodl_json import to_json

SCHEMA = "repofs.vsphere.ivd/1"
LABEL = "disk"
MAX_QUERIES = 1_000_000


@dataclass
class FirstClassDisk:
    id: str
    name: str
    datastore: vim.Datastore
    datastore_name: str
    obj: Any  # vim.vslm.VStorageObject

    @property
    def repository_name(self) -> str:
        return f"ivd-{self.name}"

    @property
    def capacity(self) -> int:
        return int(self.obj.config.capacityInMB) * 2**20

    @property
    def path(self) -> str:
        return self.obj.config.backing.filePath


def manager(si: Any) -> Any:
    return vim.vslm.vcenter.VStorageObjectManager("VStorageObjectManager", si._stub)


def _datastores(si: Any) -> list[Any]:
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datastore], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def find(si: Any, spec: str) -> FirstClassDisk:
    """The first-class disk named ``spec`` (or ``id=<uuid>``), on any datastore."""
    mgr = manager(si)
    by_id = spec[3:] if spec.startswith("id=") else None
    found = []
    for ds in _datastores(si):
        try:
            ids = mgr.ListVStorageObject(datastore=ds) or []
        except vmodl.MethodFault:
            continue
        for ident in ids:
            if by_id is not None and ident.id != by_id:
                continue
            obj = mgr.RetrieveVStorageObject(id=ident, datastore=ds)
            if by_id is not None or obj.config.name == spec:
                ds_name = properties(si, ds, ["name"]).get("name", ds._moId)
                found.append(FirstClassDisk(ident.id, obj.config.name, ds, ds_name, obj))
    if not found:
        raise VMNotFound(f"no first-class disk {'with id ' + by_id if by_id else 'named ' + repr(spec)}")
    if len(found) > 1:
        raise AmbiguousVM(f"{len(found)} first-class disks are named {spec!r}: "
                          + ", ".join(f"id={d.id} on {d.datastore_name}" for d in found)
                          + "; name one with ivd:id=…")
    return found[0]


def enable_change_tracking(si: Any, disk: FirstClassDisk) -> bool:
    if disk.obj.config.changedBlockTrackingEnabled:
        return False
    try:
        manager(si).SetVStorageObjectControlFlags(id=vim.vslm.ID(id=disk.id), datastore=disk.datastore,
                                                  controlFlags=["enableChangedBlockTracking"])
    except vmodl.MethodFault as e:
        raise ChangeTrackingFailed(f"cannot enable changed-block tracking on {disk.name}: {fault_text(e)}") from None
    disk.obj = manager(si).RetrieveVStorageObject(id=vim.vslm.ID(id=disk.id), datastore=disk.datastore)
    return True


@dataclass
class DiskSnapshot:
    id: str
    name: str
    change_id: str | None
    path: str | None


@contextlib.contextmanager
def snapshot(si: Any, disk: FirstClassDisk) -> Iterator[DiskSnapshot]:
    """Take a snapshot of the disk, yield it, delete it whatever happens."""
    mgr = manager(si)
    ident = vim.vslm.ID(id=disk.id)
    label = f"repofs-backup-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        snap_id = wait(si, mgr.VStorageObjectCreateSnapshot_Task(id=ident, datastore=disk.datastore,
                                                                 description=label),
                       f"snapshot first-class disk {disk.name}")
    except TaskFailed as e:
        raise SnapshotFailed(f"cannot snapshot first-class disk {disk.name}: {e}") from None
    details = mgr.RetrieveSnapshotDetails(id=ident, datastore=disk.datastore, snapshotId=snap_id)
    snap = DiskSnapshot(snap_id.id, label, details.changedBlockTrackingId or None, details.path)

    def delete() -> SnapshotRemovalFailed | None:
        try:
            wait(si, mgr.DeleteSnapshot_Task(id=ident, datastore=disk.datastore, snapshotId=snap_id),
                 f"delete snapshot {snap.id} of first-class disk {disk.name}")
        except Exception as e:
            return SnapshotRemovalFailed(f"the snapshot {snap.id} of first-class disk {disk.name} could "
                                         f"not be deleted: {e}; delete it by hand")
        return None

    try:
        yield snap
    except BaseException as e:
        with signals_deferred():
            problem = delete()
        if problem is not None:
            e.add_note(str(problem))
        raise
    with signals_deferred():
        problem = delete()
    if problem is not None:
        raise problem


def snapshots_of(si: Any, disk: FirstClassDisk) -> list[str]:
    info = manager(si).RetrieveSnapshotInfo(id=vim.vslm.ID(id=disk.id), datastore=disk.datastore)
    return [s.id.id for s in (info.snapshots or [])]


def changed_areas(si: Any, disk: FirstClassDisk, snap: DiskSnapshot, change_id: str) -> list[tuple[int, int]]:
    mgr = manager(si)
    extents: list[tuple[int, int]] = []
    offset, capacity = 0, disk.capacity
    for _ in range(MAX_QUERIES):
        if offset >= capacity:
            return merge(extents)
        info = mgr.QueryChangedDiskAreas(id=vim.vslm.ID(id=disk.id), datastore=disk.datastore,
                                         snapshotId=vim.vslm.ID(id=snap.id), startOffset=offset,
                                         changeId=change_id)
        extents = collect(extents, check_answer(info, offset, capacity, disk.name), disk.name)
        offset = int(info.startOffset) + int(info.length)
    raise ChangeTrackingFailed(f"QueryChangedDiskAreas for {disk.name}: too many pages")


def plan(si: Any, disk: FirstClassDisk, snap: DiskSnapshot, previous: dict[str, Any] | None) -> ReadPlan:
    def full(reason: str) -> ReadPlan:
        if snap.change_id:
            try:
                return ReadPlan(changed_areas(si, disk, snap, "*"), False, reason)
            except vmodl.MethodFault as e:
                return ReadPlan(None, False, f"{reason}; allocated areas from VDDK ({fault_text(e)})")
            except ChangedAreasRefused as e:
                return ReadPlan(None, False, f"{reason}; allocated areas from VDDK (refused: {e})")
        return ReadPlan(None, False, f"{reason}; changed-block tracking gave no change id")

    if previous is None:
        return full("first backup of this disk")
    if previous.get("capacity_bytes") not in (None, disk.capacity):
        return full(f"capacity changed from {previous['capacity_bytes']} to {disk.capacity} bytes: read in full")
    prev_id = previous.get("change_id")
    if not prev_id or not snap.change_id:
        return full("no change id to compare with: read in full")
    try:
        return ReadPlan(changed_areas(si, disk, snap, prev_id), True, f"changed since {prev_id}",
                        base_change_id=prev_id)
    except vmodl.MethodFault as e:
        return full(f"change id {prev_id} unusable ({fault_text(e)}): read in full")
    except ChangedAreasRefused as e:
        return full(f"changed areas since {prev_id} refused ({e}): read in full")


def capture(session: Any, disk: FirstClassDisk, snap: DiskSnapshot) -> dict[str, Any]:
    cfg = disk.obj.config
    backing = cfg.backing
    about = session.si.content.about
    record = {
        "label": LABEL, "id": disk.id, "name": disk.name, "capacity_bytes": disk.capacity,
        "datastore": disk.datastore_name, "datastore_moref": disk.datastore._moId,
        "file": backing.filePath, "provisioning": getattr(backing, "provisioningType", None),
        "change_id": snap.change_id, "uuid": disk.id, "backup_possible": True,
        "consumers": [c.id for c in cfg.consumerId or []] if getattr(cfg, "consumerId", None) else [],
        "storage_profiles": [],
    }
    warnings: list[str] = []
    try:
        # PBM knows a first-class disk by its id (object type virtualDiskUUID).
        record["storage_profiles"] = storage_profiles(session, [(LABEL, "virtualDiskUUID", disk.id)])[LABEL]
    except CertificateError:
        raise  # a man in the middle is not a missing endpoint: stop
    except Exception as e:  # an endpoint that is absent or refuses: record, go on
        warnings.append(f"storage profile not read: {type(e).__name__}: {getattr(e, 'msg', e)}")
    return {
        "schema": SCHEMA, "kind": "ivd",
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"server": session.host, "port": session.port, "api_type": about.apiType,
                   "api_version": about.apiVersion, "instance_uuid": about.instanceUuid},
        "ivd": {"id": disk.id, "name": disk.name, "datastore": disk.datastore_name,
                "change_tracking": bool(cfg.changedBlockTrackingEnabled)},
        "object": to_json(disk.obj),
        "disks": [record],
        "snapshot": {"id": snap.id, "name": snap.name, "path": snap.path},
        "files": {},
        "warnings": warnings,
    }


def read_disk(session: Any, disk: FirstClassDisk, snap: DiskSnapshot, doc: dict[str, Any],
              read_plan: ReadPlan, *, provider: Any, transports: str, chunk_size: int | None,
              ingest: Callable[[list[Any]], Any] | None, make_source: Callable[..., Any]) -> Any:
    """Connect VDDK to the disk's snapshot and hand the source to ``ingest`` (None: only open)."""
    params = vddk.ConnectParams(server=session.host, port=session.port, thumbprint=session.thumbprint,
                                user=session.user, cookie=session.cookie, fcd_id=disk.id,
                                fcd_datastore=disk.datastore._moId, fcd_snapshot=snap.id)
    lib = provider.get()
    with lib.prepared(params, "repofs-backup"), \
            lib.connect(params, read_only=True, transports=transports) as conn:
        handle = conn.open(disk.path, read_only=True,
                           unbuffered=all(m in ("nbd", "nbdssl") for m in transports.lower().split(":") if m))
        source = None
        try:
            info = dict(doc["disks"][0])
            info.update(type="vsphere-ivd", server=session.host, transport=handle.transport_mode,
                        adapter=handle.info.adapter_type, vddk_capacity=int(handle.capacity),
                        read={"mode": read_plan.mode, "reason": read_plan.reason,
                              "base_change_id": read_plan.base_change_id,
                              "planned_bytes": read_plan.bytes})
            source = make_source(handle, LABEL, read_plan, info, chunk_size=chunk_size if ingest else None)
            return ingest([source]) if ingest else source.info["read"]
        finally:
            if source is not None:
                source.stop_read_ahead()
            handle.close()
