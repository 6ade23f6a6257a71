"""``repofs restore vm:NAME`` into the test vCenter, disks written through the VDDK stand-in.

Each test backs up a VM of its own (unique names on the session's simulator) with
``repofs backup vm:NAME``, restores it with ``repofs restore`` and judges the result through
pyVmomi (what vCenter says) and ``qemu-img compare`` (the stand-in's files in the simulator's
datastore folders against the backup restored to a raw file).
"""
from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from pyVmomi import vim

from fixtures_restore import MiB, RestoreBed
from fixtures_vsphere import unique

VDDK_EXIT = 14
BUSY_EXIT = 11
NOT_FOUND_EXIT = 8


def disks_by_unit(info: dict) -> dict[int, vim.vm.device.VirtualDisk]:
    return {d.unitNumber: d for d in info["disks"]}


def test_restore_to_a_new_name(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-new")
    original = restore_bed.vm(b.vm)
    name = unique("rs-new-copy")
    proc = restore_bed.restore(f"vm:{b.vm}", "--name", name, "--json")
    out = json.loads(proc.stdout)[0]
    assert out["ok"] and out["vm"] == name
    assert out["steps"][:4] == ["create the VM", "restore the nvram", "place disks and map networks",
                                "prepare for access"]
    info = restore_bed.vm(name)
    assert info is not None and info["moref"] != original["moref"]
    cfg, ocfg = info["config"], original["config"]
    assert (cfg.hardware.numCPU, cfg.hardware.memoryMB, cfg.guestId) == \
        (ocfg.hardware.numCPU, ocfg.hardware.memoryMB, ocfg.guestId)
    assert [type(c).__name__ for c in info["controllers"]] == [type(c).__name__ for c in original["controllers"]]
    # New identity by default.
    assert cfg.uuid != ocfg.uuid and cfg.instanceUuid != ocfg.instanceUuid
    assert info["nics"][0].macAddress != original["nics"][0].macAddress
    # Disks: sizes, provisioning, contents.
    got, want = disks_by_unit(info), disks_by_unit(original)
    assert sorted(got) == sorted(want) == [0, 1]
    for unit, disk in got.items():
        assert disk.capacityInBytes == want[unit].capacityInBytes
        assert disk.backing.thinProvisioned == want[unit].backing.thinProvisioned
        label = f"scsi0-{unit}"
        assert restore_bed.same_disk(disk.backing.fileName, b.raws[label]), label
    # The NIC: same adapter, same network, connected at power-on as saved.
    nic = info["nics"][0]
    assert type(nic).__name__ == type(original["nics"][0]).__name__
    assert nic.backing.deviceName == "VM Network"
    assert nic.connectable.startConnected is True
    assert info["power"] == "poweredOff" and not info["snapshots"]
    # Holes were not written: the second disk (no data) saw no write at all.
    stats = [line.split() for line in restore_bed.bed.stats.read_text().splitlines()]
    written = {w[1] for w in stats if w[0] == "write"}
    assert any(name in p for p in written)
    assert not any(p.endswith(f"{name}_1.vmdk") for p in written)


def test_two_vms_in_one_command_default_names(restore_bed: RestoreBed) -> None:
    a = restore_bed.backed_up("rs-two-a", disks=(4 * MiB,), pieces={0: [(0, b"a" * 65536)]})
    b = restore_bed.backed_up("rs-two-b", disks=(4 * MiB,), pieces={0: [(MiB, b"b" * 65536)]})
    # A VM that cannot be restored does not stop the others; the exit status tells.
    proc = restore_bed.restore(f"vm:{a.vm}", "vm:no-such-vm", f"vm:{b.vm}", "--power-on", check=False)
    assert proc.returncode == 1 and "vm:no-such-vm: FAILED" in proc.stderr
    for backup in (a, b):
        info = restore_bed.vm(f"{backup.vm}-restored-{backup.generation}")
        assert info is not None and info["power"] == "poweredOn"
        assert restore_bed.same_disk(info["disks"][0].backing.fileName, backup.raws["scsi0-0"])


def test_overwrite_a_powered_off_vm(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-over")
    before = restore_bed.vm(b.vm)
    # The VM changes after the backup; the restore brings the backed-up disk back.
    restore_bed.bed.write(restore_bed.bed.disk_path(b.vm, 0), [(MiB, b"changed!" * 1024)])
    refused = restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, check=False)
    assert refused.returncode == BUSY_EXIT
    assert "--overwrite" in refused.stderr and "existing VM" in refused.stderr
    restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, "--overwrite", "--recover-identity")
    after = restore_bed.vm(b.vm)
    assert after is not None and after["moref"] != before["moref"]
    assert after["config"].uuid == before["config"].uuid  # --recover-identity
    assert after["nics"][0].macAddress == before["nics"][0].macAddress
    for unit, disk in disks_by_unit(after).items():
        assert restore_bed.same_disk(disk.backing.fileName, b.raws[f"scsi0-{unit}"])
    # Only one VM of that name, the replaced one is gone.
    assert restore_bed.vm(b.vm)["moref"] == after["moref"]


def test_powered_on_vm_is_refused_unless_forced(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-on", disks=(4 * MiB,), pieces={0: [(0, b"x" * 4096)]})
    restore_bed.power(b.vm, True)
    before = restore_bed.vm(b.vm)
    refused = restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, "--overwrite", check=False)
    assert refused.returncode == BUSY_EXIT and "--force" in refused.stderr
    still = restore_bed.vm(b.vm)
    assert still["moref"] == before["moref"] and still["power"] == "poweredOn"
    restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, "--overwrite", "--force")
    after = restore_bed.vm(b.vm)
    assert after["moref"] != before["moref"] and after["power"] == "poweredOff"


def test_import_from_the_saved_vmx(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-imp")
    name = unique("rs-imp-copy")
    out = json.loads(restore_bed.restore(f"vm:{b.vm}", "--name", name, "--import", "--json").stdout)[0]
    assert out["steps"][0] == "import the VM"
    info = restore_bed.vm(name)
    assert info is not None
    assert info["config"].hardware.memoryMB == 128 and len(info["nics"]) == 1
    assert sorted(disks_by_unit(info)) == [0, 1]
    for unit, disk in disks_by_unit(info).items():
        assert restore_bed.same_disk(disk.backing.fileName, b.raws[f"scsi0-{unit}"])
    vmx = restore_bed.local(info["config"].files.vmPathName).read_text()
    assert f'displayName = "{name}"' in vmx


def test_network_mapping(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-net", disks=(4 * MiB,), pieces={0: [(0, b"n" * 4096)]})
    name = unique("rs-net-dvs")
    restore_bed.restore(f"vm:{b.vm}", "--name", name, "--network", "VM Network=DC0_DVPG0")
    nic = restore_bed.vm(name)["nics"][0]
    assert isinstance(nic.backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert nic.backing.port.portgroupKey and nic.backing.port.switchUuid
    assert nic.connectable.startConnected is True
    # OLD= : the NIC comes back disconnected, with a warning.
    name2 = unique("rs-net-off")
    proc = restore_bed.restore(f"vm:{b.vm}", "--name", name2, "--network", "VM Network=")
    assert "disconnected" in proc.stdout
    nic2 = restore_bed.vm(name2)["nics"][0]
    assert nic2.connectable.startConnected is False


def test_missing_datastore_and_network_reported_before_any_change(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-miss", disks=(4 * MiB,), pieces={0: [(0, b"m" * 4096)]})
    before = restore_bed.inventory()
    proc = restore_bed.restore(f"vm:{b.vm}", "--datastore", "NoSuchDS", "--network", "VM Network=NoSuchNet",
                               "--datastore", "scsi9-9=LocalDS_1", check=False)
    assert proc.returncode == NOT_FOUND_EXIT
    err = proc.stderr
    assert "check options" in err and "NoSuchDS" in err and "NoSuchNet" in err and "scsi9-9" in err
    assert restore_bed.inventory() == before


def test_dry_run_changes_nothing(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-dry")
    before = restore_bed.inventory()
    proc = restore_bed.restore(f"vm:{b.vm}", "--dry-run", "--datastore", "scsi0-1=LocalDS_1")
    assert "dry run" in proc.stdout and "scsi0-1" in proc.stdout and "[LocalDS_1]" in proc.stdout
    assert "privileges: the session may do every step (checked)" in proc.stdout
    assert restore_bed.inventory() == before


def test_disk_on_another_datastore(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-ds")
    name = unique("rs-ds-copy")
    start = len(restore_bed.bed.stats.read_text().splitlines())
    restore_bed.restore(f"vm:{b.vm}", "--name", name, "--datastore", "scsi0-1=LocalDS_1", "--verify-written")
    stats = [line.split() for line in restore_bed.bed.stats.read_text().splitlines()[start:]]
    written = sorted((w[1], w[2], w[3]) for w in stats if w[0] == "write")
    assert written and written == sorted((r[1], r[2], r[3]) for r in stats if r[0] == "read")
    disks = disks_by_unit(restore_bed.vm(name))
    assert disks[0].backing.fileName.startswith("[LocalDS_0]")
    assert disks[1].backing.fileName.startswith("[LocalDS_1]")
    for unit, disk in disks.items():
        assert restore_bed.same_disk(disk.backing.fileName, b.raws[f"scsi0-{unit}"])


@pytest.mark.parametrize("transport", ["nbdssl:nbd", "san:nbdssl"])
def test_vddk_fault_mid_disk_undoes_everything(restore_bed: RestoreBed, transport: str) -> None:
    b = restore_bed.backed_up("rs-fault")
    before = restore_bed.inventory()
    restore_bed.bed.configure(fail_write_after=1)  # the second write fails
    try:
        name = unique("rs-fault-copy")
        proc = restore_bed.restore(f"vm:{b.vm}", "--name", name, "--transport", transport,
                                   "--threads", "1", check=False)
    finally:
        restore_bed.bed.configure()
    assert proc.returncode == VDDK_EXIT, proc.stderr
    assert "write the disks" in proc.stderr and "scsi0-0" in proc.stderr
    assert "undone" in proc.stderr and "LEFT BEHIND" not in proc.stderr
    assert restore_bed.vm(name) is None
    assert restore_bed.inventory() == before          # no VM, no snapshot, no stray file
    stats = restore_bed.bed.stats.read_text().splitlines()
    prepared = [line for line in stats if line.startswith("prepare ")]
    ended = [line for line in stats if line.startswith("end ")]
    assert prepared and len(ended) >= len(prepared) and not ended[-1].endswith("unpaired")
    assert restore_bed.bed.vcsim.password not in proc.stderr + proc.stdout


def test_generation_without_vsphere_metadata_is_refused(restore_bed: RestoreBed, tmp_path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(65536))
    restore_bed.bed.repofs("backup", f"file:{image}", "--vm", "plain-image")
    proc = restore_bed.restore("vm:plain-image", check=False)
    assert proc.returncode != 0 and "--to-dir" in proc.stderr


def test_restore_from_a_mounted_generation_folder(restore_bed: RestoreBed, tmp_path) -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("real mounts need root and /dev/fuse")
    b = restore_bed.backed_up("rs-from")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    restore_bed.bed.repofs("mount", str(restore_bed.bed.repo), str(mnt))
    try:
        folder = mnt / b.vm / "latest"
        name = unique("rs-from-copy")
        restore_bed.restore(f"vm:{b.vm}", "--from", str(folder), "--name", name)
    finally:
        subprocess.run([*restore_bed.bed.command()[:3], "umount", str(mnt)], env=restore_bed.bed.env(),
                       capture_output=True, timeout=60)
    info = restore_bed.vm(name)
    assert info is not None
    for unit, disk in disks_by_unit(info).items():
        assert restore_bed.same_disk(disk.backing.fileName, b.raws[f"scsi0-{unit}"])


def _move_into_new_folder_and_pool(restore_bed: RestoreBed, vm_name: str, folder: str, pool: str) -> None:
    from fixtures_vcsim import connected, find_by_name, wait_task
    with connected(restore_bed.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, vm_name)
        dc = find_by_name(si, vim.Datacenter, "DC0")
        f = dc.vmFolder.CreateFolder(folder)
        wait_task(si, f.MoveIntoFolder_Task([vm]))
        root = find_by_name(si, vim.ClusterComputeResource, "DC0_C0").resourcePool
        alloc = vim.ResourceAllocationInfo(reservation=0, limit=-1, expandableReservation=True,
                                           shares=vim.SharesInfo(level="normal", shares=0))
        p = root.CreateResourcePool(pool, vim.ResourceConfigSpec(cpuAllocation=alloc, memoryAllocation=alloc))
        # (the simulator has no MoveIntoResourcePool; a relocation to the pool does it)
        wait_task(si, vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(pool=p)))


def _remove_folder_and_pool(restore_bed: RestoreBed, vm_name: str, folder: str, pool: str) -> None:
    from fixtures_vcsim import connected, find_by_name, wait_task
    with connected(restore_bed.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, vm_name)
        dc = find_by_name(si, vim.Datacenter, "DC0")
        root = find_by_name(si, vim.ClusterComputeResource, "DC0_C0").resourcePool
        wait_task(si, dc.vmFolder.MoveIntoFolder_Task([vm]))
        wait_task(si, vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(pool=root)))
        wait_task(si, find_by_name(si, vim.Folder, folder).Destroy_Task())
        wait_task(si, find_by_name(si, vim.ResourcePool, pool).Destroy_Task())
        wait_task(si, vm.Destroy_Task())


def test_missing_folder_and_resource_pool_are_recreated_and_undone_on_failure(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-place", disks=(4 * MiB,), pieces={0: [(0, b"p" * 2 * MiB)]})
    folder, pool = unique("rs-folder"), unique("rs-pool")
    _move_into_new_folder_and_pool(restore_bed, b.vm, folder, pool)
    restore_bed.bed.backup(f"vm:{b.vm}")  # this generation remembers the folder and the pool
    _remove_folder_and_pool(restore_bed, b.vm, folder, pool)
    dry = restore_bed.restore(f"vm:{b.vm}", "--dry-run")
    assert f"to create: {folder}" in dry.stdout and f"to create: {pool}" in dry.stdout
    # A failure removes what the restore created, folder and pool included.
    before = restore_bed.inventory()
    restore_bed.bed.configure(fail_write_after=0)
    try:
        failed = restore_bed.restore(f"vm:{b.vm}", check=False)
    finally:
        restore_bed.bed.configure()
    assert failed.returncode == VDDK_EXIT and "write the disks" in failed.stderr
    assert restore_bed.inventory() == before
    # Then for real: the VM lands in a new folder and pool of the saved names.
    name = unique("rs-place-copy")
    restore_bed.restore(f"vm:{b.vm}", "--name", name, "--host", "DC0_C0_H1")
    info = restore_bed.vm(name)
    assert info["folder"] == folder and info["pool"] == pool and info["host"] == "DC0_C0_H1"
    assert restore_bed.same_disk(info["disks"][0].backing.fileName, b.raws["scsi0-0"])


def test_storage_profile(restore_bed: RestoreBed) -> None:
    from pyVmomi import pbm

    from fixtures_vcsim import connected, pbm_content

    policy = "Host-local PMem Default Storage Policy"  # one no other test associates
    b = restore_bed.backed_up("rs-prof", disks=(4 * MiB,), pieces={0: [(0, b"s" * 4096)]})
    missing = restore_bed.restore(f"vm:{b.vm}", "--storage-profile", "No Such Policy", check=False)
    assert missing.returncode == NOT_FOUND_EXIT and "No Such Policy" in missing.stderr
    assert policy in missing.stderr  # the ones that exist are named
    dry = restore_bed.restore(f"vm:{b.vm}", "--dry-run", "--storage-profile", policy)
    assert f"profile {policy}" in dry.stdout
    name = unique("rs-prof-copy")
    restore_bed.restore(f"vm:{b.vm}", "--name", name, "--storage-profile", policy)
    info = restore_bed.vm(name)
    with connected(restore_bed.vcsim) as si, pbm_content(restore_bed.vcsim, si) as content:
        mgr = content.profileManager
        ids = mgr.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"))
        want = next(p.profileId.uniqueId for p in mgr.PbmRetrieveContent(profileIds=ids) if p.name == policy)
        disk_id = f"{info['moref']}:{info['disks'][0].key}"
        for kind, key in (("virtualMachine", info["moref"]), ("virtualDiskId", disk_id)):
            got = mgr.PbmQueryAssociatedProfile(entity=pbm.ServerObjectRef(objectType=kind, key=key))
            assert [p.uniqueId for p in got] == [want], kind


def test_interrupt_during_the_writes_undoes_everything(restore_bed: RestoreBed) -> None:
    import signal
    import time
    # 24 MiB of data: six 4 MiB writes of 0.1 s each, one at a time — time to interrupt.
    b = restore_bed.backed_up("rs-int", disks=(32 * MiB,),
                              pieces={0: [(0, os.urandom(24 * MiB))]})
    before = restore_bed.inventory()
    restore_bed.bed.configure(delay_us=100_000)  # every VDDK call takes 0.1 s
    name = unique("rs-int-copy")
    cmd = restore_bed.bed.command(f"vm:{b.vm}", "--name", name, "--threads", "1")
    cmd[cmd.index("backup")] = "restore"
    start = len(restore_bed.bed.stats.read_text().splitlines())
    proc = subprocess.Popen(cmd, env=restore_bed.bed.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            lines = restore_bed.bed.stats.read_text().splitlines()[start:]
            if any(line.startswith("write ") for line in lines):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        restore_bed.bed.configure()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert restore_bed.vm(name) is None
    assert restore_bed.inventory() == before
    lines = restore_bed.bed.stats.read_text().splitlines()[start:]
    assert any(line.startswith("end ") for line in lines)


def test_a_saved_network_missing_here_leaves_the_nic_disconnected(restore_bed: RestoreBed) -> None:
    """A generation from another vCenter, whose NIC was on a network this one lacks: made here
    from a real backup's metadata with the network renamed, and the backed-up disks, through
    the local-image ingest."""
    from format.repository import Repository
    from repofs.ingest.backup import backup as ingest_backup
    from repofs.ingest.sources import LocalImage
    from repofs.view.tree import RepositoryView

    b = restore_bed.backed_up("rs-gone", disks=(4 * MiB,), pieces={0: [(0, b"g" * 8192)]})
    repo = Repository.open(str(restore_bed.bed.repo), None)
    meta = json.loads(json.dumps(RepositoryView(repo).generation(b.vm).metadata))
    meta["networks"][0]["network"] = "Network Of Elsewhere"
    images = [LocalImage.open(str(b.raws["scsi0-0"]))]
    try:
        ingest_backup(repo, b.vm, images, metadata=meta)
    finally:
        for image in images:
            image.close()
    name = unique("rs-gone-copy")
    proc = restore_bed.restore(f"vm:{b.vm}", "--name", name)
    assert "no network 'Network Of Elsewhere' here" in proc.stdout and "disconnected" in proc.stdout
    info = restore_bed.vm(name)
    assert info["nics"][0].connectable.startConnected is False
    assert restore_bed.same_disk(info["disks"][0].backing.fileName, b.raws["scsi0-0"])


def test_custom_attributes_come_back(restore_bed: RestoreBed) -> None:
    from fixtures_vcsim import connected, find_by_name, get_properties

    field_name = unique("rs-owner")
    b_name = unique("rs-attr")
    restore_bed.bed.create_vm(b_name, (4 * MiB,))
    with connected(restore_bed.vcsim) as si:
        mgr = si.content.customFieldsManager
        field = mgr.AddCustomFieldDef(name=field_name, moType=vim.VirtualMachine)
        mgr.SetField(entity=find_by_name(si, vim.VirtualMachine, b_name), key=field.key, value="team-a")
    restore_bed.bed.backup(f"vm:{b_name}")
    name = unique("rs-attr-copy")
    out = json.loads(restore_bed.restore(f"vm:{b_name}", "--name", name, "--json").stdout)[0]
    assert "custom attributes" in out["steps"]
    with connected(restore_bed.vcsim) as si:
        values = get_properties(si, find_by_name(si, vim.VirtualMachine, name), ["customValue"]).get("customValue")
        assert [(v.key, v.value) for v in values or []] == [(field.key, "team-a")]


def test_missing_vixdisklib_fails_before_any_change(restore_bed: RestoreBed, tmp_path) -> None:
    b = restore_bed.backed_up("rs-novddk", disks=(4 * MiB,), pieces={0: [(0, b"v" * 4096)]})
    before = restore_bed.inventory()
    cmd = restore_bed.bed.command(f"vm:{b.vm}")
    cmd[cmd.index("backup")] = "restore"
    cmd[cmd.index("--vddk-libdir") + 1] = str(tmp_path)  # no library there
    proc = subprocess.run(cmd, env=restore_bed.bed.env(), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == VDDK_EXIT and "libvixDiskLib" in proc.stderr
    assert restore_bed.inventory() == before


def test_an_incremental_of_changed_pieces_restores_exactly(restore_bed: RestoreBed) -> None:
    """A generation whose chunks are partly pieces laid over the previous generation's (CBT
    incremental) is written back through VixDiskLib as the source disks were at the backup."""
    b = restore_bed.backed_up("rs-pieces")
    rng = random.Random(5)
    bed = restore_bed.bed
    bed.write(bed.disk_path(b.vm, 0), [(MiB + 4096, rng.randbytes(8192)),        # over data
                                       (3 * MiB - 4096, rng.randbytes(8192)),    # into a hole
                                       (7 * MiB + 65536, rng.randbytes(4096))])
    bed.write(bed.disk_path(b.vm, 1), [(2 * MiB, rng.randbytes(4096))])          # an empty disk
    out = json.loads(bed.backup(f"vm:{b.vm}", "--json").stdout)[0]
    assert [(d["mode"], d["patched_slots"] > 0) for d in out["disks"]] == [("changed", True)] * 2
    name = unique("rs-pieces-copy")
    restore_bed.restore(f"vm:{b.vm}", "--name", name)
    for unit, disk in disks_by_unit(restore_bed.vm(name)).items():
        judge = subprocess.run(["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "vmdk",
                                str(restore_bed.local(disk.backing.fileName)), str(bed.disk_path(b.vm, unit))],
                               capture_output=True, text=True)
        assert judge.returncode == 0, (unit, judge.stdout, judge.stderr)
