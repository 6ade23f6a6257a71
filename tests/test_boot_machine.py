"""The saved config of a vSphere generation mapped to QEMU's devices (repofs/boot/machine.py,
qemu.py), checked on the command line QEMU would get, and that QEMU accepts it."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from format.manifest import DiskEntry, Manifest
from repofs.boot.machine import MachineError, MachineOptions, check_bootable, machine_for
from repofs.boot.qemu import Plan, command
from repofs.view.tree import GenerationView

GiB = 1 << 30


def _generation(metadata: dict, labels=("scsi0-0", "scsi0-1")) -> GenerationView:
    disks = [DiskEntry(label, 8 * GiB, 1 << 20, "00" * 32) for label in labels]
    manifest = Manifest("web01", "2026-11-25T140300Z", "2026-11-25T14:03:00Z", 0, None, disks, metadata)
    return GenerationView(None, "ab" * 16, manifest)  # type: ignore[arg-type]


VSPHERE = {
    "config": {"firmware": "efi", "memoryMB": 16384, "numCPU": 8},
    "disks": [{"label": "scsi0-0", "unit": 0, "controller": {"type": "ParaVirtualSCSIController", "bus": 0}},
              {"label": "scsi0-1", "unit": 1, "controller": {"type": "ParaVirtualSCSIController", "bus": 0}},
              {"label": "nvme0-0", "unit": 0, "controller": {"type": "VirtualNVMEController", "bus": 0}}],
    "networks": [{"adapter": "VirtualVmxnet3", "mac_address": "00:50:56:aa:bb:cc"},
                 {"adapter": "VirtualE1000e", "mac_address": "00:50:56:aa:bb:cd"}],
}


def _plan(n: int, network: str = "isolated") -> Plan:
    return Plan("/run/x/nbd.sock", [f"/run/x/disk{i}.qcow2" for i in range(n)], "/run/x/serial.log",
                "/run/x/qmp.sock", accel="tcg", network=network, efi_vars="/run/x/vars.fd")


def test_vsphere_config_maps_to_qemu_devices():
    gen = _generation(VSPHERE, ("scsi0-0", "scsi0-1", "nvme0-0"))
    m = machine_for(gen, MachineOptions(max_memory_mb=4096, max_cpus=2))
    assert (m.firmware, m.memory_mb, m.cpus) == ("efi", 4096, 2)
    assert [d.controller for d in m.disks] == ["pvscsi", "pvscsi", "nvme"]
    cmd = " ".join(command("qemu-system-x86_64", m, _plan(3)))
    assert cmd.count("-device pvscsi,id=hba0") == 1              # one HBA for both disks on bus 0
    assert "scsi-hd,drive=disk0,bus=hba0.0,scsi-id=0,bootindex=0" in cmd
    assert "scsi-hd,drive=disk1,bus=hba0.0,scsi-id=1,bootindex=1" in cmd
    assert "nvme,drive=disk2" in cmd
    assert "vmxnet3,netdev=net0,mac=00:50:56:aa:bb:cc" in cmd and "e1000e,netdev=net1" in cmd
    assert "user,id=net0,restrict=on" in cmd                         # isolated by default
    assert "OVMF_CODE" in cmd and "-m 4096" in cmd
    assert "server.path=/run/x/nbd.sock,export=scsi0-1" in cmd


def test_local_image_defaults_and_overrides():
    gen = _generation({}, ("guest",))
    m = machine_for(gen, MachineOptions())
    assert (m.firmware, m.memory_mb, m.cpus, m.disks[0].controller) == ("bios", 1024, 1, "ahci")
    cmd = command("qemu-system-x86_64", m, _plan(1, network="none"))
    assert "ide-hd,drive=disk0,bus=ide.0,bootindex=0" in cmd and "none" in cmd
    m = machine_for(gen, MachineOptions(controller="virtio", firmware="efi", memory_mb=512))
    assert (m.firmware, m.memory_mb, m.disks[0].controller) == ("efi", 512, "virtio")
    with pytest.raises(MachineError):
        machine_for(gen, MachineOptions(controller="floppy"))
    with pytest.raises(MachineError):
        command("qemu-system-x86_64", machine_for(gen, MachineOptions()), _plan(1, network="wifi"))


def test_boot_sector_check():
    check_bootable(bytes(510) + b"\x55\xaa", "bios", "d")
    with pytest.raises(MachineError, match="no boot sector"):
        check_bootable(bytes(512), "bios", "d")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_qemu_knows_every_mapped_device():
    out = subprocess.run(["qemu-system-x86_64", "-device", "help"], capture_output=True, text=True).stdout
    for device in ("pvscsi", "mptsas1068", "lsi53c895a", "nvme", "virtio-blk-pci", "ide-hd", "scsi-hd",
                   "vmxnet3", "e1000", "e1000e"):
        assert f'name "{device}"' in out, device
