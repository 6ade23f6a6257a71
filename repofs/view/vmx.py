"""The ``<vm>.vmx`` file of a generation.

A generation of a vSphere VM carries the VM's own .vmx (downloaded at backup time, in
``metadata["files"]["vmx"]``); it is shown as it was, with disk file names pointing at the
generation's virtual descriptors. Local images get a minimal valid .vmx that names their
disks, so the folder opens in a VMware product as a VM.
"""
from __future__ import annotations

import re
from typing import Any, Sequence


def render_vmx(vm: str, metadata: dict[str, Any], disk_files: Sequence[str]) -> bytes:
    saved = (metadata.get("files") or {}).get("vmx")
    if isinstance(saved, str) and saved.strip():
        return saved.encode()
    config = metadata.get("config") or {}
    hw = config.get("version", "vmx-14")
    hw_num = re.sub(r"\D", "", str(hw)) or "14"
    lines = [
        '.encoding = "UTF-8"',
        'config.version = "8"',
        f'virtualHW.version = "{hw_num}"',
        f'displayName = "{_escape(vm)}"',
        f'guestOS = "{_escape(str(config.get("guestId", "other-64")))}"',
        f'memSize = "{int(config.get("memoryMB", 1024))}"',
        f'numvcpus = "{int(config.get("numCPU", 1))}"',
        'firmware = "{}"'.format(_escape(str(config.get("firmware", "bios")))),
        'scsi0.present = "TRUE"',
        'scsi0.virtualDev = "lsilogic"',
    ]
    for unit, name in enumerate(disk_files):
        slot = unit if unit < 7 else unit + 1  # unit 7 is the controller's own
        lines += [f'scsi0:{slot}.present = "TRUE"', f'scsi0:{slot}.fileName = "{_escape(name)}"',
                  f'scsi0:{slot}.deviceType = "scsi-hardDisk"']
    return ("\n".join(lines) + "\n").encode()


def _escape(s: str) -> str:
    return s.replace("|", "|7C").replace('"', "|22")
