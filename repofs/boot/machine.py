"""The virtual machine a generation describes, in QEMU's terms: a pure model, no processes.

``machine_for(gen, options)`` reads the saved config (``metadata.config``, ``controllers``,
``disks``, ``networks`` of a vSphere generation; see docs/vsphere.md) and maps it:

- firmware ``bios`` -> SeaBIOS (QEMU's default), ``efi`` -> OVMF (Debian ``ovmf``);
- disk controllers: ParaVirtualSCSIController -> ``pvscsi``; VirtualLsiLogicController and
  VirtualLsiLogicSASController -> ``mptsas1068`` (the Fusion-MPT family their guest drivers
  belong to); VirtualBusLogicController -> ``lsi53c895a``; VirtualAHCIController and IDE ->
  the q35 machine's own AHCI ports; VirtualNVMEController -> ``nvme``;
- NICs: VirtualVmxnet3 -> ``vmxnet3``, VirtualE1000 -> ``e1000``, VirtualE1000e -> ``e1000e``,
  anything else -> ``e1000``; MAC addresses kept;
- memory and CPUs from the config, capped by the options.

A generation without a config (a local image) gets the defaults: BIOS, one SATA disk per
disk, one e1000 NIC, 1 GiB, 1 CPU; options override each of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from repofs.errors import RepofsError
from repofs.view.tree import GenerationView

CONTROLLERS = {
    "ParaVirtualSCSIController": "pvscsi",
    "VirtualLsiLogicController": "mptsas1068",
    "VirtualLsiLogicSASController": "mptsas1068",
    "VirtualBusLogicController": "lsi53c895a",
    "VirtualAHCIController": "ahci",
    "VirtualIDEController": "ahci",
    "VirtualNVMEController": "nvme",
}
CONTROLLER_CHOICES = ("ahci", "pvscsi", "mptsas1068", "lsi53c895a", "nvme", "virtio")
NICS = {"VirtualVmxnet3": "vmxnet3", "VirtualE1000": "e1000", "VirtualE1000e": "e1000e"}
FIRMWARE = {"bios": "bios", "efi": "efi", "uefi": "efi"}
DEFAULT_MEMORY_MB = 1024


class MachineError(RepofsError):
    """Root of the errors of the boot layer."""


class NoBootableDisk(MachineError):
    pass


@dataclass
class DiskSlot:
    label: str
    capacity: int
    controller: str          # one of CONTROLLER_CHOICES
    bus: int = 0
    unit: int = 0


@dataclass
class Nic:
    model: str
    mac: str | None = None


@dataclass
class Machine:
    firmware: str = "bios"
    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: int = 1
    disks: list[DiskSlot] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)


@dataclass
class MachineOptions:
    firmware: str | None = None          # override: bios | efi
    controller: str | None = None        # override for every disk
    max_memory_mb: int = 4096
    max_cpus: int = 4
    memory_mb: int | None = None
    cpus: int | None = None
    disks: list[str] | None = None       # only these labels


def machine_for(gen: GenerationView, opts: MachineOptions) -> Machine:
    meta = gen.metadata or {}
    config = meta.get("config")
    if not isinstance(config, dict):
        config = {}
    firmware = FIRMWARE.get(str(opts.firmware or config.get("firmware") or "bios").lower())
    if firmware is None:
        raise MachineError(f"unknown firmware {opts.firmware or config.get('firmware')!r}: use bios or efi")
    memory = opts.memory_mb or _int(config.get("memoryMB")) or DEFAULT_MEMORY_MB
    cpus = opts.cpus or _int(config.get("numCPU")) or 1
    described = {d.get("label"): d for d in meta.get("disks") or [] if isinstance(d, dict)}
    wanted = opts.disks or [d.label for d in gen.disks]
    slots = []
    for label in wanted:
        view = gen.disk(label)
        saved = described.get(label) or {}
        ctl = saved.get("controller")
        if not isinstance(ctl, dict):
            ctl = {}
        controller = opts.controller or CONTROLLERS.get(str(ctl.get("type")), "ahci")
        if controller not in CONTROLLER_CHOICES:
            raise MachineError(f"unknown controller {controller!r}: use one of {', '.join(CONTROLLER_CHOICES)}")
        slots.append(DiskSlot(label, view.capacity, controller, _int(ctl.get("bus")) or 0,
                              _int(saved.get("unit")) or 0))
    if not slots:
        raise NoBootableDisk(f"{gen.vm} generation {gen.name} has no disks to boot")
    nics = [Nic(NICS.get(str(n.get("adapter")), "e1000"), n.get("mac_address") or None)
            for n in meta.get("networks") or [] if isinstance(n, dict)]
    if not config:
        nics = [Nic("e1000")]
    return Machine(firmware, max(64, min(memory, opts.max_memory_mb)), max(1, min(cpus, opts.max_cpus)),
                   slots, nics)


def check_bootable(first_sector: bytes, firmware: str, label: str) -> None:
    """Refuse a boot disk that no firmware would start from: BIOS needs the 0x55AA signature
    of an MBR (a protective MBR of GPT has it too); UEFI needs a GPT or an MBR."""
    if len(first_sector) < 512 or first_sector[510:512] != b"\x55\xaa":
        raise NoBootableDisk(f"disk {label} has no boot sector (no 0x55AA signature in sector 0): "
                             f"nothing for the {firmware.upper()} firmware to start")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
