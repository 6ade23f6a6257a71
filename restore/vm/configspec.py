"""The saved configuration of a VM -> the ``vim.vm.ConfigSpec`` that recreates it.

Role: ``create_spec(plan)`` gives the spec for ``Folder.CreateVM_Task``: hardware (CPUs, cores
per socket, memory, firmware, hardware version, boot options, resource allocations, extra
config) and the storage controllers. ``device_changes(plan, present)`` gives the reconfiguration
that places the disks (new files of the saved capacity and provisioning on the planned datastore,
with their storage profile) and maps the NICs (of the saved adapter type, on the mapped network),
plus any controller missing from ``present`` — the same for a created VM and for an import that
registered a bare one.
``reconnect_spec(plan, vm_config)`` is the last reconfiguration: NICs connected as saved and
disks put back in their saved mode, once the disks hold their data.

Identity: by default the VM gets new BIOS and instance UUIDs and generated MAC addresses (a
restored copy must not collide with the original); ``recover_identity`` keeps them.

NICs are created not connected at power-on and disks in persistent mode: the VM is not on the
network, and not in an independent mode that would refuse a snapshot, before its disks are
complete.

Limits: devices other than storage controllers, disks and NICs (CD-ROMs, floppies, serial and
parallel ports, USB, PCI passthrough) are not recreated by ``create``; the plan warns about
them. An import keeps whatever of them the .vmx describes.
"""
from __future__ import annotations

from typing import Any

from pyVmomi import vim

from restore.vsphere.vmmeta import CONTROLLER_BUS, VMMetadata, disk_label, vim_name
from .plan import DiskPlacement, NicPlacement, Plan
from restore.vsphere.vmodl_json import from_json

STORAGE_CONTROLLERS = (vim.vm.device.VirtualSCSIController, vim.vm.device.VirtualSATAController,
                       vim.vm.device.VirtualNVMEController)
# Keys vSphere gives the default devices of every new VM; the saved ones map onto them.
DEFAULT_KEYS = {"VirtualIDEController": (200, 201)}
# Extra config that belongs to the original VM or its host, not to its configuration.
VOLATILE_EXTRA = ("sched.swap.derivedName", "nvram", "migrate.", "vmotion.", "checkpoint.",
                  "vmware.tools.", "guestinfo.", "govcsim")
IGNORED_DEVICES = (vim.vm.device.VirtualController, vim.vm.device.VirtualDisk,
                   vim.vm.device.VirtualEthernetCard, vim.vm.device.VirtualKeyboard,
                   vim.vm.device.VirtualPointingDevice, vim.vm.device.VirtualVideoCard,
                   vim.vm.device.VirtualVMCIDevice)




def saved_devices(meta: VMMetadata) -> list[Any]:
    out = []
    for doc in meta.devices:
        try:
            out.append(from_json(doc))
        except Exception:  # a device type this pyVmomi does not know: not ours to recreate
            continue
    return out


def not_recreated(meta: VMMetadata) -> list[str]:
    """Labels of saved devices that ``create_spec`` leaves out."""
    out = []
    for d in saved_devices(meta):
        if isinstance(d, vim.vm.device.VirtualDevice) and not isinstance(d, IGNORED_DEVICES):
            out.append(d.deviceInfo.label if d.deviceInfo else vim_name(d))
    return out


def _bus(controller: Any) -> str | None:
    for cls, bus in CONTROLLER_BUS:
        if isinstance(controller, cls):
            return bus
    return None


def _extra_config(meta: VMMetadata) -> list[vim.option.OptionValue]:
    extra = meta.config.get("extraConfig") or {}
    return [vim.option.OptionValue(key=k, value=v) for k, v in sorted(extra.items())
            if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in VOLATILE_EXTRA)]


def hardware_spec(plan: Plan) -> vim.vm.ConfigSpec:
    """Everything of the spec but the devices."""
    meta = plan.metadata
    cfg = meta.config
    spec = vim.vm.ConfigSpec(
        name=plan.name, guestId=cfg.get("guestId"), numCPUs=cfg.get("numCPU"),
        numCoresPerSocket=cfg.get("numCoresPerSocket"), memoryMB=cfg.get("memoryMB"),
        firmware=cfg.get("firmware"), version=cfg.get("version"), annotation=cfg.get("annotation"),
        changeTrackingEnabled=bool(cfg.get("changeTrackingEnabled")),
        files=vim.vm.FileInfo(vmPathName=f"[{plan.datastore}]"),
        extraConfig=_extra_config(meta))
    for key in ("bootOptions", "cpuAllocation", "memoryAllocation"):
        if cfg.get(key):
            setattr(spec, key, from_json(cfg[key]))
    if plan.options.recover_identity:
        spec.uuid = meta.vm.uuid or cfg.get("uuid")
        spec.instanceUuid = meta.vm.instance_uuid or cfg.get("instanceUuid")
    if plan.vm_profile:
        spec.vmProfile = [vim.vm.DefinedProfileSpec(profileId=plan.vm_profile[0])]
    return spec


def create_spec(plan: Plan) -> vim.vm.ConfigSpec:
    """The VM with its hardware and storage controllers; disks and NICs come next
    (``device_changes``), the same way for a created and for an imported VM."""
    spec = hardware_spec(plan)
    spec.deviceChange = device_changes(plan, present={}, controllers_only=True)
    return spec


def device_changes(plan: Plan, present: dict[tuple[str, int], int], *,
                   controllers_only: bool = False, disk_files: dict[str, str] | None = None
                   ) -> list[vim.vm.device.VirtualDeviceSpec]:
    """Controllers (unless ``present``: (bus, number) -> key), disks, NICs, as "add" specs.
    ``disk_files``: label -> the new disk's file (``[ds] dir/name.vmdk``); else ``[ds]``."""
    changes: list[vim.vm.device.VirtualDeviceSpec] = []
    keys: dict[int, int] = {}      # saved controller key -> key in the spec
    next_key = -100
    for dev in saved_devices(plan.metadata):
        if not isinstance(dev, vim.vm.device.VirtualController):
            continue
        bus = _bus(dev)
        if bus is None:
            continue
        where = (bus, dev.busNumber)
        if where in present:
            keys[dev.key] = present[where]
            continue
        if not isinstance(dev, STORAGE_CONTROLLERS):
            defaults = DEFAULT_KEYS.get(vim_name(dev))
            if defaults and dev.busNumber < len(defaults):
                keys[dev.key] = defaults[dev.busNumber]
            continue
        old = dev.key
        dev.key = next_key
        dev.device = []
        dev.deviceInfo = None
        dev.slotInfo = None
        keys[old] = next_key
        next_key -= 1
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=dev))
    if controllers_only:
        return changes
    for d in plan.disks:
        file_name = (disk_files or {}).get(d.label) or f"[{d.datastore}]"
        changes.append(_disk_spec(plan, d, keys.get(d.controller_key, d.controller_key), next_key, file_name))
        next_key -= 1
    for n in plan.nics:
        changes.append(_nic_spec(plan, n, next_key))
        next_key -= 1
    return changes


def _disk_spec(plan: Plan, d: DiskPlacement, controller_key: int, key: int,
               file_name: str) -> vim.vm.device.VirtualDeviceSpec:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=file_name, diskMode="persistent",
        thinProvisioned=d.provisioning == "thin",
        eagerlyScrub=d.provisioning == "thick-eager-zeroed")
    if d.saved.write_through is not None:
        backing.writeThrough = d.saved.write_through
    disk = vim.vm.device.VirtualDisk(key=key, controllerKey=controller_key, unitNumber=d.unit,
                                     capacityInKB=-(-d.capacity // 1024), capacityInBytes=d.capacity,
                                     backing=backing)
    if d.saved.storage_io:
        disk.storageIOAllocation = from_json(d.saved.storage_io)
    spec = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
    if d.profile:
        spec.profile = [vim.vm.DefinedProfileSpec(profileId=d.profile[0])]
    return spec


def _nic_class(adapter: str) -> Any:
    cls = getattr(vim.vm.device, adapter, None)
    if isinstance(cls, type) and issubclass(cls, vim.vm.device.VirtualEthernetCard):
        return cls
    return vim.vm.device.VirtualVmxnet3


def _nic_spec(plan: Plan, n: NicPlacement, key: int) -> vim.vm.device.VirtualDeviceSpec:
    E = vim.vm.device.VirtualEthernetCard
    backing = n.backing if n.backing is not None else \
        (n.placeholder[1] if n.placeholder else E.NetworkBackingInfo(deviceName=n.old_network or ""))
    nic = _nic_class(n.adapter)(
        key=key, backing=backing, wakeOnLanEnabled=n.saved.wake_on_lan,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=False, connected=False,
                                                            allowGuestControl=True))
    if plan.options.recover_identity and n.saved.mac_address:
        nic.addressType = "manual"
        nic.macAddress = n.saved.mac_address
    else:
        nic.addressType = "generated"
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)


def labelled_disks(devices: list[Any]) -> dict[str, Any]:
    """label (``scsi0-0``) -> VirtualDisk, for the devices of a VM."""
    by_key = {d.key: d for d in devices}
    return {disk_label(by_key.get(d.controllerKey), d.unitNumber): d
            for d in devices if isinstance(d, vim.vm.device.VirtualDisk)}


def present_controllers(devices: list[Any]) -> dict[tuple[str, int], int]:
    out = {}
    for d in devices:
        if isinstance(d, vim.vm.device.VirtualController):
            bus = _bus(d)
            if bus is not None:
                out[(bus, d.busNumber)] = d.key
    return out


def reconnect_spec(plan: Plan, devices: list[Any]) -> vim.vm.ConfigSpec | None:
    """NICs back to their saved connection state, disks back to their saved mode."""
    changes = []
    nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    # The NICs were added in the plan's order; the VM lists them in that order too. Not strict:
    # a NIC the VM lost since (or one the server added) leaves the others to be reconnected.
    for placed, nic in zip(plan.nics, sorted(nics, key=lambda d: d.key), strict=False):
        # a NIC without the field (an older capture) starts connected; one saved as null does not
        start = True if "start_connected" in placed.saved.absent else placed.saved.start_connected
        if placed.network is None or not start:
            continue
        nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=True, connected=bool(placed.saved.connected), allowGuestControl=True)
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
    disks = labelled_disks(devices)
    for d in plan.disks:
        disk = disks.get(d.label)
        if disk is not None and d.mode and d.mode != "persistent" and disk.backing.diskMode != d.mode:
            disk.backing.diskMode = d.mode
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk))
    return vim.vm.ConfigSpec(deviceChange=changes) if changes else None
