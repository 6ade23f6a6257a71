"""The metadata of a backup generation: everything a restore needs to rebuild the VM.

Role: ``capture(session, vm, snapshot)`` builds the typed document (``vmmeta.VMMetadata``,
schema ``SCHEMA``, documented in docs/vsphere.md) and returns its JSON form. The configuration is the snapshot's own
(``snapshot.config``), so that devices, disk files and change ids are those of the disks that
are read; the VM's placement (datacenter, folders, resource pool or vApp, host), networks per
NIC, storage profiles, custom attributes, tags, and the ``.vmx`` and ``.nvram`` files are read
at capture time. Anything that cannot be read is recorded under ``warnings`` with the reason,
never silently left out; only the configuration itself is required (``MetadataError``).

Disk labels (the names of the disks in the repository) are ``<bus><n>-<unit>``, e.g.
``scsi0-0``: stable across generations while the disk stays in its slot, whatever its file is
called; ``uuid`` tells a replaced disk from the same one.

Limits: tags need the vAPI endpoint and the password (a session cookie does not log in
there); storage profiles need the PBM endpoint. Both are best effort.
"""
from __future__ import annotations

import base64
import http.client
import json
import posixpath
import time
import urllib.parse
from typing import Any

from pyVmomi import pbm, vim, vmodl

from restore.vsphere.errors import CertificateError, MetadataError
from restore.vsphere.inventory import inventory_path, name_and_parent
from restore.vsphere.session import Session
from restore.vsphere.tasks import properties
from restore.vsphere.vmmeta import (SCHEMA, DiskMeta, Files, NicMeta, Placement, VAppEntity, VAppMeta,
                                    VMIdentity, VMMetadata, disk_label, parse_datastore_path, vim_name)
from restore.vsphere.vmodl_json import to_json

MAX_DISK_BYTES = 64 << 40  # 64 TiB: above the largest virtual disk vSphere makes (62 TB)


def provisioning(backing: Any) -> str:
    if getattr(backing, "thinProvisioned", False):
        return "thin"
    if getattr(backing, "eagerlyScrub", False):
        return "thick-eager-zeroed"
    return "thick-lazy-zeroed"


def describe_disk(disk: vim.vm.device.VirtualDisk, controller: Any, datastores: dict[str, str]) -> DiskMeta:
    """The restore-relevant facts of one virtual disk (as of the snapshot)."""
    backing = disk.backing
    file_name = getattr(backing, "fileName", None) or ""
    datastore = getattr(backing, "datastore", None)
    ds_moref = datastore._moId if datastore is not None else None
    try:
        ds_name, rel = parse_datastore_path(file_name)
    except ValueError:
        ds_name, rel = datastores.get(ds_moref or "", ""), file_name
    capacity = int(disk.capacityInBytes or (disk.capacityInKB or 0) * 1024)
    # The server's word for the size: a disk of no size, or larger than a virtual disk can be,
    # is not read (its index would be sized by it).
    impossible = not 0 < capacity <= MAX_DISK_BYTES
    independent = str(getattr(backing, "diskMode", "")).startswith("independent")
    rdm_physical = (isinstance(backing, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo)
                    and backing.compatibilityMode == "physicalMode")
    return DiskMeta.make(
        label=disk_label(controller, disk.unitNumber),
        key=disk.key,
        device_label=disk.deviceInfo.label if disk.deviceInfo else None,
        uuid=getattr(backing, "uuid", None),
        capacity_bytes=capacity,
        mode=getattr(backing, "diskMode", None),
        provisioning=provisioning(backing),
        sharing=getattr(backing, "sharing", None),
        write_through=getattr(backing, "writeThrough", None),
        backing_type=vim_name(backing),
        controller={
            "key": disk.controllerKey,
            "type": vim_name(controller) if controller is not None else None,
            "bus": getattr(controller, "busNumber", None),
        },
        unit=disk.unitNumber,
        datastore=ds_name,
        datastore_moref=ds_moref,
        file=file_name,
        directory=posixpath.dirname(rel),
        change_id=getattr(backing, "changeId", None) or None,
        content_id=getattr(backing, "contentId", None),
        storage_io=to_json(disk.storageIOAllocation),
        backup_possible=not independent and not rdm_physical and not impossible,
        skip_reason=("independent disks are not in snapshots" if independent else
                     "physical-mode RDMs cannot be snapshotted" if rdm_physical else
                     f"vCenter reports an impossible capacity of {capacity} bytes"
                     if impossible else None),
        storage_profiles=[],
        encryption=encryption_of(getattr(backing, "keyId", None)),
    )


def encryption_of(key_id: Any) -> dict[str, Any] | None:
    """A ``CryptoKeyId`` as the metadata records it: the key's id and its key provider (both
    identifiers at the key server, not key material), or None when not encrypted."""
    if key_id is None or not getattr(key_id, "keyId", None):
        return None
    provider = getattr(key_id, "providerId", None)
    return {"key_id": key_id.keyId, "provider": getattr(provider, "id", None)}


def describe_nic(nic: vim.vm.device.VirtualEthernetCard, names: dict[str, Any]) -> NicMeta:
    backing = nic.backing
    out: dict[str, Any] = {
        "key": nic.key,
        "label": nic.deviceInfo.label if nic.deviceInfo else None,
        "adapter": vim_name(nic),
        "mac_address": nic.macAddress,
        "address_type": nic.addressType,
        "wake_on_lan": nic.wakeOnLanEnabled,
        "start_connected": nic.connectable.startConnected if nic.connectable else None,
        "connected": nic.connectable.connected if nic.connectable else None,
        "controller_key": nic.controllerKey,
        "unit": nic.unitNumber,
    }
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        port = backing.port
        pg = names.get("portgroups", {}).get(port.portgroupKey, {})
        out.update(kind="distributed", switch_uuid=port.switchUuid, portgroup_key=port.portgroupKey,
                   port_key=port.portKey, network=pg.get("name"), switch=pg.get("switch"))
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        out.update(kind="opaque", opaque_network_id=backing.opaqueNetworkId,
                   opaque_network_type=backing.opaqueNetworkType)
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        out.update(kind="standard", network=backing.deviceName,
                   network_moref=backing.network._moId if backing.network is not None else None)
    else:
        out.update(kind=vim_name(backing) if backing is not None else "none")
    return NicMeta.make(**out)


def _datacenter_of(si: Any, entity: Any, cache: dict[str, dict[str, Any]]) -> Any:
    obj = entity
    while obj is not None:
        if isinstance(obj, vim.Datacenter):
            return obj
        obj = name_and_parent(si, obj, cache).get("parent")
    return None


def _portgroups(si: Any, dc: Any) -> dict[str, dict[str, str | None]]:
    """Distributed port group key -> name and switch name, in this datacenter."""
    content = si.content
    view = content.viewManager.CreateContainerView(dc or content.rootFolder,
                                                   [vim.dvs.DistributedVirtualPortgroup], True)
    try:
        out = {}
        for pg in view.view:
            p = properties(si, pg, ["key", "name", "config.distributedVirtualSwitch"])
            switch = p.get("config.distributedVirtualSwitch")
            out[p.get("key", pg._moId)] = {
                "name": p.get("name"),
                "switch": properties(si, switch, ["name"]).get("name") if switch is not None else None,
            }
        return out
    finally:
        view.Destroy()


def _download(session: Session, datastore_path: str, dc_name: str) -> bytes:
    ds, rel = parse_datastore_path(datastore_path)
    query = urllib.parse.urlencode({"dcPath": dc_name, "dsName": ds})
    return session.http_get(f"/folder/{urllib.parse.quote(rel)}?{query}")


def _storage_profiles(session: Session, vm: Any, disk_keys: list[int]) -> dict[str, list[dict[str, str]]]:
    """PBM profiles of the VM (key "vm") and of each disk (key str(device key))."""
    refs = [("vm", "virtualMachine", vm._moId)]
    refs += [(str(k), "virtualDiskId", f"{vm._moId}:{k}") for k in disk_keys]
    return storage_profiles(session, refs)


def storage_profiles(session: Session, refs: list[tuple[str, str, str]]) -> dict[str, list[dict[str, str]]]:
    """PBM profiles of each object given as (name, PBM object type, key), by name: a VM home
    (``virtualMachine``, its moref), a VM's disk (``virtualDiskId``, ``vm-42:2000``), a
    first-class disk (``virtualDiskUUID``, its id)."""
    # vCenter serves PBM at /pbm/sdk, the govmomi simulator at /pbm: try both.
    for path in ("/pbm/sdk", "/pbm"):
        try:
            with session.soap_stub(path, "pbm.version.version11") as stub:
                return _query_profiles(pbm.ServiceInstance("ServiceInstance", stub), session, refs)
        except http.client.HTTPException as e:
            if "404" not in str(e):
                raise
    raise MetadataError("no storage policy (PBM) endpoint")


def _query_profiles(si: Any, session: Session, refs: list[tuple[str, str, str]]) -> dict[str, list[dict[str, str]]]:
    content = si.RetrieveContent()
    about = session.si.content.about
    mgr = content.profileManager
    out: dict[str, list[dict[str, str]]] = {}
    for name, kind, key in refs:
        ref = pbm.ServerObjectRef(key=key, objectType=kind, serverUuid=about.instanceUuid)
        ids = mgr.PbmQueryAssociatedProfile(ref) or []
        profiles = mgr.PbmRetrieveContent(ids) if ids else []
        out[name] = [{"id": p.profileId.uniqueId, "name": p.name} for p in profiles]
    return out


def _custom_attributes(si: Any, vm: Any) -> dict[str, Any]:
    values = properties(si, vm, ["customValue"]).get("customValue") or []
    mgr = si.content.customFieldsManager
    fields = {f.key: f.name for f in (properties(si, mgr, ["field"]).get("field") or [])} if mgr else {}
    return {fields.get(v.key, str(v.key)): getattr(v, "value", None) for v in values}


def capture(session: Session, vm: vim.VirtualMachine, snapshot: Any | None,
            *, tags: Any = None) -> dict[str, Any]:
    """The generation's metadata document (see the module docstring and docs/vsphere.md).

    ``tags`` is a callable ``(vm_moref) -> list`` (``restore.tags.reader``) or None.
    """
    si = session.si
    warnings: list[str] = []
    vm_props = properties(si, vm, [
        "name", "config", "runtime.host", "runtime.powerState", "resourcePool", "parent",
        "parentVApp", "datastore", "layoutEx.file", "summary.config.vmPathName"])
    config = vm_props.get("config")
    if snapshot is not None:
        snap_config = properties(si, snapshot, ["config"]).get("config")
        config = snap_config or config
    if config is None:
        raise MetadataError(f"cannot read the configuration of {vm_props.get('name', vm._moId)}")
    name = vm_props.get("name", config.name)

    # Placement. Paths share ancestors: one round trip per inventory object.
    seen: dict[str, dict[str, Any]] = {}
    dc = _datacenter_of(si, vm, seen)
    dc_name = name_and_parent(si, dc, seen).get("name") if dc is not None else None
    ds_names = {d._moId: properties(si, d, ["name"]).get("name", d._moId) for d in vm_props.get("datastore") or []}
    parent = vm_props.get("parent")
    pool = vm_props.get("resourcePool")
    vapp = vm_props.get("parentVApp") or (pool if isinstance(pool, vim.VirtualApp) else None)
    host = vm_props.get("runtime.host")
    host_props = properties(si, host, ["name", "parent"]) if host is not None else {}
    compute = host_props.get("parent")
    place: dict[str, Any] = dict(
        datacenter=dc_name,
        datacenter_moref=dc._moId if dc is not None else None,
        folder_path=inventory_path(si, parent, seen) if parent is not None else None,
        folder_moref=parent._moId if parent is not None else None,
        resource_pool_path=inventory_path(si, pool, seen) if pool is not None else None,
        resource_pool_moref=pool._moId if pool is not None else None,
        host=host_props.get("name"),
        host_moref=host._moId if host is not None else None,
        compute_resource=properties(si, compute, ["name"]).get("name") if compute is not None else None,
        compute_resource_moref=compute._moId if compute is not None else None,
        datastores=sorted(ds_names.values()),
    )
    if dc is not None and parent is not None:
        dc_path = inventory_path(si, dc, seen)
        vm_root = dc_path + "/vm"
        fp = place["folder_path"] or ""
        place["folder_relative"] = fp[len(vm_root):].lstrip("/") if fp.startswith(vm_root) else fp
    placement = Placement.make(**place)

    # vApp membership.
    vapp_doc = None
    if vapp is not None:
        vp = properties(si, vapp, ["name", "vAppConfig", "config"])
        entity = None
        for e in (getattr(vp.get("vAppConfig"), "entityConfig", None) or []):
            if e.key is not None and e.key._moId == vm._moId:
                # the start-up settings: order, delays, actions, waiting for the guest, and
                # whether the VM goes with its vApp; checked as the restore will read them
                entity = VAppEntity.from_json(to_json(e), "vapp.entity")
        vapp_doc = VAppMeta.make(name=vp.get("name"), moref=vapp._moId, path=inventory_path(si, vapp, seen),
                                 vapp_config=to_json(vp.get("vAppConfig")),
                                 resource_config=to_json(vp.get("config")), entity=entity)

    # Devices, disks, NICs.
    devices = list(config.hardware.device or [])
    by_key = {d.key: d for d in devices}
    disks, controllers, nics = [], [], []
    for d in devices:
        if isinstance(d, vim.vm.device.VirtualController):
            controllers.append({"key": d.key, "type": vim_name(d), "bus": d.busNumber,
                                "label": d.deviceInfo.label if d.deviceInfo else None,
                                "sharing": getattr(d, "sharedBus", None), "devices": list(d.device or [])})
        elif isinstance(d, vim.vm.device.VirtualDisk):
            disks.append(describe_disk(d, by_key.get(d.controllerKey), ds_names))
    try:
        pgs = _portgroups(si, dc) if any(
            isinstance(getattr(d, "backing", None),
                       vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
            for d in devices) else {}
    except vmodl.MethodFault as e:
        pgs = {}
        warnings.append(f"distributed port groups not read: {e.msg}")  # type: ignore[attr-defined]  # (stub lacks msg)
    for d in devices:
        if isinstance(d, vim.vm.device.VirtualEthernetCard):
            nics.append(describe_nic(d, {"portgroups": pgs}))

    # Storage profiles (PBM), best effort.
    try:
        profiles = _storage_profiles(session, vm, [d.key for d in disks if d.key is not None])
        for disk in disks:
            disk.storage_profiles = profiles.get(str(disk.key), [])
        vm_profiles = profiles.get("vm", [])
    except CertificateError:
        raise  # a man in the middle is not a missing endpoint: stop
    except Exception as e:  # an endpoint that is absent or refuses: record, go on
        vm_profiles = []
        warnings.append(f"storage profiles not read: {type(e).__name__}: {getattr(e, 'msg', e)}")

    # Files.
    files: dict[str, Any] = {}
    vmx_path = config.files.vmPathName if config.files else vm_props.get("summary.config.vmPathName")
    nvram_candidates = []
    if vmx_path and vmx_path.endswith(".vmx"):
        nvram_candidates.append(vmx_path[:-4] + ".nvram")  # beside the .vmx, where it usually is
    nvram_candidates += [f.name for f in vm_props.get("layoutEx.file") or []
                         if f.type == "nvram" and f.name not in nvram_candidates]
    files["vmx_path"] = vmx_path
    files["nvram_path"] = None
    if dc_name and vmx_path:
        try:
            files["vmx"] = _download(session, vmx_path, dc_name).decode("utf-8", "replace")
        except CertificateError:
            raise
        except Exception as e:
            warnings.append(f".vmx not downloaded from {vmx_path}: {e}")
    failures = []
    for candidate in nvram_candidates:
        if not dc_name:                 # files are downloaded from a datacenter
            break
        try:
            files["nvram_b64"] = base64.b64encode(_download(session, candidate, dc_name)).decode()
            files["nvram_path"] = candidate
            break
        except CertificateError:
            raise
        except Exception as e:
            failures.append(f"{candidate}: {e}")
    if failures and files["nvram_path"] is None:
        warnings.append(f".nvram not downloaded: {'; '.join(failures)}")
    files["layout"] = [{"name": f.name, "type": f.type, "size": f.size}
                       for f in vm_props.get("layoutEx.file") or []]

    # Custom attributes and tags.
    try:
        custom = _custom_attributes(si, vm)
    except vmodl.MethodFault as e:
        custom = {}
        warnings.append(f"custom attributes not read: {e.msg}")  # type: ignore[attr-defined]  # (stub lacks msg)
    tag_list: list[dict[str, Any]] | None = None
    if tags is not None:
        try:
            tag_list = tags(vm._moId)
        except CertificateError:
            raise
        except Exception as e:
            warnings.append(f"tags not read: {e}")
    else:
        warnings.append("tags not read: no vAPI login (give the password, not only a session)")

    boot = config.bootOptions
    summary = {
        "name": config.name, "guestId": config.guestId, "guestFullName": config.guestFullName,
        "version": config.version, "numCPU": config.hardware.numCPU,
        "numCoresPerSocket": config.hardware.numCoresPerSocket, "memoryMB": config.hardware.memoryMB,
        "firmware": config.firmware, "uuid": config.uuid, "instanceUuid": config.instanceUuid,
        "annotation": config.annotation, "template": config.template,
        "changeTrackingEnabled": config.changeTrackingEnabled,
        "bootOptions": to_json(boot),
        "extraConfig": {o.key: o.value for o in config.extraConfig or []},
        "cpuAllocation": to_json(config.cpuAllocation),
        "memoryAllocation": to_json(config.memoryAllocation),
        "vAppConfig": to_json(config.vAppConfig),
    }
    about = si.content.about
    return VMMetadata.make(
        schema=SCHEMA,
        kind="vm",
        captured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        source={"server": session.host, "port": session.port, "api_type": about.apiType,
                "api_version": about.apiVersion, "product": about.fullName,
                "instance_uuid": about.instanceUuid},
        vm=VMIdentity.make(name=name, moref=vm._moId, uuid=config.uuid, instance_uuid=config.instanceUuid,
                           power_state=str(vm_props.get("runtime.powerState")), template=config.template,
                           encryption=encryption_of(config.keyId)),
        placement=placement,
        vapp=vapp_doc,
        config=summary,
        config_full=to_json(config),
        controllers=controllers,
        devices=[to_json(d) for d in devices],
        disks=disks,
        networks=nics,
        storage_profile=vm_profiles,
        custom_attributes=custom,
        tags=tag_list,
        files=Files.make(**files),
        snapshot=None,
        warnings=warnings,
    ).to_json()


def check_serialisable(doc: dict[str, Any]) -> None:
    """Raise MetadataError if ``doc`` does not survive JSON, or (a VM's) does not satisfy the
    schema the restore reads it with: a bug to catch before writing."""
    try:
        json.dumps(doc)
    except (TypeError, ValueError) as e:
        raise MetadataError(f"the captured metadata is not JSON: {e}") from None
    if doc.get("schema") == SCHEMA:
        VMMetadata.from_json(doc)


__all__ = ["SCHEMA", "capture", "check_serialisable", "describe_disk", "describe_nic",
           "disk_label", "parse_datastore_path", "provisioning", "storage_profiles"]
