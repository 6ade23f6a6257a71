"""One boot of a generation: our NBD server, qcow2 overlays, QEMU, QMP, and live restore.

Steps of ``BootSession.start()``:

1. map the saved config to a ``Machine`` (``machine.py``) and refuse a boot disk without a
   boot sector;
2. serve the disks read-only over NBD on a UNIX socket in a private directory (mode 0700);
3. create one qcow2 overlay per disk (``--keep-overlay`` names it; an existing file is
   refused): the guest's writes land there, never in the repository;
4. start QEMU (``qemu.py``) and connect to its monitor.

``live_restore(target)`` then mirrors the boot disk — repository bytes plus the guest's
writes — onto ``target`` with ``blockdev-mirror`` (sync=full) while the guest runs; on
``BLOCK_JOB_READY`` it completes the job, QEMU pivots the disk to the target, and the old
chain (overlay, NBD) is dropped: from then on the VM runs on the target alone.

QEMU runs with ``-no-shutdown``: a guest that powers off stops but QEMU stays, so a mirror
still running finishes first; ``stop()`` quits QEMU and removes everything it made (a kept
overlay excepted).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from repofs.serve import NBDServer, OverlayExists, exports
from repofs.view.tree import GenerationView

from .machine import Machine, MachineError, MachineOptions, check_bootable, machine_for
from .qemu import Plan, choose_accel, command, find_qemu, firmware_files
from .qmp import QMP, QMPError


class RestoreTargetExists(MachineError):
    def __init__(self, path: str):
        super().__init__(f"restore target {path} already exists: name a new file or a block device")


class RestoreTargetUnfit(MachineError):
    """A block device that cannot take the disk: too small, or in use (mounted, held)."""


@dataclass
class BootOptions:
    machine: MachineOptions = field(default_factory=MachineOptions)
    accel: str = "auto"
    network: str = "isolated"
    forward: list[tuple[int, int]] = field(default_factory=list)
    vnc: str | None = None
    console: bool = False
    keep_overlay: str | None = None
    serial_log: str | None = None       # default: inside the private directory, removed at the end


class BootSession:
    def __init__(self, gen: GenerationView, opts: BootOptions):
        self.gen = gen
        self.opts = opts
        self.machine: Machine | None = None
        self.dir = ""
        self.server: NBDServer | None = None
        self.proc: subprocess.Popen | None = None
        self.qmp: QMP | None = None
        self.accel = choose_accel(opts.accel)
        self.started = 0.0
        self.mirror_state = "none"      # none | running | ready | done | failed
        self._kept: list[str] = []

    @property
    def serial_log(self) -> str:
        return self.opts.serial_log or os.path.join(self.dir, "serial.log")

    def start(self) -> None:
        qemu = find_qemu()
        machine = self.machine = machine_for(self.gen, self.opts.machine)
        first = machine.disks[0]
        check_bootable(self.gen.disk(first.label).read(0, 512), machine.firmware, first.label)
        firmware_files(machine)
        keep = self.opts.keep_overlay
        if keep and os.path.lexists(keep):
            raise OverlayExists(keep)
        self.dir = tempfile.mkdtemp(prefix="repofs-boot-")
        try:
            self._start(qemu, machine)
        except BaseException:
            self.stop()
            raise

    def _start(self, qemu: str, machine: Machine) -> None:
        sock = os.path.join(self.dir, "nbd.sock")
        exp, _ = exports(self.gen, [d.label for d in machine.disks])
        self.server = NBDServer(exp, f"unix:{sock}")
        overlays = []
        for i, slot in enumerate(machine.disks):
            path = os.path.join(self.dir, f"disk{i}.qcow2")
            if self.opts.keep_overlay:
                path = self.opts.keep_overlay if len(machine.disks) == 1 else f"{self.opts.keep_overlay}.{slot.label}"
                if os.path.lexists(path):
                    raise OverlayExists(path)
                self._kept.append(path)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw",
                            "-b", f"nbd+unix:///{slot.label}?socket={sock}", path, str(slot.capacity)],
                           check=True, capture_output=True)
            overlays.append(path)
        efi_vars = None
        fw = firmware_files(machine)
        if fw is not None:
            efi_vars = os.path.join(self.dir, "efivars.fd")
            shutil.copyfile(fw[1], efi_vars)
        plan = Plan(sock, overlays, self.serial_log, os.path.join(self.dir, "qmp.sock"),
                    accel=self.accel, network=self.opts.network, forward=self.opts.forward,
                    vnc=self.opts.vnc, console=self.opts.console, efi_vars=efi_vars)
        open(self.serial_log, "wb").close()
        out = None if self.opts.console else open(os.path.join(self.dir, "qemu.log"), "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command(qemu, machine, plan),
                                     stdin=None if self.opts.console else subprocess.DEVNULL,
                                     stdout=out, stderr=out if out else None, start_new_session=not self.opts.console)
        if out:
            out.close()
        try:
            self.qmp = QMP(plan.qmp_socket, timeout=30)
        except QMPError as e:
            if self.proc.poll() is None:
                time.sleep(0.5)         # its last words reach the log as it exits
            raise MachineError(f"QEMU did not start: {self.qemu_error() or e}") from None

    def qemu_error(self) -> str:
        try:
            with open(os.path.join(self.dir, "qemu.log"), "rb") as f:
                lines = [ln for ln in f.read(1 << 16).decode(errors="replace").splitlines()
                         if ln.strip() and "warning" not in ln]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def accel_failed(self) -> str | None:
        """Why KVM stopped the guest, when it did: /dev/kvm can exist and still fail (nested
        virtualisation without the features real-mode firmware code needs); QEMU then
        prints "KVM internal error" and pauses the VM forever."""
        if self.accel != "kvm" or not self.dir:
            return None
        try:
            with open(os.path.join(self.dir, "qemu.log"), "rb") as f:
                text = f.read(1 << 16)
        except OSError:
            return None
        if b"KVM internal error" in text or b"emulation failure" in text:
            return "KVM failed to run the guest (KVM internal error): use --accel tcg"
        return None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- live restore ----------------------------------------------------------------------

    def check_restore_target(self, target: str) -> None:
        """Before anything starts: a block device ``target`` must hold the boot disk and be
        free (``live_restore`` checks again when it opens it)."""
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return
        if stat.S_ISBLK(st.st_mode):
            _check_device(target, machine_for(self.gen, self.opts.machine).disks[0].capacity)

    def live_restore(self, target: str) -> None:
        assert self.qmp is not None and self.machine is not None
        capacity = self.machine.disks[0].capacity
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISBLK(st.st_mode):
            raise RestoreTargetExists(target)
        if st is not None:
            _check_device(target, capacity)
        if st is None:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, capacity)
            os.close(fd)
        driver = "host_device" if st is not None else "file"
        self.qmp.execute("blockdev-add", **{"driver": "raw", "node-name": "target0",
                                            "file": {"driver": driver, "filename": target}})
        self.qmp.execute("blockdev-mirror", **{"job-id": "restore0", "device": "disk0",
                                               "target": "target0", "sync": "full"})
        self.mirror_state = "running"

    def poll_mirror(self, timeout: float) -> None:
        """Advance the live restore: complete the job when ready, drop the old chain when done."""
        assert self.qmp is not None
        ev = self.qmp.wait_event({"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"}, timeout)
        if ev is None:
            return
        name = ev["event"]
        if name == "BLOCK_JOB_READY":
            self.mirror_state = "ready"
            self.qmp.execute("job-complete", id="restore0")
        elif name == "BLOCK_JOB_COMPLETED":
            err = ev.get("data", {}).get("error")
            if err:
                self.mirror_state = "failed"
                raise MachineError(f"live restore failed: {err}")
            self.mirror_state = "done"
            # the device now sits on target0; the overlay and the NBD node are ours to drop
            for node in ("disk0", "base0"):
                try:
                    self.qmp.execute("blockdev-del", **{"node-name": node})
                except QMPError:
                    pass
        else:
            self.mirror_state = "failed"
            raise MachineError(f"live restore failed: {ev.get('data', {}).get('reason', 'I/O error')}")

    # -- end -------------------------------------------------------------------------------

    def wait_shutdown(self, timeout: float) -> bool:
        """True once the guest powered off (QEMU stays, -no-shutdown) or QEMU ended."""
        if not self.running():
            return True
        assert self.qmp is not None
        try:
            return self.qmp.wait_event({"SHUTDOWN"}, timeout) is not None
        except QMPError:
            return True

    def stop(self) -> None:
        if self.qmp is not None:
            try:
                self.qmp.execute("quit")
            except (QMPError, OSError):
                pass
            self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""


def _check_device(path: str, capacity: int) -> None:
    """Refuse a block device smaller than the disk, or in use: O_EXCL on a block device fails
    with EBUSY while a file system on it is mounted or another exclusive holder has it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL)
    except OSError as e:
        raise RestoreTargetUnfit(f"restore target {path} cannot be used: {e.strerror}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if size < capacity:
        raise RestoreTargetUnfit(f"restore target {path} holds {size} bytes, the disk needs {capacity}")


def note(text: str) -> None:
    sys.stderr.write(f"repofs: {text}\n")
