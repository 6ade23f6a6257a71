"""``repofs backup vm:NAME`` against the test vCenter (govmomi simulator) and the VDDK stand-in.

No mocks: the CLI runs as a subprocess, logs in over TLS with the pinned thumbprint, takes real
snapshots in the simulator, asks its changed-block tracking, and reads the disks through the
VDDK binding and the stand-in, whose datastores are the simulator's folders.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from fixtures_vcsim import connected, find_by_name, wait_task
from fixtures_vsphere import MiB, VSphereBed, unique

CHUNK = 1 << 20  # the repository's default chunk size
DISK = 64 * MiB

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="e2fsprogs (mkfs.ext4, debugfs) missing")


# --- guest data ---------------------------------------------------------------------------------

def ext4_images(tmp: Path) -> tuple[bytes, bytes]:
    """A 32 MiB ext4 filesystem with seeded files, and the same after writing one more file
    into it (debugfs), so the second differs from the first in a few blocks only."""
    import random
    tree = tmp / "tree"
    tree.mkdir()
    rng = random.Random(5)
    for i in range(24):
        (tree / f"file{i:02}.bin").write_bytes(rng.randbytes(rng.randint(2000, 300_000)))
    (tree / "notes.txt").write_text("repofs vSphere backup test\n" * 500)
    img1, img2 = tmp / "gen1.ext4", tmp / "gen2.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), "-E", "root_owner=0:0",
                    "-U", "0b0e5c1a-5a5e-4c0d-9a1e-1d2b3c4d5e6f", str(img1), "32M"], check=True)
    shutil.copy(img1, img2)
    extra = tmp / "added.bin"
    extra.write_bytes(random.Random(6).randbytes(200_000))
    subprocess.run(["debugfs", "-w", "-R", f"write {extra} added.bin", str(img2)], check=True,
                   capture_output=True)
    subprocess.run(["fsck.ext4", "-fn", str(img2)], check=True, capture_output=True)
    return img1.read_bytes(), img2.read_bytes()


def data_pieces(image: bytes, block: int = 64 * 1024) -> list[tuple[int, bytes]]:
    """The non-zero 64 KiB blocks of an image, as (offset, data)."""
    zero = bytes(block)
    return [(o, image[o:o + block]) for o in range(0, len(image), block) if image[o:o + block] != zero]


def changed_pieces(old: bytes, new: bytes, block: int = 64 * 1024) -> list[tuple[int, bytes]]:
    return [(o, new[o:o + block]) for o in range(0, len(new), block) if old[o:o + block] != new[o:o + block]]


def expected_disk(image: bytes, capacity: int) -> bytes:
    return image + bytes(capacity - len(image))


def restore_raw(bed: VSphereBed, vm: str, generation: str, out: Path) -> bytes:
    bed.repofs("restore", f"vm:{vm}", "--to-dir", str(out), "--generation", generation)
    files = list(out.glob("*.raw"))
    assert len(files) == 1, files
    return files[0].read_bytes()


def generations(bed: VSphereBed, vm: str) -> list[dict]:
    proc = bed.repofs("generations", vm, "--json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else []


def manifest_json(bed: VSphereBed, vm: str, generation: str) -> dict:
    """The generation's metadata as the views show it (<vm>.json), through a restore's view."""
    import repofs.view.tree as views
    from format.repository import Repository
    view = views.RepositoryView(Repository.open(str(bed.repo), None))
    gen = view.generation(vm, generation)
    return {"metadata": gen.metadata, "disks": [d.entry.source for d in gen.disks]}


# --- the main job -------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_then_incremental_backup_of_an_ext4_disk(vsphere: VSphereBed, tmp_path: Path) -> None:
    name = unique("ext4vm")
    vsphere.create_vm(name, [DISK])
    image1, image2 = ext4_images(tmp_path)
    disk = vsphere.disk_path(name)
    vsphere.write(disk, data_pieces(image1))

    # Full: CBT is off, the backup turns it on; reads the allocated areas only.
    first = vsphere.backup(f"vm:{name}")
    assert "changed-block tracking was off: turned on" in first.stdout
    assert "Traceback" not in first.stderr and "Exception ignored" not in first.stderr
    assert vsphere.snapshots(name) == []
    gens = generations(vsphere, name)
    assert len(gens) == 1

    # A change inside the guest filesystem, written through VDDK (the ctk log records it).
    changes = changed_pieces(image1, image2)
    assert 0 < len(changes) < 20
    vsphere.write(disk, changes)
    mark = vsphere.stat_count()
    second = vsphere.backup(f"vm:{name}", "--json")
    assert vsphere.snapshots(name) == []
    outcome = json.loads(second.stdout)[0]
    assert outcome["ok"] and outcome["disks"][0]["mode"] == "changed"

    # Only the changed blocks were read, through the stand-in (a chunk whose blocks are more
    # than half changed, whole), and each changed block was read.
    reads = vsphere.reads(mark)
    read_bytes = sum(n for _, _, n in reads)
    changed_chunks = {o // CHUNK for o, _ in changes}
    assert {o // CHUNK for _, o, _ in reads} == changed_chunks
    assert sum(len(d) for _, d in changes) <= read_bytes <= len(changed_chunks) * CHUNK
    assert all(any(ro <= o and o + len(d) <= ro + rn for _, ro, rn in reads) for o, d in changes)
    assert all(n <= 2 * MiB for _, _, n in reads)
    assert outcome["disks"][0]["read_bytes"] == read_bytes

    # Each generation is the disk as it was at its snapshot, byte for byte.
    gens = generations(vsphere, name)
    assert len(gens) == 2
    assert restore_raw(vsphere, name, gens[0]["generation"], tmp_path / "r1") == expected_disk(image1, DISK)
    assert restore_raw(vsphere, name, gens[1]["generation"], tmp_path / "r2") == expected_disk(image2, DISK)
    if shutil.which("qemu-img"):  # the judge on the VMDK form of the generation too
        bed_vmdk = tmp_path / "r2-vmdk"
        vsphere.repofs("restore", f"vm:{name}", "--to-dir", str(bed_vmdk), "--format", "vmdk")
        want = tmp_path / "want.raw"
        want.write_bytes(expected_disk(image2, DISK))
        subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(bed_vmdk / "scsi0-0.vmdk"),
                        str(want)], check=True, capture_output=True)
    got = tmp_path / "r2" / "scsi0-0.raw"
    fs = tmp_path / "fs.ext4"
    fs.write_bytes(got.read_bytes()[:len(image2)])
    subprocess.run(["fsck.ext4", "-fn", str(fs)], check=True, capture_output=True)

    # The metadata carries what a restore needs.
    doc = manifest_json(vsphere, name, gens[1]["generation"])
    md = doc["metadata"]
    assert md["schema"] == "repofs.vsphere.vm/1"
    assert md["vm"]["name"] == name and md["vm"]["uuid"] and md["vm"]["instance_uuid"]
    assert md["config"]["numCPU"] == 1 and md["config"]["memoryMB"] == 128
    assert md["config"]["guestId"] == "otherGuest64" and md["config"]["firmware"]
    assert md["config"]["changeTrackingEnabled"] is True
    assert md["placement"]["datacenter"] == "DC0"
    assert md["placement"]["folder_path"] == "/DC0/vm"
    assert md["placement"]["resource_pool_path"].startswith("/DC0/host/DC0_C0/Resources")
    assert md["placement"]["host"]
    assert [c["type"] for c in md["controllers"] if c["type"] == "ParaVirtualSCSIController"]
    (d,) = md["disks"]
    assert d["label"] == "scsi0-0" and d["capacity_bytes"] == DISK and d["provisioning"] == "thin"
    assert d["controller"]["type"] == "ParaVirtualSCSIController" and d["unit"] == 0
    assert d["datastore"] == "LocalDS_0" and d["file"].startswith("[LocalDS_0] ")
    assert d["mode"] == "persistent" and d["change_id"]
    (nic,) = md["networks"]
    assert nic["kind"] == "standard" and nic["network"] == "VM Network" and nic["mac_address"]
    assert "vmx" in md["files"] and "nvram_b64" in md["files"]
    assert md["snapshot"]["name"].startswith("repofs-backup-")
    assert any(dev["_vimtype"] == "vim.vm.device.VirtualDisk" for dev in md["devices"])
    assert md["config_full"]["_vimtype"] == "vim.vm.ConfigInfo"
    assert md["tags"] == [] and md["custom_attributes"] == {}
    src = doc["disks"][0]
    assert src["change_id"] == d["change_id"] and src["read"]["mode"] == "changed"
    assert src["read"]["base_change_id"] != src["change_id"]
    # The view renders <vm>.vmx from the metadata.
    from restore.vsphere.vmodl_json import from_json
    rebuilt = from_json(next(dev for dev in md["devices"] if dev["_vimtype"] == "vim.vm.device.VirtualDisk"))
    assert isinstance(rebuilt, vim.vm.device.VirtualDisk) and rebuilt.capacityInBytes == DISK


@pytest.mark.slow
def test_a_grown_disk_is_read_in_full(vsphere: VSphereBed, tmp_path: Path) -> None:
    name = unique("grow")
    vsphere.create_vm(name, [8 * MiB], change_tracking=True)
    disk = vsphere.disk_path(name)
    vsphere.write(disk, [(0, b"A" * MiB), (5 * MiB, b"B" * MiB)])
    vsphere.backup(f"vm:{name}")
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        dev = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
        dev.capacityInBytes = 12 * MiB
        dev.capacityInKB = 12 * 1024
        spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)])
        wait_task(si, vm.ReconfigVM_Task(spec=spec))
    vsphere.write(disk, [(11 * MiB, b"C" * MiB)])
    out = json.loads(vsphere.backup(f"vm:{name}", "--json").stdout)[0]
    assert out["disks"][0]["mode"] == "full" and out["disks"][0]["capacity"] == 12 * MiB
    assert "capacity changed from 8388608 to 12582912" in out["plan"][0]["reason"]
    gens = generations(vsphere, name)
    got = restore_raw(vsphere, name, gens[-1]["generation"], tmp_path / "r")
    assert got == b"A" * MiB + bytes(4 * MiB) + b"B" * MiB + bytes(5 * MiB) + b"C" * MiB
    assert vsphere.snapshots(name) == []


# --- the snapshot goes away whatever happens -------------------------------------------------------

def test_snapshot_removed_after_a_vddk_fault(vsphere: VSphereBed) -> None:
    name = unique("fault")
    vsphere.create_vm(name, [16 * MiB], change_tracking=True)
    vsphere.write(vsphere.disk_path(name), [(o, b"x" * MiB) for o in range(0, 16 * MiB, MiB)])
    vsphere.configure(fail_read_after=3)
    proc = vsphere.backup(f"vm:{name}", check=False)
    assert proc.returncode == 14, proc.stderr  # VDDK
    assert "injected" in proc.stderr or "VixError" in proc.stderr
    assert vsphere.snapshots(name) == []
    assert generations(vsphere, name) == []


@pytest.mark.parametrize("signum, group", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                           (signal.SIGINT, True)],
                         ids=["sigint", "sigterm", "ctrl-c-to-the-process-group"])
def test_snapshot_removed_after_an_interrupt(vsphere: VSphereBed, signum: int, group: bool) -> None:
    """SIGINT/SIGTERM to the CLI, and Ctrl-C at a terminal, which reaches the VDDK worker
    process too (it must not die before the disks are closed in order)."""
    name = unique("signal")
    vsphere.create_vm(name, [32 * MiB], change_tracking=True)
    vsphere.write(vsphere.disk_path(name), [(o, b"y" * MiB) for o in range(0, 32 * MiB, MiB)])
    vsphere.configure(delay_us=200_000)  # 0.2 s per read: the backup takes seconds
    proc = subprocess.Popen(vsphere.command(f"vm:{name}"), env=vsphere.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=group)
    try:
        deadline = time.monotonic() + 60
        while not vsphere.reads() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vsphere.reads(), "the backup never started reading"
        assert vsphere.snapshots(name), "no snapshot while reading"
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; the backup snapshot was removed" in err
    assert "Traceback" not in err and "Exception ignored" not in err and "worker" not in err
    assert vsphere.snapshots(name) == []
    assert generations(vsphere, name) == []


# --- refusals -----------------------------------------------------------------------------------

def test_wrong_password_is_refused_without_showing_it(vsphere: VSphereBed, tmp_path: Path) -> None:
    bad = tmp_path / "bad-password"
    bad.write_text("not-the-Password-42\n")
    proc = vsphere.backup("vm:DC0_H0_VM0", check=False, password_file=bad)
    assert proc.returncode == 13
    assert "wrong user name or password" in proc.stderr
    assert "not-the-Password-42" not in proc.stderr + proc.stdout


def test_wrong_thumbprint_is_refused(vsphere: VSphereBed) -> None:
    proc = vsphere.backup("vm:DC0_H0_VM0", check=False, thumbprint="12:" * 19 + "34")
    assert proc.returncode == 13
    assert "not the pinned" in proc.stderr and vsphere.vcsim.thumbprint in proc.stderr


def test_unverified_certificate_is_refused_by_default(vsphere: VSphereBed) -> None:
    args = [a for a in vsphere.command("vm:DC0_H0_VM0")]
    i = args.index("--thumbprint")
    del args[i:i + 2]
    proc = subprocess.run(args, env=vsphere.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 13
    assert "does not verify" in proc.stderr and "--thumbprint" in proc.stderr


def test_unknown_vm(vsphere: VSphereBed) -> None:
    proc = vsphere.backup("vm:no-such-vm", check=False)
    assert proc.returncode == 8
    assert "no VM named 'no-such-vm'" in proc.stderr


def test_two_vms_with_one_name(vsphere: VSphereBed) -> None:
    name = unique("twin")
    a = vsphere.create_vm(name, [4 * MiB])
    b = vsphere.create_vm(name, [4 * MiB])
    proc = vsphere.backup(f"vm:{name}", check=False)
    assert proc.returncode == 8
    assert f"2 VMs are named '{name}'" in proc.stderr and a in proc.stderr and b in proc.stderr
    # Picking one by moref works.
    vsphere.backup(f"vm:moref={a}")
    assert len(generations(vsphere, name)) == 1


def test_a_vm_without_disks_keeps_its_metadata(vsphere: VSphereBed) -> None:
    name = unique("nodisk")
    vsphere.create_vm(name, [])
    proc = vsphere.backup(f"vm:{name}")
    assert "no disks to back up" in proc.stdout
    (gen,) = generations(vsphere, name)
    assert gen["disks"] == []
    md = manifest_json(vsphere, name, gen["generation"])["metadata"]
    assert md["vm"]["name"] == name and md["disks"] == [] and md["networks"]
    assert vsphere.snapshots(name) == []


def test_one_failing_vm_does_not_stop_the_others(vsphere: VSphereBed) -> None:
    good = unique("good")
    vsphere.create_vm(good, [4 * MiB], change_tracking=True)
    proc = vsphere.backup("vm:missing-one", f"vm:{good}", check=False)
    assert proc.returncode == 1
    assert "missing-one: FAILED: no VM named 'missing-one'" in proc.stderr
    assert f"{good}: generation" in proc.stdout
    assert len(generations(vsphere, good)) == 1


def test_dry_run_prints_the_plan_and_writes_nothing(vsphere: VSphereBed) -> None:
    name = unique("dry")
    vsphere.create_vm(name, [8 * MiB], change_tracking=True)
    vsphere.write(vsphere.disk_path(name), [(2 * MiB, b"z" * MiB)])
    mark = vsphere.stat_count()
    proc = vsphere.backup(f"vm:{name}", "--dry-run")
    assert "dry run, nothing written" in proc.stdout
    assert "would read scsi0-0" in proc.stdout and "1.0 MiB of 8.0 MiB" in proc.stdout
    assert "first backup" in proc.stdout
    assert generations(vsphere, name) == []
    assert vsphere.snapshots(name) == []
    assert vsphere.reads(mark) == []
