"""The metadata document of a vSphere generation: the contract between backup and restore.

The backup writes it (``restore.backup.metadata.capture``), the restore reads it
(``restore.vm``); docs/vsphere.md lists its fields. Disk labels (the names of the disks in
the repository) are ``<bus><n>-<unit>``, e.g. ``scsi0-0``.
"""
from __future__ import annotations

from typing import Any

from pyVmomi import vim

SCHEMA = "repofs.vsphere.vm/1"

CONTROLLER_BUS = (
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualSATAController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
    (vim.vm.device.VirtualIDEController, "ide"),
)


def vim_name(obj: Any) -> str:
    return type(obj).__name__.rsplit(".", 1)[-1]


def parse_datastore_path(path: str) -> tuple[str, str]:
    """``"[ds] dir/file.vmdk"`` -> ``("ds", "dir/file.vmdk")``."""
    if not path.startswith("[") or "]" not in path:
        raise ValueError(f"not a datastore path: {path!r}")
    name, _, rest = path[1:].partition("]")
    return name, rest.strip()


def disk_label(controller: Any, unit: int) -> str:
    for cls, bus in CONTROLLER_BUS:
        if isinstance(controller, cls):
            return f"{bus}{controller.busNumber}-{unit}"
    return f"disk{getattr(controller, 'key', 0)}-{unit}"
