"""The main job, shown step by step: every command it runs is printed, then its output.

First a disk image backed up as files; then the same disk as a VM's disk in the bundled vCenter
simulator (read and written through the VixDiskLib stand-in): backup, a change, an incremental
backup, the mount browsed through a loop mount of the guest filesystem, a restore into a new VM,
and the proof that its disk is identical."""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
REPOFS = [str(TOP / ".venv" / "bin" / "repofs")]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    p = subprocess.run(cmd, text=True, capture_output=True, **kw)
    out = (p.stdout + p.stderr).rstrip()
    if out:
        print(out, flush=True)
    if p.returncode != 0:
        sys.exit(f"demo: step failed with exit code {p.returncode}")
    return p


def make_disk(work: Path) -> Path:
    tree = work / "guest"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("demo-vm\n")
    (tree / "var" / "log").mkdir(parents=True)
    rng = random.Random(1)
    (tree / "var" / "log" / "syslog").write_text("".join(f"Nov 25 10:{i // 60:02d}:{i % 60:02d} demo "
                                                         f"event {rng.random()}\n" for i in range(20000)))
    (tree / "data.bin").write_bytes(rng.randbytes(8 << 20))
    img = work / "demo-disk.img"
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    sh("sfdisk", "-q", str(img), input="label: gpt\n2048,,L\n")
    sh("mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", str(tree), str(img), f"{254 * 1024}k")
    return img


def change_files(img: Path, mnt: Path) -> None:
    """Edit files inside the guest filesystem through a loop mount (the demo runs as root)."""
    mnt.mkdir()
    sh("mount", "-o", "loop,offset=1048576", str(img), str(mnt))
    try:
        (mnt / "etc" / "hostname").write_text("demo-vm-2\n")
        with open(mnt / "var" / "log" / "syslog", "a") as f:
            f.write("Nov 25 11:00:00 demo the second day\n" * 1000)
        (mnt / "new-report.txt").write_text("written between the two backups\n" * 500)
    finally:
        sh("umount", str(mnt))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="repofs-demo-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        (work / "passphrase").write_text("demo passphrase\n")
        (work / "passphrase").chmod(0o600)  # a password file others can read draws a warning
        os.environ.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(work / "passphrase"))

        step("A disk image with a partition table and a real ext4 filesystem")
        img = make_disk(work)
        step("A new encrypted repository, and the first backup")
        sh(*REPOFS, "init")
        sh(*REPOFS, "backup", f"file:{img}", "--vm", "demo-vm")
        step("Some files change; the second backup stores only what changed")
        change_files(img, work / "mnt")
        sh(*REPOFS, "backup", f"file:{img}", "--vm", "demo-vm")
        sh(*REPOFS, "generations")
        step("Restore the second generation to a file and compare it with the source")
        gen2 = json.loads(sh(*REPOFS, "generations", "vm:demo-vm", "--json").stdout)[-1]["generation"]
        sh(*REPOFS, "restore", "vm:demo-vm", "--generation", gen2, "--to-dir", str(work / "restored"))
        sh("qemu-img", "compare", str(img), str(work / "restored" / "demo-disk.raw"))
        step("Verify every chunk")
        sh(*REPOFS, "check", "--read-data")
        vsphere_job(work, make_disk_copy(img, work))
        print("\ndemo: all steps passed", flush=True)


def make_disk_copy(img: Path, work: Path) -> tuple[Path, Path]:
    """The first and second versions of the guest disk, for the vSphere part."""
    first, second = work / "vm-disk-v1.img", work / "vm-disk-v2.img"
    shutil.copyfile(img, second)          # the image as changed above
    shutil.copyfile(img, first)
    return first, second


def write_through_vddk(libdir: Path, descriptor: Path, image: Path, previous: Path | None) -> int:
    """Copy ``image`` into a VM's disk through VixDiskLib (local mode), as a guest's writes would
    land: only the 64 KiB blocks that differ from ``previous`` (all data blocks when None).
    The stand-in records each write in the disk's ctk log, where changed-block tracking reads."""
    import vddk
    block, written = 64 << 10, 0
    with vddk.open_library(libdir) as lib, lib.connect(None, read_only=False) as conn, \
            conn.open(str(descriptor), read_only=False) as disk, open(image, "rb") as new, \
            (open(previous, "rb") if previous else open(os.devnull, "rb")) as old:
        size = os.fstat(new.fileno()).st_size
        for offset in range(0, size, block):
            data = os.pread(new.fileno(), block, offset)
            before = os.pread(old.fileno(), block, offset) if previous else bytes(len(data))
            if data != before:
                disk.write_from(offset, data)
                written += len(data)
        disk.flush()
    return written


def vsphere_job(work: Path, versions: tuple[Path, Path]) -> None:
    """The same disk as the disk of a VM in the bundled vCenter simulator, read and written
    through the VixDiskLib stand-in: backup, change, incremental, mount, restore, proof."""
    sys.path[:0] = [str(TOP / "tests"), str(TOP)]
    from fixtures_vcsim import connected, create_vm, running_vcsim, vm_disks
    from fixtures_vddk import build_standin, write_standin_config
    from pyVmomi import vim

    first, second = versions
    # The first version: the disk before the files changed (restore generation 1 of demo-vm).
    gen1 = json.loads(sh(*REPOFS, "generations", "vm:demo-vm", "--json").stdout)[0]["generation"]
    sh(*REPOFS, "restore", "vm:demo-vm", "--generation", gen1, "--to-dir", str(work / "v1"))
    shutil.copyfile(work / "v1" / "demo-disk.raw", first)
    libdir = build_standin()
    step("The bundled vCenter simulator, with the VixDiskLib stand-in on its datastores")
    with running_vcsim(tmpdir=work / "vcsim") as vc:
        conf = work / "standin.conf"
        write_standin_config(conf, datastores=vc.datastores, server=vc.host, thumbprint=vc.thumbprint)
        (work / "vsphere-password").write_text(vc.password + "\n")
        (work / "vsphere-password").chmod(0o600)
        os.environ.update(VDDK_STANDIN_CONFIG=str(conf), VSPHERE_SERVER=vc.server, VSPHERE_USER=vc.user,
                          VSPHERE_PASSWORD_FILE=str(work / "vsphere-password"), VDDK_LIBDIR=str(libdir))
        pin = ["--thumbprint", vc.thumbprint]
        print(f"vCenter {vc.url} (certificate {vc.thumbprint}), datastores {', '.join(vc.datastores)}")
        with connected(vc) as si:
            vm = create_vm(si, "guest-vm", [os.path.getsize(first)], change_tracking=True)
            descriptor = vc.local_path(vm_disks(vm.config)[0].backing.fileName)
        n = write_through_vddk(libdir, descriptor, first, None)
        print(f"VM guest-vm: its {os.path.getsize(first) >> 20} MiB disk holds the ext4 image ({n} bytes written)")
        step("Back up the VM: snapshot, changed-block tracking, VixDiskLib reads, snapshot removed")
        sh(*REPOFS, "backup", "vm:guest-vm", *pin)
        step("Files change inside the guest; the incremental reads only the changed areas")
        n = write_through_vddk(libdir, descriptor, second, first)
        print(f"the guest wrote {n} bytes")
        sh(*REPOFS, "backup", "vm:guest-vm", *pin)
        sh(*REPOFS, "generations", "guest-vm")
        step("Browse the backup: mount the repository, loop-mount the guest filesystem, read a file")
        mnt, guest = work / "repo-mnt", work / "guest-mnt"
        mnt.mkdir()
        guest.mkdir()
        sh(*REPOFS, "mount", str(mnt))
        try:
            flat = mnt / "guest-vm" / "latest" / "scsi0-0-flat.vmdk"
            sh("ls", "-l", str(flat.parent) + "/")
            sh("mount", "-o", "ro,loop,offset=1048576", str(flat), str(guest))
            try:
                hostname = sh("cat", str(guest / "etc" / "hostname")).stdout.strip()
                if hostname != "demo-vm-2":
                    sys.exit(f"demo: the guest's hostname in the backup is {hostname!r}")
            finally:
                sh("umount", str(guest))
        finally:
            sh(*REPOFS, "umount", str(mnt))
        step("Restore the latest generation into a new VM, disks written through VixDiskLib")
        sh(*REPOFS, "restore", "vm:guest-vm", "--name", "guest-vm-restored", "--dry-run", *pin)
        sh(*REPOFS, "restore", "vm:guest-vm", "--name", "guest-vm-restored", "--power-on", *pin)
        step("Proof: the new VM's disk is identical to the guest's disk at the last backup")
        with connected(vc) as si:
            view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
            new_vm = next(v for v in view.view if v.name == "guest-vm-restored")
            view.Destroy()
            restored = vc.local_path(vm_disks(new_vm.config)[0].backing.fileName)
            print(f"guest-vm-restored: {new_vm.runtime.powerState}, disk {vm_disks(new_vm.config)[0].backing.fileName}")
        sh("qemu-img", "compare", str(restored), str(second))


if __name__ == "__main__":
    main()
