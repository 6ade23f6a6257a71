"""The backup of one VM, in order: CBT on, snapshot, metadata, disks through VDDK, snapshot gone.

Role: ``backup_vm`` runs the steps for one VM found in a session and hands the disk sources
and the metadata to ``ingest`` — a callable that the CLI provides (it writes the generation;
restore/ does not know the repository). ``previous`` tells, per disk label, what the
repository recorded for the disk at the previous generation (its manifest entry's ``source``:
change id, capacity, uuid). Whatever happens after the snapshot exists — a vCenter fault, a
VDDK fault, Ctrl-C — the disks are closed, VDDK is disconnected, access is ended, and the
snapshot is removed, in that order.

A template is read without a snapshot: vCenter refuses to snapshot one (it is never powered
on, its disks do not change while it is a template), and it cannot track changes. VDDK opens
the template's own disks read-only, every allocated block is read, and the reason
(``TEMPLATE_READ``) is said in the output, in each disk's ``source.read.reason`` and in the
metadata (``change_tracking``, ``warnings``; ``snapshot`` is null).

VixDiskLib comes from a ``vddkprovider.VddkProvider``: loaded on first use (a dry run of a VM
whose changed areas vCenter can tell never needs it), exited once, at the end of the command.

Limits: one VM at a time; the disks of a VM are read concurrently only as far as the
read-ahead of each source goes (the ingest takes them in turn).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pyVmomi import vim

from . import changed, firstclass, metadata as meta
from .vddkdisk import VSphereDiskSource, clip
from restore.vsphere.session import Session
from restore.vsphere import changetrust as trust
from .keepalive import cleanup_vddk, keepalive
from .snapshot import (
    SNAPSHOT_PREFIX, backup_snapshot, enable_change_tracking, remove_orphans, reset_change_tracking,
)
from restore.vsphere.errors import ChangeTrackingFailed
from restore.vsphere.options import DEFAULT_TRANSPORTS
from restore.vsphere.tasks import properties
from restore.vsphere.vddkprovider import VddkProvider, connect_params

IDENTITY = "repofs-backup"
TEMPLATE_READ = ("a template: vCenter neither snapshots one nor tracks its changes, and its disks "
                 "do not change while it is one; its own disks are read without a snapshot, every "
                 "allocated block")

Ingest = Callable[[str, list[VSphereDiskSource], dict[str, Any]], Any]
Previous = Callable[[str], dict[str, dict[str, Any]]]


@dataclass
class DiskPlan:
    label: str
    file: str
    capacity: int
    mode: str
    reason: str
    planned_bytes: int | None


@dataclass
class VMBackup:
    """What happened to one VM."""
    vm: str
    moref: str
    snapshot: str | None = None
    change_tracking_enabled_now: bool = False
    disks: list[DiskPlan] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Any = None          # what ingest returned (None on a dry run)
    dry_run: bool = False


def nbd_only(transports: str) -> bool:
    """Unbuffered opens are much faster over NBD (ESXi 7.0U2 and later), and only NBD is asked."""
    modes = [m for m in transports.lower().split(":") if m]
    return bool(modes) and all(m in ("nbd", "nbdssl") for m in modes)




@dataclass
class TemplateDisks:
    """What a backup of a template reads from instead of a snapshot: the template itself."""
    moref: None = None
    name: None = None
    obj: None = None
    quiesced: bool = False
    notes: list[str] = field(default_factory=list)
    consolidation: None = None


def backup_vm(session: Session, vm: vim.VirtualMachine, *, provider: VddkProvider,
              ingest: Ingest | None, previous: Previous, transports: str = DEFAULT_TRANSPORTS,
              quiesce: bool = False, dry_run: bool = False, chunk_size: int | None = None,
              tags: Any = None, on_event: Callable[[str], None] | None = None) -> VMBackup:
    si = session.si
    props = properties(si, vm, ["name", "config.changeTrackingEnabled", "config.template"])
    name = props.get("name", vm._moId)
    result = VMBackup(vm=name, moref=vm._moId, dry_run=dry_run)
    say = on_event or (lambda text: None)

    def note(text: str) -> None:
        result.notes.append(text)
        say(f"{name}: {text}")

    if props.get("config.template"):
        return _backup_template(session, vm, result, note, provider=provider, ingest=ingest,
                                previous=previous, transports=transports, dry_run=dry_run,
                                chunk_size=chunk_size, tags=tags, on_event=say)
    if not dry_run:
        # Ours, left by a killed run: removed before they grow further (see snapshot.py).
        for text in remove_orphans(si, vm):
            note(text)
    before = previous(name)
    state = trust.vm_state(si, vm, SNAPSHOT_PREFIX)
    tracking = bool(props.get("config.changeTrackingEnabled"))
    record: dict[str, Any] = {"trusted": True, "why": None}
    distrust: str | None = None
    if not tracking:
        if dry_run:
            result.notes.append("changed-block tracking is off; a backup would turn it on")
        else:
            try:
                result.change_tracking_enabled_now = enable_change_tracking(si, vm)
            except ChangeTrackingFailed as e:
                # Hardware version, template, multi-writer disks: read what is allocated.
                note(f"{e}; reading the allocated blocks of every disk instead")
                record = {"trusted": False, "why": f"changed-block tracking unavailable: {e}"}
            else:
                tracking = True
                note("changed-block tracking was off: turned on")
                if state["snapshots"]:
                    record = {"trusted": False, "why": trust.KB_1020128}
                    note(trust.KB_1020128)
    elif any(trust.tracking_needs_reset(p) for p in before.values()):
        if state["snapshots"] or dry_run:
            record = {"trusted": False, "why": trust.KB_1020128}
            distrust = trust.KB_1020128
            if not dry_run:
                note(f"{trust.KB_1020128}; the VM still has snapshots: read in full again")
        else:
            reset_change_tracking(si, vm)
            distrust = "changed-block tracking was reset now that the VM has no snapshots (KB 1020128)"
            note(distrust)
    if distrust is None and tracking and before:
        distrust = trust.distrust(si, vm, next(iter(before.values())), state)
        if distrust:
            note(f"changed blocks not trusted: {distrust}")
    state["taken_at"] = si.CurrentTime().isoformat()
    with backup_snapshot(si, vm, quiesce=quiesce, on_event=say) as snap:
        result.snapshot = snap.name
        result.notes.extend(snap.notes)
        doc = meta.capture(session, vm, snap.obj, tags=tags)
        doc["snapshot"] = {"moref": snap.moref, "name": snap.name, "quiesced": snap.quiesced,
                           "notes": list(snap.notes)}
        doc["change_tracking"] = {**record, "distrust": distrust}
        doc["vm_state"] = state  # what the next backup and an in-place restore compare with
        meta.check_serialisable(doc)
        wanted = _disks_to_read(doc, result, note)
        if not wanted:
            result.notes.append("the VM has no disks to back up: the generation holds its metadata only")
        facts = {"vm_state": state, "tracking": record, "distrust": distrust}
        if dry_run and all(_plan_needs_no_vddk(d, tracking) for d in wanted):
            for d in wanted:
                plan = changed.plan_disk(vm, snap.obj, d, before.get(d["label"]), tracking=tracking,
                                         distrust=distrust)
                result.disks.append(_describe_plan(d, plan, d["capacity_bytes"]))
            return result
        if not wanted:
            result.report = None if dry_run else ingest(name, [], doc)  # type: ignore[misc]
            return result
        result.report = _read_disks(session, vm, snap, doc, wanted, before, result, provider=provider,
                                    ingest=None if dry_run else ingest, transports=transports,
                                    tracking=tracking, chunk_size=chunk_size, facts=facts,
                                    on_event=say)
    if snap.consolidation:
        note(snap.consolidation)
    return result


def _backup_template(session: Session, vm: vim.VirtualMachine, result: VMBackup,
                     note: Callable[[str], None], *, provider: VddkProvider, ingest: Ingest | None,
                     previous: Previous, transports: str, dry_run: bool, chunk_size: int | None,
                     tags: Any, on_event: Callable[[str], None]) -> VMBackup:
    """A template: no snapshot, no change tracking, every allocated block of its own disks."""
    si = session.si
    note(TEMPLATE_READ)
    before = previous(result.vm)
    state = trust.vm_state(si, vm, SNAPSHOT_PREFIX)
    state["taken_at"] = si.CurrentTime().isoformat()
    record: dict[str, Any] = {"trusted": False, "why": TEMPLATE_READ}
    doc = meta.capture(session, vm, None, tags=tags)
    doc["snapshot"] = None
    doc["change_tracking"] = {**record, "distrust": TEMPLATE_READ}
    doc["vm_state"] = state
    doc["warnings"].append(f"read without a snapshot: {TEMPLATE_READ}")
    meta.check_serialisable(doc)
    wanted = _disks_to_read(doc, result, note)
    if not wanted:
        result.notes.append("the VM has no disks to back up: the generation holds its metadata only")
        result.report = None if dry_run else ingest(result.vm, [], doc)  # type: ignore[misc]
        return result
    facts = {"vm_state": state, "tracking": record, "distrust": TEMPLATE_READ,
             "plan": changed.ReadPlan(None, False, TEMPLATE_READ)}
    result.report = _read_disks(session, vm, TemplateDisks(), doc, wanted, before, result,
                                provider=provider, ingest=None if dry_run else ingest,
                                transports=transports, tracking=False, chunk_size=chunk_size,
                                facts=facts, on_event=on_event)
    return result


def _disks_to_read(doc: dict[str, Any], result: VMBackup,
                   note: Callable[[str], None]) -> list[dict[str, Any]]:
    """The disks of ``doc`` that can be read; the others skipped, with the reason, in the
    result and the metadata's warnings, and multi-writer disks warned about."""
    wanted = []
    for d in doc["disks"]:
        if d["backup_possible"]:
            wanted.append(d)
        else:
            result.skipped.append(f"{d['label']} ({d['file']}): {d['skip_reason']}")
            doc["warnings"].append(f"disk {d['label']} not backed up: {d['skip_reason']}")
        if d.get("sharing") == "sharingMultiWriter":
            doc["warnings"].append(f"disk {d['label']} is a multi-writer disk: other VMs may "
                                   "write it while it is read")
            note(doc["warnings"][-1])
    return wanted


def _plan_needs_no_vddk(disk: dict[str, Any], tracking: bool) -> bool:
    return tracking and bool(disk.get("change_id"))


def _describe_plan(d: dict[str, Any], plan: changed.ReadPlan, capacity: int) -> DiskPlan:
    return DiskPlan(d["label"], d["file"], capacity, plan.mode, plan.reason, plan.bytes)


def _read_disks(session: Session, vm: vim.VirtualMachine, snap: Any, doc: dict[str, Any],
                wanted: list[dict[str, Any]], before: dict[str, dict[str, Any]], result: VMBackup,
                *, provider: VddkProvider, ingest: Ingest | None, transports: str, tracking: bool,
                chunk_size: int | None, facts: dict[str, Any],
                on_event: Callable[[str], None] | None = None) -> Any:
    lib = provider.get()
    params = connect_params(session, vm._moId)
    sources: list[VSphereDiskSource] = []
    opened: list[Any] = []
    cleaned = cleanup_vddk(lib, params)
    if cleaned:
        result.notes.append(cleaned)
    with keepalive(session), lib.prepared(params, IDENTITY), \
            lib.connect(params, read_only=True, snapshot_moref=snap.moref, transports=transports) as conn:
        try:
            for d in wanted:
                disk = conn.open(d["file"], read_only=True, unbuffered=nbd_only(transports))
                opened.append(disk)
                if not d.get("uuid") and getattr(disk.info, "uuid", None):
                    d["uuid"] = disk.info.uuid  # the disk's ddb.uuid, where vCenter shows none
                plan = facts.get("plan") or changed.plan_disk(
                    vm, snap.obj, d, before.get(d["label"]), tracking=tracking, distrust=facts["distrust"])
                info = dict(d)
                info.update(vm_state=facts["vm_state"], tracking=facts["tracking"])
                info.update(
                    type="vsphere", server=session.host, vm=result.vm, vm_moref=vm._moId,
                    snapshot=snap.moref, transport=disk.transport_mode,
                    adapter=disk.info.adapter_type, vddk_capacity=int(disk.capacity),
                    read={"mode": plan.mode, "reason": plan.reason,
                          "base_change_id": plan.base_change_id, "planned_bytes": plan.bytes})
                if ingest is None:  # dry run: the plan, without read-ahead
                    extents = plan.extents if plan.extents is not None else disk.allocated_extents()
                    planned = sum(n for _, n in clip(extents, int(disk.capacity)))
                    result.disks.append(DiskPlan(d["label"], d["file"], d["capacity_bytes"],
                                                 plan.mode, plan.reason, planned))
                    continue
                source = VSphereDiskSource(disk, d["label"], plan, info, chunk_size=chunk_size,
                                           on_event=on_event)
                sources.append(source)
                result.disks.append(DiskPlan(d["label"], d["file"], d["capacity_bytes"], plan.mode,
                                             plan.reason, info["read"]["planned_bytes"]))
            if ingest is None:
                return None
            return ingest(result.vm, list(sources), doc)
        finally:
            for s in sources:
                s.stop_read_ahead()
            for disk in opened:
                try:
                    disk.close()
                except Exception:  # the connection's exit closes what is left and reports
                    pass


def backup_ivd(session: Session, spec: str, *, provider: VddkProvider, ingest: Ingest | None,
               previous: Previous, transports: str = DEFAULT_TRANSPORTS, dry_run: bool = False,
               chunk_size: int | None = None, on_event: Callable[[str], None] | None = None) -> VMBackup:
    """``ivd:NAME``: a first-class disk, stored as ``ivd-<NAME>`` with one disk ``disk``."""
    si = session.si
    disk = firstclass.find(si, spec)
    name = disk.repository_name
    result = VMBackup(vm=name, moref=disk.id, dry_run=dry_run)
    if not disk.obj.config.changedBlockTrackingEnabled:
        if dry_run:
            result.notes.append("changed-block tracking is off; a backup would turn it on")
        else:
            result.change_tracking_enabled_now = firstclass.enable_change_tracking(si, disk)
            result.notes.append("changed-block tracking was off: turned on")
    with firstclass.snapshot(si, disk) as snap:
        result.snapshot = snap.id
        doc = firstclass.capture(session, disk, snap)
        meta.check_serialisable(doc)
        plan = firstclass.plan(si, disk, snap, previous(name).get(firstclass.LABEL))
        if dry_run and plan.extents is not None:
            result.disks.append(DiskPlan(firstclass.LABEL, disk.path, disk.capacity, plan.mode, plan.reason,
                                         plan.bytes))
            return result
        read = firstclass.read_disk(
            session, disk, snap, doc, plan, provider=provider, transports=transports, chunk_size=chunk_size,
            ingest=None if dry_run else (lambda sources: ingest(name, sources, doc)),  # type: ignore[misc]
            make_source=VSphereDiskSource)
        if dry_run:
            result.disks.append(DiskPlan(firstclass.LABEL, disk.path, disk.capacity, plan.mode, plan.reason,
                                         read["planned_bytes"]))
        else:
            result.report = read
            result.disks.append(DiskPlan(firstclass.LABEL, disk.path, disk.capacity, plan.mode, plan.reason,
                                         plan.bytes))
    return result
