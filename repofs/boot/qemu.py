"""The QEMU command line of a ``Machine`` whose disks come from NBD exports.

Each disk is a chain of block nodes: ``base<i>`` (driver ``nbd`` on our server's socket,
read-only) under ``disk<i>`` (a qcow2 overlay file that takes the guest's writes). The
machine is ``q35``; the accelerator KVM when ``/dev/kvm`` opens, else TCG (said on stderr by
the caller). Networking: ``none`` (no NIC), ``isolated`` (the NICs on ``-netdev
user,restrict=on``: the guest reaches nothing, a forwarded port still reaches the guest),
``user`` (NAT to the outside) or ``bridge:BR``. The console: a serial log file always; VNC
or the terminal on request. QMP on a UNIX socket drives the rest (``qmp.py``).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from .machine import Machine, MachineError

OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")
QEMU = "qemu-system-x86_64"


class QemuMissing(MachineError):
    def __init__(self, what: str):
        super().__init__(f"{what} is not installed (Debian: qemu-system-x86{', ovmf' if 'OVMF' in what else ''})")


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise QemuMissing(QEMU)
    return path


def choose_accel(requested: str) -> str:
    """``kvm``, ``tcg``, or ``auto``: KVM when /dev/kvm can be opened read-write."""
    if requested not in ("auto", "kvm", "tcg"):
        raise MachineError(f"unknown accelerator {requested!r}: use auto, kvm or tcg")
    if requested != "auto":
        return requested
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


@dataclass
class Plan:
    """Where the pieces of one boot live (all in a private directory)."""
    nbd_socket: str
    overlays: list[str]
    serial_log: str
    qmp_socket: str
    accel: str = "auto"
    network: str = "isolated"
    forward: list[tuple[int, int]] = field(default_factory=list)   # (host port, guest port)
    vnc: str | None = None
    console: bool = False
    efi_vars: str | None = None


def firmware_files(machine: Machine) -> tuple[str, str] | None:
    if machine.firmware != "efi":
        return None
    code = next((p for p in OVMF_CODE if os.path.exists(p)), None)
    vars_ = next((p for p in OVMF_VARS if os.path.exists(p)), None)
    if code is None or vars_ is None:
        raise QemuMissing("OVMF (UEFI firmware)")
    return code, vars_


def command(qemu: str, machine: Machine, plan: Plan) -> list[str]:
    accel = choose_accel(plan.accel)
    cmd = [qemu, "-nodefaults", "-no-user-config", "-machine", f"q35,accel={accel}",
           "-m", str(machine.memory_mb), "-smp", str(machine.cpus),
           "-qmp", f"unix:{plan.qmp_socket},server=on,wait=off", "-no-shutdown",
           "-chardev", f"file,id=serial0,path={plan.serial_log}" if not plan.console
           else "stdio,id=serial0,signal=off",
           "-serial", "chardev:serial0", "-vga", "std"]
    cmd += ["-vnc", plan.vnc] if plan.vnc else ["-display", "none"]
    if accel == "kvm":
        cmd += ["-cpu", "host"]
    fw = firmware_files(machine)
    if fw is not None:
        assert plan.efi_vars is not None
        cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={fw[0]}",
                "-drive", f"if=pflash,format=raw,unit=1,file={plan.efi_vars}"]
    hbas: dict[tuple[str, int], str] = {}
    ahci_port = 0
    for i, (slot, overlay) in enumerate(zip(machine.disks, plan.overlays, strict=True)):
        cmd += ["-blockdev", f"driver=nbd,node-name=base{i},read-only=on,server.type=unix,"
                             f"server.path={plan.nbd_socket},export={slot.label}",
                "-blockdev", f"driver=qcow2,node-name=disk{i},file.driver=file,"
                             f"file.filename={overlay},backing=base{i}"]
        boot = f",bootindex={i}"
        if slot.controller == "ahci":
            cmd += ["-device", f"ide-hd,drive=disk{i},bus=ide.{ahci_port}{boot}"]
            ahci_port += 1
        elif slot.controller == "nvme":
            cmd += ["-device", f"nvme,drive=disk{i},serial=repofs{i}{boot}"]
        elif slot.controller == "virtio":
            cmd += ["-device", f"virtio-blk-pci,drive=disk{i}{boot}"]
        else:
            hba = hbas.get((slot.controller, slot.bus))
            if hba is None:
                hba = hbas[(slot.controller, slot.bus)] = f"hba{len(hbas)}"
                cmd += ["-device", f"{slot.controller},id={hba}"]
            cmd += ["-device", f"scsi-hd,drive=disk{i},bus={hba}.0,scsi-id={slot.unit}{boot}"]
    cmd += _network(machine, plan)
    return cmd


def _network(machine: Machine, plan: Plan) -> list[str]:
    if plan.network == "none" or not machine.nics:
        return ["-nic", "none"] if not plan.forward else _user(machine, plan, True)
    if plan.network in ("isolated", "user"):
        return _user(machine, plan, plan.network == "isolated")
    if plan.network.startswith("bridge:") and plan.network[7:]:
        out = []
        for i, nic in enumerate(machine.nics):
            out += ["-netdev", f"bridge,id=net{i},br={plan.network[7:]}",
                    "-device", f"{nic.model},netdev=net{i}" + (f",mac={nic.mac}" if nic.mac else "")]
        return out
    raise MachineError(f"unknown network {plan.network!r}: use none, isolated, user or bridge:BR")


def _user(machine: Machine, plan: Plan, restrict: bool) -> list[str]:
    out = []
    nics = machine.nics or []
    for i, nic in enumerate(nics or [None]):
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in plan.forward) if i == 0 else ""
        out += ["-netdev", f"user,id=net{i},restrict={'on' if restrict else 'off'}{fwd}",
                "-device", f"{nic.model if nic else 'e1000'},netdev=net{i}"
                + (f",mac={nic.mac}" if nic and nic.mac else "")]
    return out
