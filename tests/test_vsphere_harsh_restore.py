"""Restore fidelity against the harsher test vCenter: what a restored VM keeps beyond its
hardware — the .nvram (EFI variables) also without --import, EFI with secure boot, thick lazy-
and eager-zeroed disks, disk UUIDs with --recover-identity, templates as templates — and what
is refused (encrypted VMs, a vTPM) rather than restored without its protection; with
--overwrite --recover-identity the set-aside original never shares the identity the new VM
takes, and gets its own back when the restore fails.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVmomi import vim, vmodl

from fixtures_restore import MiB, RestoreBed
from fixtures_vcsim import VCSim, connected, find_by_name, wait_task
from fixtures_vsphere import unique

UNSUPPORTED_EXIT = 12
VDDK_EXIT = 14


def _vm(si, name: str):
    return find_by_name(si, vim.VirtualMachine, name)


def _nvram(bed: RestoreBed, info: dict) -> bytes:
    vmx = bed.local(info["config"].files.vmPathName)
    return vmx.with_suffix(".nvram").read_bytes()


def _ddb_uuid(bed: RestoreBed, datastore_path: str) -> str:
    for line in bed.local(datastore_path).read_text().splitlines():
        if line.startswith("ddb.uuid"):
            return line.split("=", 1)[1].strip().strip('"').lower()
    raise AssertionError(f"no ddb.uuid in {datastore_path}")


def test_nvram_efi_secure_boot_and_thick_disks_come_back(restore_bed: RestoreBed) -> None:
    name = unique("rs-efi")
    bed = restore_bed.bed
    with connected(bed.vcsim) as si:
        from fixtures_vcsim import create_vm
        vm = create_vm(si, name, [4 * MiB])
        spec = vim.vm.ConfigSpec(
            firmware="efi", bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True),
            deviceChange=[vim.vm.device.VirtualDeviceSpec(
                operation="add", fileOperation="create", device=vim.vm.device.VirtualDisk(
                    key=-301 - u, controllerKey=vm.config.hardware.device[0].key
                    if isinstance(vm.config.hardware.device[0], vim.vm.device.VirtualSCSIController)
                    else next(d.key for d in vm.config.hardware.device
                              if isinstance(d, vim.vm.device.VirtualSCSIController)),
                    unitNumber=1 + u, capacityInKB=2048, capacityInBytes=2 * MiB,
                    backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                        fileName="[LocalDS_0]", diskMode="persistent", thinProvisioned=False,
                        eagerlyScrub=u == 1))) for u in range(2)])
        wait_task(si, vm.ReconfigVM_Task(spec=spec))
    bed.write(bed.disk_path(name, 0), [(MiB, b"efi!" * 4096)])
    bed.backup(f"vm:{name}")
    original = restore_bed.vm(name)
    copy = unique("rs-efi-copy")
    out = json.loads(restore_bed.restore(f"vm:{name}", "--name", copy, "--json").stdout)[0]
    assert "restore the nvram" in out["steps"]
    info = restore_bed.vm(copy)
    assert _nvram(restore_bed, info) == _nvram(restore_bed, original)
    assert info["config"].firmware == "efi"
    assert info["config"].bootOptions.efiSecureBootEnabled is True
    got = sorted((d.unitNumber, bool(d.backing.thinProvisioned), bool(d.backing.eagerlyScrub))
                 for d in info["disks"])
    assert got == [(0, True, False), (1, False, False), (2, False, True)]


def test_disk_uuids_with_recover_identity(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-duuid", disks=(4 * MiB,), pieces={0: [(0, b"u" * 65536)]})
    original = restore_bed.vm(b.vm)
    want = _ddb_uuid(restore_bed, original["disks"][0].backing.fileName)
    same = unique("rs-duuid-same")
    restore_bed.restore(f"vm:{b.vm}", "--name", same, "--recover-identity")
    info = restore_bed.vm(same)
    assert _ddb_uuid(restore_bed, info["disks"][0].backing.fileName) == want
    assert restore_bed.same_disk(info["disks"][0].backing.fileName, b.raws["scsi0-0"])
    fresh = unique("rs-duuid-new")
    restore_bed.restore(f"vm:{b.vm}", "--name", fresh)
    info = restore_bed.vm(fresh)
    assert _ddb_uuid(restore_bed, info["disks"][0].backing.fileName) != want


def test_a_template_is_backed_up_without_a_snapshot_and_restored_as_one(restore_bed: RestoreBed) -> None:
    """vCenter refuses to snapshot a template (the test vCenter too): the backup reads the
    template's own disks, every allocated block, says why, and the restore makes a template
    whose disk is the original's byte for byte."""
    import pytest
    from fixtures_vcsim import flat_path
    from test_vsphere_backup import generations, manifest_json
    bed = restore_bed.bed
    name = unique("rs-tmpl")
    bed.create_vm(name, [8 * MiB])
    bed.write(bed.disk_path(name, 0), [(MiB, b"t" * 65536), (5 * MiB, bytes(range(256)) * 4096)])
    with connected(bed.vcsim) as si:
        vm = _vm(si, name)
        vm.MarkAsTemplate()
        with pytest.raises(vmodl.fault.NotSupported):
            vm.CreateSnapshot_Task(name="not-for-templates", memory=False, quiesce=False)
    original = flat_path(bed.disk_path(name, 0)).read_bytes()
    dry = bed.backup(f"vm:{name}", "--dry-run")
    assert "a template" in dry.stdout and "would read scsi0-0" in dry.stdout, dry.stdout
    mark = bed.stat_count()
    out = json.loads(bed.backup(f"vm:{name}", "--json").stdout)[0]
    text = bed.backup(f"vm:{name}").stdout        # a second generation, said in words
    assert "read without a snapshot" in text and "snapshot None" not in text, text
    assert out["ok"] and out["snapshot"] is None, out
    assert out["plan"][0]["mode"] == "full" and "a template" in out["plan"][0]["reason"]
    assert any("without a snapshot" in n for n in out["notes"]), out["notes"]
    # the allocated blocks and nothing else: the two 1 MiB chunks that hold data, of eight,
    # at each of the two backups
    assert sum(n for _, _, n in bed.reads(mark)) == 2 * 2 * MiB
    gen = generations(bed, name)[0]["generation"]
    md = manifest_json(bed, name, gen)
    assert md["metadata"]["snapshot"] is None and md["metadata"]["vm"]["template"] is True
    assert md["metadata"]["change_tracking"]["trusted"] is False
    assert "a template" in md["metadata"]["change_tracking"]["why"]
    assert md["disks"][0]["read"]["mode"] == "full" and "a template" in md["disks"][0]["read"]["reason"]
    assert md["disks"][0]["snapshot"] is None
    with connected(bed.vcsim) as si:
        assert _vm(si, name).snapshot is None       # nothing was taken, nothing is left
    copy = unique("rs-tmpl-copy")
    out = json.loads(restore_bed.restore(f"vm:{name}", "--name", copy, "--power-on", "--json").stdout)[0]
    assert out["steps"][-1] == "mark as template"
    assert "a template is not powered on" in out["warnings"]
    info = restore_bed.vm(copy)
    assert info["config"].template is True and info["power"] == "poweredOff"
    restored = flat_path(restore_bed.local(info["disks"][0].backing.fileName))
    assert restored.read_bytes() == original
    # a second backup reads in full again (a template tracks nothing) and still restores
    again = json.loads(bed.backup(f"vm:{name}", "--json").stdout)[0]
    assert again["ok"] and again["plan"][0]["mode"] == "full"


def test_a_vm_with_a_vtpm_is_refused_not_restored_without_it(restore_bed: RestoreBed) -> None:
    b = restore_bed.backed_up("rs-tpm", disks=(4 * MiB,), pieces={0: [(0, b"p" * 4096)]})
    with connected(restore_bed.vcsim) as si:
        wait_task(si, _vm(si, b.vm).ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualTPM(key=-400))])))
    restore_bed.bed.backup(f"vm:{b.vm}")
    before = restore_bed.inventory()
    proc = restore_bed.restore(f"vm:{b.vm}", "--name", unique("rs-tpm-copy"), check=False)
    assert proc.returncode == UNSUPPORTED_EXIT, proc.stderr
    assert "virtual TPM" in proc.stderr and "Traceback" not in proc.stderr
    assert restore_bed.inventory() == before


def test_a_vm_whose_only_encrypted_part_is_one_disk_is_refused_naming_it(restore_bed: RestoreBed) -> None:
    """One disk encrypted (the VM's home is not): the backup records the disk's key provider,
    and the restore refuses the VM naming that disk, before any change."""
    b = restore_bed.backed_up("rs-crypt", disks=(4 * MiB, 2 * MiB), pieces={0: [(0, b"c" * 4096)]})
    key = vim.encryption.CryptoKeyId(keyId="k-1", providerId=vim.encryption.KeyProviderId(id="kmip-test"))
    with connected(restore_bed.vcsim) as si:
        vm = _vm(si, b.vm)
        disk = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)][1]
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(
                operation="edit", device=disk, backing=vim.vm.device.VirtualDeviceSpec.BackingSpec(
                    crypto=vim.encryption.CryptoSpecEncrypt(cryptoKeyId=key)))])))
    restore_bed.bed.backup(f"vm:{b.vm}")
    from test_vsphere_backup import generations, manifest_json
    md = manifest_json(restore_bed.bed, b.vm, generations(restore_bed.bed, b.vm)[-1]["generation"])["metadata"]
    assert md["vm"]["encryption"] is None
    assert [d["encryption"] for d in md["disks"]] == [None, {"key_id": "k-1", "provider": "kmip-test"}]
    before = restore_bed.inventory()
    proc = restore_bed.restore(f"vm:{b.vm}", "--name", unique("rs-crypt-copy"), check=False)
    assert proc.returncode == UNSUPPORTED_EXIT, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("repofs: error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "disk scsi0-1 (" in error[0] and "scsi0-0" not in error[0] and "kmip-test" in error[0]
    assert restore_bed.inventory() == before


def test_overwrite_with_recover_identity_never_shares_the_identity(restore_bed: RestoreBed) -> None:
    """The original is set aside with fresh UUIDs and MACs while the new VM takes the saved
    ones; when the restore fails, the original gets its own back."""
    b = restore_bed.backed_up("rs-ident", disks=(4 * MiB,), pieces={0: [(0, b"i" * 2 * MiB)]})
    before = restore_bed.vm(b.vm)
    restore_bed.bed.configure(fail_write_after=0)
    proc = restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, "--overwrite", "--recover-identity",
                               check=False)
    assert proc.returncode == VDDK_EXIT, proc.stderr
    assert "UUIDs and MAC addresses" in proc.stderr
    back = restore_bed.vm(b.vm)
    assert back["moref"] == before["moref"]
    assert (back["config"].uuid, back["config"].instanceUuid) == \
        (before["config"].uuid, before["config"].instanceUuid)
    assert back["nics"][0].macAddress == before["nics"][0].macAddress
    restore_bed.bed.configure()
    out = json.loads(restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, "--overwrite",
                                         "--recover-identity", "--json").stdout)[0]
    after = restore_bed.vm(b.vm)
    assert after["moref"] != before["moref"] and out["replaced"]
    assert after["config"].instanceUuid == before["config"].instanceUuid
    assert after["nics"][0].macAddress == before["nics"][0].macAddress


@pytest.fixture
def small_vcsim(tmp_path: Path) -> Iterator[VCSim]:
    """A simulator of its own whose datastores sit on a 256 MiB tmpfs: it reports the free
    space of its folders, so what is free no longer depends on the host's disk."""
    from fixtures_vcsim import _skip_without_toolchain, running_vcsim
    _skip_without_toolchain()
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        with running_vcsim(tmpdir=mnt) as info:
            yield info
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_datastore_without_room_is_refused_before_any_change(small_vcsim, tmp_path, monkeypatch) -> None:
    """A thick disk larger than the datastore's free space: the plan says so, nothing is made.
    The simulator books a thick disk's size against its datastore, so after adding one of
    1 GiB its 256 MiB datastore reports less free than the restored copy needs."""
    from fixtures_vsphere import make_bed
    bed = make_bed(small_vcsim, tmp_path / "bed", monkeypatch)
    rb = RestoreBed(bed)
    size = 1 << 30
    name = unique("rs-full")
    with connected(small_vcsim) as si:
        from fixtures_vcsim import create_vm
        vm = create_vm(si, name, [4 * MiB])
        ds = find_by_name(si, vim.Datastore, "LocalDS_0")
        assert 0 < ds.summary.freeSpace < size, "the datastore must start with less free than the disk"
        ctrl = next(d.key for d in vm.config.hardware.device
                    if isinstance(d, vim.vm.device.VirtualSCSIController))
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create",
                                            device=vim.vm.device.VirtualDisk(
                key=-300, controllerKey=ctrl, unitNumber=1, capacityInKB=size // 1024,
                capacityInBytes=size, backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                    fileName="[LocalDS_0]", diskMode="persistent", thinProvisioned=False)))])))
    bed.write(bed.disk_path(name, 1), [(0, b"f" * 65536)])
    bed.backup(f"vm:{name}")
    before = rb.inventory()
    proc = rb.restore(f"vm:{name}", "--name", unique("rs-full-copy"), check=False)
    assert proc.returncode == 8, proc.stderr  # check options
    assert "LocalDS_0 has" in proc.stderr and "free, the disks need 1.0 GiB" in proc.stderr
    assert rb.inventory() == before


def test_a_restore_killed_mid_write_is_named_by_the_next_run(restore_bed: RestoreBed) -> None:
    """kill -9 while --overwrite writes: the original is left set aside under its
    -repofs-replaced- name beside the incomplete copy; the next run of the same command
    changes nothing and names both."""
    import os
    import signal
    import subprocess
    import time

    from fixtures_vddk import read_stats
    b = restore_bed.backed_up("rs-kill", disks=(4 * MiB,), pieces={0: [(0, b"k" * 2 * MiB)]})
    original = restore_bed.vm(b.vm)
    bed = restore_bed.bed
    bed.configure(hang_write_after=0)
    cmd = bed.command(f"vm:{b.vm}", "--name", b.vm, "--overwrite")
    cmd[cmd.index("backup")] = "restore"
    proc = subprocess.Popen(cmd, env=bed.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(w[0] == "hang" for w in read_stats(bed.stats)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    bed.configure()
    before = restore_bed.inventory()
    again = restore_bed.restore(f"vm:{b.vm}", "--name", b.vm, "--overwrite", check=False)
    assert again.returncode == 11, again.stderr
    assert f"{b.vm}-repofs-replaced-" in again.stderr and original["moref"] in again.stderr
    assert "incomplete copy" in again.stderr
    assert restore_bed.inventory() == before


def test_tags_are_reapplied(restore_bed: RestoreBed) -> None:
    from fixtures_vcsim import attach_tag, vapi_call
    b = restore_bed.backed_up("rs-tags", disks=(4 * MiB,), pieces={0: [(0, b"g" * 4096)]})
    with connected(restore_bed.vcsim) as si:
        tag_id = attach_tag(restore_bed.vcsim, _vm(si, b.vm), "repofs-restore-cat", "gold")
    restore_bed.bed.backup(f"vm:{b.vm}")
    copy = unique("rs-tags-copy")
    out = json.loads(restore_bed.restore(f"vm:{b.vm}", "--name", copy, "--json").stdout)[0]
    assert "tags" in out["steps"] and not any("tag" in w for w in out["warnings"])
    moref = restore_bed.vm(copy)["moref"]
    sid = vapi_call(restore_bed.vcsim, "POST", "/rest/com/vmware/cis/session")["value"]
    try:
        attached = vapi_call(restore_bed.vcsim, "POST",
                             "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-tags",
                             {"object_id": {"id": moref, "type": "VirtualMachine"}}, session=sid)["value"]
    finally:
        vapi_call(restore_bed.vcsim, "DELETE", "/rest/com/vmware/cis/session", session=sid)
    assert attached == [tag_id]


def test_a_vapp_member_goes_back_into_its_vapp_made_again_when_gone(restore_bed: RestoreBed) -> None:
    from fixtures_vcsim import create_vapp, create_vm
    app, member = unique("rs-vapp"), unique("rs-member")
    with connected(restore_bed.vcsim) as si:
        dns = vim.vApp.PropertyInfo(key=1, id="dns", type="string", value="10.0.0.53", defaultValue="")
        vapp = create_vapp(si, app, vim.vApp.VAppConfigSpec(annotation="the gold application", property=[
            vim.vApp.PropertySpec(operation="add", info=dns)]))
        vm = create_vm(si, member, [2 * MiB], change_tracking=True, vapp=vapp)
        # every start-up setting away from the default a new member gets (order 1, 120 s,
        # powerOn, powerOff, no waiting, destroyed with the vApp)
        vapp.UpdateVAppConfig(spec=vim.vApp.VAppConfigSpec(entityConfig=[
            vim.vApp.EntityConfigInfo(key=vm, startOrder=3, startDelay=7, waitingForGuest=True,
                                      startAction="none", stopDelay=11, stopAction="guestShutdown",
                                      destroyWithParent=False)]))
    restore_bed.bed.write(restore_bed.bed.disk_path(member, 0), [(0, b"v" * 65536)])
    restore_bed.bed.backup(f"vm:{member}")
    from test_vsphere_backup import generations, manifest_json
    saved = manifest_json(restore_bed.bed, member, generations(restore_bed.bed, member)[-1]["generation"])
    assert saved["metadata"]["vapp"]["entity"]["stopAction"] == "guestShutdown"
    want = (3, 7, True, "none", 11, "guestShutdown", False)

    def entity_of(si, vapp_name: str, vm_name: str):
        app_obj = find_by_name(si, vim.VirtualApp, vapp_name)
        target = _vm(si, vm_name)
        e = next(e for e in app_obj.vAppConfig.entityConfig if e.key._moId == target._moId)
        return app_obj, (e.startOrder, e.startDelay, e.waitingForGuest, e.startAction, e.stopDelay,
                         e.stopAction, e.destroyWithParent)

    def vapp_properties(si, vapp_name: str) -> dict[str, str]:
        app_obj = find_by_name(si, vim.VirtualApp, vapp_name)
        return {p.id: p.value for p in app_obj.vAppConfig.property or []}

    with connected(restore_bed.vcsim) as si:   # since the backup: dns removed, ntp added
        find_by_name(si, vim.VirtualApp, app).UpdateVAppConfig(spec=vim.vApp.VAppConfigSpec(property=[
            vim.vApp.PropertySpec(operation="remove", removeKey=1),
            vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(
                key=2, id="ntp", type="string", value="10.0.0.123", defaultValue=""))]))
    copy = unique("rs-vapp-copy")
    out = json.loads(restore_bed.restore(f"vm:{member}", "--name", copy, "--json").stdout)[0]
    assert not any("outside any vApp" in w for w in out["warnings"])
    assert any("lacked properties" in w and "dns" in w for w in out["warnings"]), out["warnings"]
    assert restore_bed.vm(copy)["pool"] == app
    with connected(restore_bed.vcsim) as si:
        _app, entity = entity_of(si, app, copy)
        assert entity == want
        assert vapp_properties(si, app) == {"ntp": "10.0.0.123", "dns": "10.0.0.53"}
        wait_task(si, find_by_name(si, vim.VirtualApp, app).Destroy_Task())
    again = unique("rs-vapp-again")
    out = json.loads(restore_bed.restore(f"vm:{member}", "--name", again, "--json").stdout)[0]
    assert "vApp" in out["steps"]
    assert restore_bed.vm(again)["pool"] == app
    with connected(restore_bed.vcsim) as si:
        app_obj, entity = entity_of(si, app, again)
        assert app_obj.vAppConfig.annotation == "the gold application"
        assert entity == want
        assert vapp_properties(si, app) == {"dns": "10.0.0.53"}
    b = restore_bed.restore(f"vm:{member}", "--name", unique("rs-vapp-x"), "--json")
    assert json.loads(b.stdout)[0]["ok"]


def test_a_first_class_disk_is_restored_as_one(restore_bed: RestoreBed) -> None:
    from fixtures_vcsim import flat_path
    from restore.backup import firstclass
    bed = restore_bed.bed
    name = unique("rs-fcd")
    with connected(bed.vcsim) as si:
        ds = find_by_name(si, vim.Datastore, "LocalDS_1")
        obj = wait_task(si, firstclass.manager(si).CreateDisk_Task(spec=vim.vslm.CreateSpec(
            name=name, capacityInMB=8, backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(
                datastore=ds, provisioningType="thin"))))
    local = bed.vcsim.local_path(obj.config.backing.filePath)
    bed.write(local, [(MiB, b"F" * MiB), (6 * MiB, b"D" * 65536)])
    want = flat_path(local).read_bytes()
    bed.backup(f"ivd:{name}")
    copy = unique("rs-fcd-copy")
    out = json.loads(restore_bed.restore(f"ivd:{name}", "--name", copy, "--datastore", "LocalDS_0",
                                         "--json").stdout)[0]
    assert out["ok"] and out["first_class_disk"] == copy and out["steps"] == ["create", "write"]
    with connected(bed.vcsim) as si:
        restored = firstclass.find(si, copy)
        assert restored.datastore_name == "LocalDS_0" and restored.capacity == 8 * MiB
        path = restored.path
    assert flat_path(bed.vcsim.local_path(path)).read_bytes() == want
    taken = restore_bed.restore(f"ivd:{name}", "--name", copy, "--datastore", "LocalDS_0", check=False)
    assert taken.returncode == 11 and "first-class disk named" in taken.stderr
    bed.configure(fail_write_after=0)
    failed = restore_bed.restore(f"ivd:{name}", "--name", unique("rs-fcd-fail"), check=False)
    assert failed.returncode == VDDK_EXIT and "undone: first-class disk" in failed.stderr
    bed.configure()
    with connected(bed.vcsim) as si:
        import pytest
        with pytest.raises(Exception, match="no first-class disk"):
            firstclass.find(si, failed.stderr.split("first-class disk ")[-1].split(" ")[0])


def test_a_first_class_disk_keeps_its_storage_profile(restore_bed: RestoreBed) -> None:
    """The profile a first-class disk has (PBM, object type virtualDiskUUID) is recorded by the
    backup and given to the restored disk (VslmCreateSpec.profile), found by its name;
    --storage-profile chooses another, and one that does not exist is refused before anything
    is made."""
    from pyVmomi import pbm
    from fixtures_vcsim import flat_path, pbm_content
    from restore.backup import firstclass
    from test_vsphere_backup import generations, manifest_json
    bed = restore_bed.bed
    name = unique("rs-fcdp")
    with connected(bed.vcsim) as si, pbm_content(bed.vcsim, si) as content:
        mgr = content.profileManager
        ids = mgr.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"))
        by_name = {p.name: p.profileId.uniqueId for p in mgr.PbmRetrieveContent(profileIds=ids)}
        # policies whose associated entities no other test counts
        gold, other = "vSAN Default Storage Policy", "Host-local PMem Default Storage Policy"
        ds = find_by_name(si, vim.Datastore, "LocalDS_1")
        obj = wait_task(si, firstclass.manager(si).CreateDisk_Task(spec=vim.vslm.CreateSpec(
            name=name, capacityInMB=4, profile=[vim.vm.DefinedProfileSpec(profileId=by_name[gold])],
            backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(datastore=ds, provisioningType="thin"))))
    local = bed.vcsim.local_path(obj.config.backing.filePath)
    bed.write(local, [(MiB, b"P" * 65536)])
    want = flat_path(local).read_bytes()
    bed.backup(f"ivd:{name}")
    saved = manifest_json(bed, f"ivd-{name}", generations(bed, f"ivd-{name}")[-1]["generation"])
    assert saved["metadata"]["disks"][0]["storage_profiles"] == [{"id": by_name[gold], "name": gold}]

    def profile_of(disk_name: str) -> list[str]:
        with connected(bed.vcsim) as si, pbm_content(bed.vcsim, si) as content:
            disk = firstclass.find(si, disk_name)
            got = content.profileManager.PbmQueryAssociatedProfile(
                entity=pbm.ServerObjectRef(objectType="virtualDiskUUID", key=disk.id))
            return [p.uniqueId for p in got]

    copy = unique("rs-fcdp-copy")
    out = json.loads(restore_bed.restore(f"ivd:{name}", "--name", copy, "--json").stdout)[0]
    assert out["ok"] and out["storage_profile"] == gold and out["warnings"] == []
    assert profile_of(copy) == [by_name[gold]]
    with connected(bed.vcsim) as si:
        path = firstclass.find(si, copy).path
    assert flat_path(bed.vcsim.local_path(path)).read_bytes() == want
    chosen = unique("rs-fcdp-other")
    restore_bed.restore(f"ivd:{name}", "--name", chosen, "--storage-profile", other)
    assert profile_of(chosen) == [by_name[other]]
    before = restore_bed.inventory()
    missing = restore_bed.restore(f"ivd:{name}", "--name", unique("rs-fcdp-no"),
                                  "--storage-profile", "No Such Policy", check=False)
    assert missing.returncode == 8 and "No Such Policy" in missing.stderr and gold in missing.stderr
    assert "Traceback" not in missing.stderr and restore_bed.inventory() == before
