"""More of ``repofs backup``'s vSphere side: vApps, first-class disks, snapshot faults and the
quiesce retry, networks and attributes in the metadata, the session's options. Same harness
as test_vsphere_backup.py (simulator + VDDK stand-in, CLI in a subprocess)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pyVmomi import pbm, vim

from fixtures_vcsim import (QUIESCE_FAULT_KEY, SNAPSHOT_FAULT_KEY, attach_tag, connected, create_vapp, create_vm,
                            find_by_name, pbm_content, set_extra_config, wait_task)
from fixtures_vsphere import MiB, VSphereBed, unique
from restore.backup import firstclass
from restore.vsphere.session import Credentials, Session, normalize_thumbprint, resolve_credentials, split_server
from restore.vsphere.errors import CredentialsMissing
from restore.vsphere.vmmeta import VMMetadata
from test_vsphere_backup import generations, manifest_json, restore_raw


def test_quiesce_failure_is_retried_once_without(vsphere: VSphereBed) -> None:
    name = unique("quiesce")
    with connected(vsphere.vcsim) as si:
        vm = create_vm(si, name, [4 * MiB], change_tracking=True)
        set_extra_config(si, vm, QUIESCE_FAULT_KEY, "TRUE")
    proc = vsphere.backup(f"vm:{name}", "--quiesce", "--json")
    out = json.loads(proc.stdout)[0]
    assert out["ok"] and any("taken without quiescing" in n for n in out["notes"])
    md = manifest_json(vsphere, name, generations(vsphere, name)[0]["generation"])["metadata"]
    assert md["snapshot"]["quiesced"] is False and md["snapshot"]["notes"]
    assert vsphere.snapshots(name) == []


def test_a_refused_snapshot_fails_the_vm_cleanly(vsphere: VSphereBed) -> None:
    name = unique("nosnap")
    with connected(vsphere.vcsim) as si:
        vm = create_vm(si, name, [4 * MiB], change_tracking=True)
        set_extra_config(si, vm, SNAPSHOT_FAULT_KEY, "TRUE")
    proc = vsphere.backup(f"vm:{name}", check=False)
    assert proc.returncode == 13
    assert f"cannot snapshot {name}" in proc.stderr
    assert generations(vsphere, name) == [] and vsphere.snapshots(name) == []


def test_vapp_backs_up_each_member_with_the_vapp_config(vsphere: VSphereBed) -> None:
    app = unique("vapp")
    names = [unique("member"), unique("member")]
    with connected(vsphere.vcsim) as si:
        vapp = create_vapp(si, app)
        for n in names:
            create_vm(si, n, [2 * MiB], change_tracking=True, vapp=vapp)
    proc = vsphere.backup(f"vapp:{app}")
    for n in names:
        assert f"{n}: generation" in proc.stdout
        (gen,) = generations(vsphere, n)
        md = manifest_json(vsphere, n, gen["generation"])["metadata"]
        assert md["vapp"]["name"] == app and md["vapp"]["vapp_config"]
        assert md["vapp"]["entity"] is not None
        assert vsphere.snapshots(n) == []


@pytest.mark.slow
def test_first_class_disk_full_then_incremental(vsphere: VSphereBed, tmp_path: Path) -> None:
    name = unique("fcd")
    with connected(vsphere.vcsim) as si:
        ds = find_by_name(si, vim.Datastore, "LocalDS_1")
        spec = vim.vslm.CreateSpec(name=name, capacityInMB=16, backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(
            datastore=ds, provisioningType="thin"))
        obj = wait_task(si, firstclass.manager(si).CreateDisk_Task(spec=spec))
        path = obj.config.backing.filePath
    local = vsphere.vcsim.local_path(path)
    vsphere.write(local, [(MiB, b"1" * MiB), (9 * MiB, b"2" * MiB)])
    first = json.loads(vsphere.backup(f"ivd:{name}", "--json").stdout)[0]
    assert first["ok"] and first["vm"] == f"ivd-{name}" and first["disks"][0]["mode"] == "full"
    vsphere.write(local, [(9 * MiB, b"3" * 65536)])
    mark = vsphere.stat_count()
    second = json.loads(vsphere.backup(f"ivd:{name}", "--json").stdout)[0]
    assert second["disks"][0]["mode"] == "changed"
    # only the changed 64 KiB is read (and stored as a piece of its chunk)
    assert [(o, n) for _, o, n in vsphere.reads(mark)] == [(9 * MiB, 65536)]
    gens = generations(vsphere, f"ivd-{name}")
    got = restore_raw(vsphere, f"ivd-{name}", gens[-1]["generation"], tmp_path / "r")
    want = bytearray(16 * MiB)
    want[MiB:2 * MiB] = b"1" * MiB
    want[9 * MiB:10 * MiB] = b"2" * MiB
    want[9 * MiB:9 * MiB + 65536] = b"3" * 65536
    assert got == bytes(want)
    md = manifest_json(vsphere, f"ivd-{name}", gens[-1]["generation"])["metadata"]
    assert md["kind"] == "ivd" and md["ivd"]["name"] == name and md["disks"][0]["file"] == path
    with connected(vsphere.vcsim) as si:
        assert firstclass.snapshots_of(si, firstclass.find(si, name)) == []


def test_metadata_of_networks_profiles_tags_and_attributes(vsphere: VSphereBed) -> None:
    dvs_vm, nsx_vm = unique("meta-dvs"), unique("meta-nsx")
    with connected(vsphere.vcsim) as si:
        with pbm_content(vsphere.vcsim, si) as content:
            mgr = content.profileManager
            ids = mgr.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"),
                                      profileCategory="REQUIREMENT")
            gold = next(p for p in mgr.PbmRetrieveContent(profileIds=ids) if p.name == "vSAN Default Storage Policy")
        vm = create_vm(si, dvs_vm, [2 * MiB], change_tracking=True, network="DC0_DVPG0",
                       profile=gold.profileId.uniqueId)
        create_vm(si, nsx_vm, [2 * MiB], change_tracking=True, network="DC0_NSX0")
        fields = si.content.customFieldsManager
        field = fields.AddCustomFieldDef(name=unique("owner"), moType=vim.VirtualMachine)
        fields.SetField(entity=vm, key=field.key, value="team-a")
        pg = next(n for n in find_by_name(si, vim.Datacenter, "DC0").network if n.name == "DC0_DVPG0")
        pg_key, switch_uuid = pg.key, pg.config.distributedVirtualSwitch.uuid
    tag_id = attach_tag(vsphere.vcsim, vm, "backup-policy", "nightly")
    proc = vsphere.backup(f"vm:{dvs_vm}", f"vm:{nsx_vm}")
    assert "Exception ignored" not in proc.stderr and "Warning" not in proc.stderr

    md = manifest_json(vsphere, dvs_vm, generations(vsphere, dvs_vm)[0]["generation"])["metadata"]
    assert md["custom_attributes"] == {field.name: "team-a"}
    assert md["tags"] == [{"id": tag_id, "name": "nightly", "description": None, "category": "backup-policy",
                           "category_id": md["tags"][0]["category_id"], "cardinality": "MULTIPLE"}]
    (nic,) = md["networks"]
    assert nic["kind"] == "distributed" and nic["portgroup_key"] == pg_key
    assert nic["switch_uuid"] == switch_uuid and nic["network"] == "DC0_DVPG0"
    assert md["storage_profile"] == [{"id": gold.profileId.uniqueId, "name": gold.name}]
    assert md["disks"][0]["storage_profiles"] == [{"id": gold.profileId.uniqueId, "name": gold.name}]
    assert md["files"]["vmx_path"].endswith(f"{dvs_vm}.vmx") and md["files"]["vmx"]
    assert md["placement"]["compute_resource"] == "DC0_C0"
    assert md["warnings"] == []
    # The typed schema reads the captured document and gives back the same JSON.
    typed = VMMetadata.from_json(md)
    assert typed.to_json() == md
    assert typed.networks[0].portgroup_key == pg_key and typed.disks[0].storage_profiles[0]["name"] == gold.name

    md = manifest_json(vsphere, nsx_vm, generations(vsphere, nsx_vm)[0]["generation"])["metadata"]
    (nic,) = md["networks"]
    assert nic["kind"] == "opaque" and nic["opaque_network_id"] and nic["opaque_network_type"]
    assert VMMetadata.from_json(md).to_json() == md


def test_session_inputs(vsphere: VSphereBed) -> None:
    assert split_server("vc.example.com") == ("vc.example.com", 443)
    assert split_server("vc:8443") == ("vc", 8443)
    assert split_server("https://vc.example.com/sdk") == ("vc.example.com", 443)
    assert split_server("[::1]:9443") == ("::1", 9443)
    assert normalize_thumbprint("aabbccddeeff00112233445566778899aabbccdd") == \
        "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD"
    with pytest.raises(CredentialsMissing, match="VSPHERE_SERVER"):
        resolve_credentials(None, None, None, env={}, interactive=False)
    creds = resolve_credentials(None, None, None, interactive=False,
                                env={"VSPHERE_SERVER": vsphere.vcsim.server, "VSPHERE_USER": vsphere.vcsim.user,
                                     "VSPHERE_PASSWORD": vsphere.vcsim.password})
    assert vsphere.vcsim.password and vsphere.vcsim.password not in repr(creds)
    assert vsphere.vcsim.password not in str(creds)
    with Session.login(creds, insecure=True) as s:
        assert s.cookie and s.trust.startswith("insecure") and s.thumbprint == vsphere.vcsim.thumbprint
    with Session.login(Credentials(vsphere.vcsim.server, vsphere.vcsim.user, vsphere.vcsim.password),
                       thumbprint=vsphere.vcsim.thumbprint.replace(":", "").lower()) as s:
        assert s.is_vcenter


@pytest.mark.slow
def test_two_disks_and_a_stale_snapshot(vsphere: VSphereBed, tmp_path: Path) -> None:
    name = unique("twodisks")
    with connected(vsphere.vcsim) as si:
        vm = create_vm(si, name, [4 * MiB, 6 * MiB], change_tracking=True)
        # Our name without our marker: reported, not removed (we cannot tell whose it is).
        wait_task(si, vm.CreateSnapshot_Task(name="repofs-backup-backup-killed", memory=False, quiesce=False))
    vsphere.write(vsphere.disk_path(name, 0), [(0, b"a" * MiB)])
    vsphere.write(vsphere.disk_path(name, 1), [(5 * MiB, b"b" * MiB)])
    first = vsphere.backup(f"vm:{name}")
    assert "repofs-backup-backup-killed has our name but not our marker" in first.stdout
    vsphere.write(vsphere.disk_path(name, 1), [(2 * MiB, b"c" * 65536)])
    mark = vsphere.stat_count()
    out = json.loads(vsphere.backup(f"vm:{name}", "--json").stdout)[0]
    assert [(d["label"], d["mode"], d["read_bytes"]) for d in out["disks"]] == \
        [("scsi0-0", "changed", 0), ("scsi0-1", "changed", 65536)]
    assert [(Path(p).name, o) for p, o, _ in vsphere.reads(mark)] == [(vsphere.disk_path(name, 1).name, 2 * MiB)]
    assert [n for n, _ in vsphere.snapshots(name)] == ["repofs-backup-backup-killed"]
    gen = generations(vsphere, name)[-1]["generation"]
    vsphere.repofs("restore", f"vm:{name}", "--to-dir", str(tmp_path / "r"), "--generation", gen)
    assert (tmp_path / "r" / "scsi0-0.raw").read_bytes() == b"a" * MiB + bytes(3 * MiB)
    want = bytearray(6 * MiB)
    want[5 * MiB:] = b"b" * MiB
    want[2 * MiB:2 * MiB + 65536] = b"c" * 65536
    assert (tmp_path / "r" / "scsi0-1.raw").read_bytes() == bytes(want)


def test_independent_disks_are_skipped_and_said_so(vsphere: VSphereBed) -> None:
    name = unique("indep")
    with connected(vsphere.vcsim) as si:
        vm = create_vm(si, name, [2 * MiB, 2 * MiB], change_tracking=True)
        dev = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)][1]
        dev.backing.diskMode = "independent_persistent"
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)])))
    proc = vsphere.backup(f"vm:{name}")
    assert "skipped scsi0-1" in proc.stdout and "independent disks are not in snapshots" in proc.stdout
    (gen,) = generations(vsphere, name)
    assert [d["label"] for d in gen["disks"]] == ["scsi0-0"]
    md = manifest_json(vsphere, name, gen["generation"])["metadata"]
    assert [d["backup_possible"] for d in md["disks"]] == [True, False]
    assert any("scsi0-1 not backed up" in w for w in md["warnings"])


def test_dry_run_without_change_tracking_changes_nothing(vsphere: VSphereBed) -> None:
    name = unique("drycbt")
    with connected(vsphere.vcsim) as si:
        vm = create_vm(si, name, [8 * MiB])
    vsphere.write(vsphere.disk_path(name), [(3 * MiB, b"q" * MiB)])
    proc = vsphere.backup(f"vm:{name}", "--dry-run")
    assert "a backup would turn it on" in proc.stdout
    assert "would read scsi0-0" in proc.stdout and "1.0 MiB of 8.0 MiB" in proc.stdout
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        assert not vm.config.changeTrackingEnabled
    assert generations(vsphere, name) == [] and vsphere.snapshots(name) == []


@pytest.mark.slow
def test_an_unusable_change_id_means_a_full_read(vsphere: VSphereBed, tmp_path: Path) -> None:
    name = unique("ctkreset")
    with connected(vsphere.vcsim) as si:
        create_vm(si, name, [4 * MiB], change_tracking=True)
    disk = vsphere.disk_path(name)
    vsphere.write(disk, [(0, b"r" * MiB)])
    vsphere.backup(f"vm:{name}")
    # The tracking log is lost (what a host crash or a storage migration can do).
    ctk = disk.with_name(disk.name[:-5] + "-ctk.log")
    ctk.write_bytes(b"")
    vsphere.write(disk, [(2 * MiB, b"s" * MiB)])
    out = json.loads(vsphere.backup(f"vm:{name}", "--json").stdout)[0]
    assert out["disks"][0]["mode"] == "full"
    assert "unusable" in out["plan"][0]["reason"] and "read in full" in out["plan"][0]["reason"]
    got = restore_raw(vsphere, name, generations(vsphere, name)[-1]["generation"], tmp_path / "r")
    assert got == b"r" * MiB + bytes(MiB) + b"s" * MiB + bytes(MiB)


def test_missing_vixdisklib_stops_the_run_and_leaves_no_snapshot(vsphere: VSphereBed, tmp_path: Path) -> None:
    names = [unique("novddk"), unique("novddk")]
    with connected(vsphere.vcsim) as si:
        for n in names:
            create_vm(si, n, [2 * MiB], change_tracking=True)
    empty = tmp_path / "no-vddk"
    empty.mkdir()
    args = vsphere.command(*(f"vm:{n}" for n in names))
    args[args.index("--vddk-libdir") + 1] = str(empty)
    proc = subprocess.run(args, env=vsphere.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 14
    assert "libvixDiskLib.so not found" in proc.stderr
    for n in names:
        assert vsphere.snapshots(n) == [] and generations(vsphere, n) == []
