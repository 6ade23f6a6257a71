"""What a restored VM must keep that its configuration spec does not carry.

Role: the pieces of a restore that make the new VM the saved one in more than its hardware:

- ``protection_refusal``: an encrypted VM (VM Encryption: a ``keyId`` on the VM or on any one
  of its disks, named with its key provider) or one with a virtual TPM (whose secrets live in
  the encrypted ``.nvram``) is refused with the reason; restoring it unencrypted would
  silently drop its protection, and a key provider is not something repofs takes yet;
- ``restore_nvram``: the saved ``.nvram`` (EFI variables: boot entries, secure-boot keys and
  databases) written over the new VM's, also when the VM is created from its configuration;
- ``ddb_uuid``: a disk's saved UUID in the form VixDiskLib's metadata (``ddb.uuid``) takes, to
  write it into the new disk with ``--recover-identity``;
- ``IdentitySwap``: with ``--overwrite --recover-identity``, the set-aside original gets fresh
  UUIDs and MAC addresses while the new VM takes the saved ones, so the two never share one;
  undone (the original's identity back) if the restore fails.

Templates are restored as templates: marked (``MarkAsTemplate``) once the disks are written.

Limits: the ``.nvram`` is uploaded through the datastore's HTTP interface beside the VM's
``.vmx`` (``<name>.nvram``, where vCenter creates it).
"""
from __future__ import annotations

import base64
import re
import uuid
from typing import Any

from pyVmomi import vim

from restore.vsphere.tasks import properties, wait
from restore.vsphere.vmmeta import parse_datastore_path
from . import vmximport

TPM_TYPE = "vim.vm.device.VirtualTPM"


def as_dict(meta: Any) -> dict[str, Any]:
    """The metadata as its JSON document, whether given as one or as a typed record with
    ``to_json`` (the fields read here are the document's)."""
    return meta.to_json() if hasattr(meta, "to_json") else (meta or {})


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _provider(encryption: Any) -> str:
    provider = encryption.get("provider") if isinstance(encryption, dict) else None
    return f"key provider {provider[:100]}" if isinstance(provider, str) and provider else "a key provider"


def protection_refusal(meta: Any) -> str | None:
    """Why the generation's VM cannot be restored as it was protected, or None.

    The capture records encryption (``vm.encryption``, each disk's ``encryption``); documents
    written before it are read for the same facts in the saved configuration and devices."""
    meta = as_dict(meta)
    vm = meta.get("vm") if isinstance(meta.get("vm"), dict) else {}
    if vm.get("encryption"):
        return (f"the VM was encrypted (VM Encryption, {_provider(vm['encryption'])}): repofs does "
                "not restore encrypted VMs, and will not restore one unencrypted")
    disks = [d for d in meta.get("disks") or [] if isinstance(d, dict) and d.get("encryption")]
    if disks:
        names = ", ".join(f"{d.get('label')}" + (f" ({str(d['device_label'])[:80]})" if d.get("device_label") else "")
                          for d in disks[:8])
        one = len(disks) == 1
        return (f"{'disk' if one else 'disks'} {names} of the VM {'was' if one else 'were'} encrypted (VM "
                f"Encryption, {_provider(disks[0]['encryption'])}): repofs does not restore "
                "encrypted disks, and will not restore one unencrypted")
    full = meta.get("config_full") or {}
    if full.get("keyId"):
        provider = ((full["keyId"] or {}).get("providerId") or {}).get("id", "a key provider")
        return (f"the VM was encrypted (VM Encryption, {provider}): repofs does not restore "
                "encrypted VMs, and will not restore one unencrypted")
    devices = meta.get("devices") or []
    if any(d.get("_vimtype") == TPM_TYPE for d in devices if isinstance(d, dict)):
        return ("the VM has a virtual TPM, whose secrets are in its encrypted .nvram: repofs "
                "does not restore VMs with a vTPM, and will not restore one without it")
    for d in _walk(devices):
        if d.get("keyId") and str(d.get("_vimtype", "")).endswith("BackingInfo"):
            return ("a disk of the VM was encrypted: repofs does not restore encrypted disks, "
                    "and will not restore one unencrypted")
    return None


def restore_nvram(session: Any, vm: Any, datacenter_name: str, meta: Any) -> str | None:
    """Upload the saved .nvram over the new VM's; the datastore path written, or None."""
    data_b64 = (as_dict(meta).get("files") or {}).get("nvram_b64")
    if not data_b64:
        return None
    vmx = properties(session.si, vm, ["config.files.vmPathName"]).get("config.files.vmPathName")
    if not vmx or not vmx.endswith(".vmx"):
        return None
    ds, rel = parse_datastore_path(vmx)
    target = rel[:-4] + ".nvram"
    vmximport.upload(session, datacenter_name, ds, target, base64.b64decode(data_b64))
    return f"[{ds}] {target}"


_HEX = re.compile(r"[0-9a-fA-F]")


def ddb_uuid(saved: str | None) -> str | None:
    """``6000C29a-3b51-…`` or ``60 00 c2 9a …-…`` -> ``60 00 c2 9a 3b 51 7e 5d-bd 06 …``."""
    if not saved:
        return None
    digits = "".join(_HEX.findall(saved)).lower()
    if len(digits) != 32:
        return None
    pairs = [digits[i:i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


class IdentitySwap:
    """Fresh UUIDs and MAC addresses for a set-aside VM, and its own back on ``undo``."""

    def __init__(self, si: Any, vm: Any, name: str) -> None:
        self.si, self.vm, self.name = si, vm, name
        props = properties(si, vm, ["config.uuid", "config.instanceUuid", "config.hardware.device"])
        self.uuid = props.get("config.uuid")
        self.instance_uuid = props.get("config.instanceUuid")
        self.nics = [(d, d.addressType, d.macAddress)
                     for d in props.get("config.hardware.device") or []
                     if isinstance(d, vim.vm.device.VirtualEthernetCard)]

    def apply(self) -> None:
        changes = []
        for nic, _kind, _mac in self.nics:
            nic.addressType = "generated"
            nic.macAddress = None
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
        spec = vim.vm.ConfigSpec(uuid=str(uuid.uuid4()), instanceUuid=str(uuid.uuid4()),
                                 deviceChange=changes)
        wait(self.si, self.vm.ReconfigVM_Task(spec=spec),
             f"give the set-aside {self.name} new UUIDs and MAC addresses")

    def undo(self) -> None:
        changes = []
        for nic, kind, mac in self.nics:
            nic.addressType = "manual" if mac else kind
            nic.macAddress = mac
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
        spec = vim.vm.ConfigSpec(uuid=self.uuid, instanceUuid=self.instance_uuid,
                                 deviceChange=changes)
        wait(self.si, self.vm.ReconfigVM_Task(spec=spec),
             f"give the set-aside {self.name} its UUIDs and MAC addresses back")
