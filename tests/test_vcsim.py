"""The test vCenter (tests/vcsim) against pyVmomi: login, TLS pinning, disks and VM files with
content, changed-block tracking, snapshot faults, storage profiles, the contract with the VDDK
stand-in, clean shutdown. See docs/vcsim.md."""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from pyVmomi import SoapStubAdapter, vim, vmodl

from fixtures_vcsim import (
    QUIESCE_FAULT_KEY,
    SIMULATOR_API_VERSION,
    SNAPSHOT_FAULT_KEY,
    TaskFailed,
    VCSim,
    VCSimProcess,
    attach_tag,
    changed_areas,
    connect,
    connected,
    create_vapp,
    create_vm,
    disconnect,
    find_by_name,
    flat_path,
    get_properties,
    pbm_content,
    set_extra_config,
    vapi_call,
    vcsim_unavailable,
    vm_disks,
    wait_task,
    write_disk,
)

MiB = 2**20
GiB = 2**30
CBT_GRANULARITY = 64 * 1024


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def served_certificate(info: VCSim) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((info.host, info.port)) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


# --- session, TLS -------------------------------------------------------------------------------

def test_login_with_the_right_password(vcsim: VCSim) -> None:
    si = connect(vcsim)
    try:
        assert si.content.about.apiType == "VirtualCenter"
        assert si.content.sessionManager.currentSession.userName == vcsim.user
    finally:
        disconnect(si)


def test_login_with_a_wrong_password_is_refused(vcsim: VCSim) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        connect(vcsim, password=vcsim.password + "-wrong")
    with pytest.raises(vim.fault.InvalidLogin):
        connect(vcsim, user="someone-else")


def test_thumbprint_is_the_served_certificate(vcsim: VCSim) -> None:
    der = served_certificate(vcsim)
    digest = hashlib.sha1(der).hexdigest().upper()
    assert vcsim.thumbprint == ":".join(digest[i:i + 2] for i in range(0, 40, 2))
    assert ssl.PEM_cert_to_DER_cert(vcsim.cert_pem) == der
    assert vcsim.url == f"https://{vcsim.server}/sdk"
    assert vcsim.host == "127.0.0.1"


def test_certificate_verifies_against_the_announced_pem(vcsim: VCSim) -> None:
    ctx = ssl.create_default_context(cadata=vcsim.cert_pem)
    with socket.create_connection((vcsim.host, vcsim.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # The system's CAs do not know it: an unpinned client must refuse it.
    with socket.create_connection((vcsim.host, vcsim.port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # pyVmomi drops the refused socket unclosed
def test_pinning_by_thumbprint(vcsim: VCSim) -> None:
    # Only the thumbprint vouches for the server here (the system CAs do not know it).
    # pyVim's SmartConnect first fetches the service versions without the thumbprint, so
    # thumbprint-only pinning goes through pyVim.connect.Connect.
    from pyVim.connect import Connect

    si = Connect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd=vcsim.password,
                 sslContext=ssl.create_default_context(), thumbprint=vcsim.thumbprint)
    disconnect(si)
    wrong = ":".join(["00"] * 20)
    with pytest.raises(vim.fault.HostConnectFault, match="thumbprint mismatch"):
        Connect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd=vcsim.password,
                sslContext=ssl.create_default_context(), thumbprint=wrong)
    gc.collect()  # its ResourceWarning belongs to this test


# --- inventory and datastores -------------------------------------------------------------------

def test_datastore_folders_exist_and_match_the_inventory(vcsim: VCSim) -> None:
    assert vcsim.datastores
    for folder in vcsim.datastores.values():
        assert folder.is_dir()
    with connected(vcsim) as si:
        dc = [e for e in si.content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        assert [d.name for d in dc] == [vcsim.datacenter]
        urls = {ds.name: ds.info.url for ds in dc[0].datastore}
    assert urls == {name: str(folder) for name, folder in vcsim.datastores.items()}


def test_networks_of_every_kind(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        dc = find_by_name(si, vim.Datacenter, vcsim.datacenter)
        names = [n.name for n in dc.network]
        assert len(names) == len(set(names))
        assert {"VM Network", "DC0_DVPG0", "DC0_NSX0"} <= set(names)
        kinds = {}
        for network in ("VM Network", "DC0_DVPG0", "DC0_NSX0"):
            vm = create_vm(si, unique("net"), [MiB], network=network)
            [nic] = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
            kinds[network] = type(nic.backing).__name__.rsplit(".", 1)[-1]
            assert [n.name for n in vm.network] == [network]  # decodable, and the right one
        assert kinds == {"VM Network": "NetworkBackingInfo",
                         "DC0_DVPG0": "DistributedVirtualPortBackingInfo",
                         "DC0_NSX0": "OpaqueNetworkBackingInfo"}


def test_custom_attributes_one_value_per_field(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("attrs"), [MiB])
        fields = si.content.customFieldsManager
        field = fields.AddCustomFieldDef(name=unique("owner"), moType=vim.VirtualMachine)
        fields.SetField(entity=vm, key=field.key, value="alice")
        vm.setCustomValue(key=field.name, value="bob")
        assert [(v.key, v.value) for v in vm.customValue] == [(field.key, "bob")]
        assert [(v.key, v.value) for v in vm.summary.customValue] == [(field.key, "bob")]
        assert field.name in [f.name for f in vm.availableField]


def test_generated_macs_are_assigned(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("mac"), [MiB])
        [nic] = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        assert nic.macAddress and nic.addressType == "assigned"
        model = find_by_name(si, vim.VirtualMachine, "DC0_H0_VM0")
        assert all(d.addressType in ("assigned", "generated") for d in model.config.hardware.device
                   if isinstance(d, vim.vm.device.VirtualEthernetCard))


def test_unset_properties_read_as_none(vcsim: VCSim) -> None:
    # pyVmomi reads vm.snapshot with PropertyCollector.Fetch, which crashes the simulator's
    # handler when the property is unset; our front handler answers "unset" instead.
    with connected(vcsim) as si:
        vm = create_vm(si, unique("nosnap"))
        assert vm.snapshot is None
        assert vm.name  # the connection survived


def test_a_crash_of_the_simulator_is_a_fault(vcsim: VCSim) -> None:
    # SearchDatastore_Task without a searchSpec crashes the simulator's handler (a known gap);
    # the client gets a SystemError instead of a dropped connection, and can go on.
    with connected(vcsim) as si:
        ds = find_by_name(si, vim.Datastore, "LocalDS_0")
        with pytest.raises(vmodl.fault.SystemError):
            ds.browser.SearchDatastore_Task(datastorePath="[LocalDS_0]")
        assert ds.name == "LocalDS_0"


# --- disks with real files ----------------------------------------------------------------------

def qemu_img_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def check_descriptor(descriptor: Path, capacity: int) -> Path:
    text = descriptor.read_text()
    lines = text.splitlines()
    assert lines[0] == "# Disk DescriptorFile"
    assert lines[1] == "version=1"
    assert 'createType="monolithicFlat"' in lines
    assert "parentCID=ffffffff" in lines
    flat = descriptor.with_name(descriptor.name.removesuffix(".vmdk") + "-flat.vmdk")
    assert f'RW {capacity // 512} FLAT "{flat.name}" 0' in lines
    for key in ("ddb.adapterType", "ddb.geometry.cylinders", "ddb.geometry.heads",
                "ddb.geometry.sectors", "ddb.virtualHWVersion", "ddb.uuid"):
        assert any(line.startswith(key + " = ") for line in lines), key
    assert flat.stat().st_size == capacity
    info = qemu_img_info(descriptor)
    assert info["format"] == "vmdk"
    assert info["virtual-size"] == capacity
    if shutil.which("vmdkinfo"):
        out = subprocess.run(["vmdkinfo", str(descriptor)], capture_output=True, text=True, check=True).stdout
        assert "Monolithic flat" in out and f"({capacity} bytes)" in out
    return flat


def test_created_vm_disk_has_descriptor_and_flat_file(vcsim: VCSim) -> None:
    name = unique("create")
    with connected(vcsim) as si:
        vm = create_vm(si, name, [64 * MiB])
        [disk] = vm_disks(vm.config)
    assert disk.backing.fileName == f"[LocalDS_0] {name}/{name}.vmdk"
    descriptor = vcsim.local_path(disk.backing.fileName)
    flat = check_descriptor(descriptor, 64 * MiB)
    assert flat.stat().st_blocks == 0  # thin: a hole, nothing written


def test_the_model_vms_have_disk_files(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
        vms = [vm for vm in view.view if vm.name.startswith("DC0_")]
        view.Destroy()
        assert vms
        for vm in vms:
            for disk in vm_disks(vm.config):
                check_descriptor(vcsim.local_path(disk.backing.fileName), disk.capacityInKB * 1024)


def test_growing_a_disk_grows_the_flat_file_and_keeps_data(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("grow"), [64 * MiB])
        [disk] = vm_disks(vm.config)
        descriptor = vcsim.local_path(disk.backing.fileName)
        flat = descriptor.with_name(descriptor.name.removesuffix(".vmdk") + "-flat.vmdk")
        with open(flat, "r+b") as f:
            f.seek(5 * MiB)
            f.write(b"repofs" * 100)
        uuid_before = [line for line in descriptor.read_text().splitlines() if line.startswith("ddb.uuid")]

        disk.capacityInKB = 96 * 1024
        disk.capacityInBytes = 96 * MiB
        spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)])
        wait_task(si, vm.ReconfigVM_Task(spec=spec))
        [grown] = vm_disks(vm.config)
        assert grown.capacityInBytes == 96 * MiB
    check_descriptor(descriptor, 96 * MiB)
    with open(flat, "rb") as f:
        f.seek(5 * MiB)
        assert f.read(600) == b"repofs" * 100
    assert [line for line in descriptor.read_text().splitlines() if line.startswith("ddb.uuid")] == uuid_before


def test_added_disk_gets_files(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("add"), [16 * MiB])
        [first] = vm_disks(vm.config)
        disk = vim.vm.device.VirtualDisk(
            key=-1, controllerKey=first.controllerKey, unitNumber=1,
            capacityInKB=8 * 1024, capacityInBytes=8 * MiB,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName="[LocalDS_1]", diskMode="persistent", thinProvisioned=True))
        spec = vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)])
        wait_task(si, vm.ReconfigVM_Task(spec=spec))
        disks = vm_disks(vm.config)
    assert len(disks) == 2
    second = [d for d in disks if d.key != first.key][0]
    assert second.backing.fileName.startswith("[LocalDS_1] ")
    check_descriptor(vcsim.local_path(second.backing.fileName), 8 * MiB)


def test_virtual_disk_manager_disks_get_files_only_on_success(vcsim: VCSim) -> None:
    folder = unique("loose")
    with connected(vcsim) as si:
        dc = find_by_name(si, vim.Datacenter, vcsim.datacenter)
        vdm = si.content.virtualDiskManager
        spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(capacityKb=4096, adapterType="lsiLogic",
                                                                diskType="thin")
        name = f"[LocalDS_1] {folder}/loose.vmdk"
        with pytest.raises(TaskFailed):  # no such folder yet, as in vCenter
            wait_task(si, vdm.CreateVirtualDisk_Task(name=name, datacenter=dc, spec=spec))
        assert not (vcsim.datastores["LocalDS_1"] / folder).exists()

        si.content.fileManager.MakeDirectory(name=f"[LocalDS_1] {folder}", datacenter=dc)
        wait_task(si, vdm.CreateVirtualDisk_Task(name=name, datacenter=dc, spec=spec))
        original = vcsim.local_path(name)
        check_descriptor(original, 4 * MiB)
        write_disk(vcsim, name, MiB, b"copied along")

        copy = f"[LocalDS_1] {folder}/copy.vmdk"
        wait_task(si, vdm.CopyVirtualDisk_Task(sourceName=name, sourceDatacenter=dc, destName=copy, destDatacenter=dc))
    copied = vcsim.local_path(copy)
    flat = check_descriptor(copied, 4 * MiB)  # names its own extent
    with open(flat, "rb") as f:
        f.seek(MiB)
        assert f.read(12) == b"copied along"
    uuids = {line for p in (original, copied) for line in p.read_text().splitlines() if line.startswith("ddb.uuid")}
    assert len(uuids) == 2  # a copy is another disk


def test_first_class_disk_gets_files(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        manager = vim.vslm.vcenter.VStorageObjectManager("VStorageObjectManager", si._stub)
        ds = find_by_name(si, vim.Datastore, "LocalDS_0")
        spec = vim.vslm.CreateSpec(
            name=unique("fcd"), capacityInMB=16,
            backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(datastore=ds, provisioningType="thin"))
        disk = wait_task(si, manager.CreateDisk_Task(spec=spec))
    check_descriptor(vcsim.local_path(disk.config.backing.filePath), 16 * MiB)


def test_datastore_files_need_a_session(vcsim: VCSim) -> None:
    import urllib.error
    import urllib.request

    with connected(vcsim) as si:
        vm = create_vm(si, unique("download"), [MiB])
        [disk] = vm_disks(vm.config)
        rel = disk.backing.fileName.split("] ", 1)[1]
        url = f"https://{vcsim.server}/folder/{rel}?dcPath={vcsim.datacenter}&dsName=LocalDS_0"
        ctx = ssl.create_default_context(cadata=vcsim.cert_pem)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, context=ctx)
        refused.value.close()
        assert refused.value.code == 401
        cookie = si._stub.cookie.split(";", 1)[0]
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), context=ctx) as r:
            assert r.read().startswith(b"# Disk DescriptorFile")


def test_vapi_login_checks_the_password(vcsim: VCSim) -> None:
    import base64
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cadata=vcsim.cert_pem)

    def login(password: str) -> int:
        token = base64.b64encode(f"{vcsim.user}:{password}".encode()).decode()
        req = urllib.request.Request(f"https://{vcsim.server}/rest/com/vmware/cis/session", method="POST",
                                     headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(req, context=ctx) as r:
                return r.status
        except urllib.error.HTTPError as e:
            e.close()
            return e.code

    assert login(vcsim.password) == 200
    assert login("wrong") == 401


# --- VM files, storage profiles, vApps, tags -------------------------------------------------------

def download(vcsim: VCSim, si: vim.ServiceInstance, datastore_path: str, body: bytes | None = None) -> bytes:
    """GET (or PUT, with body) a datastore file over /folder with the session's cookie."""
    import urllib.parse
    import urllib.request

    ds, _, rel = datastore_path[1:].partition("] ")
    query = urllib.parse.urlencode({"dcPath": vcsim.datacenter, "dsName": ds})
    url = f"https://{vcsim.server}/folder/{urllib.parse.quote(rel)}?{query}"
    req = urllib.request.Request(url, data=body, method="PUT" if body is not None else "GET",
                                 headers={"Cookie": si._stub.cookie.split(";", 1)[0]})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cadata=vcsim.cert_pem)) as r:
        return r.read()


def test_vmx_and_nvram_have_content(vcsim: VCSim) -> None:
    name = unique("vmx")
    with connected(vcsim) as si:
        vm = create_vm(si, name, [16 * MiB, 8 * MiB])
        vmx_path = vm.config.files.vmPathName
        assert vmx_path == f"[LocalDS_0] {name}/{name}.vmx"
        vmx = download(vcsim, si, vmx_path).decode()
        assert f'displayName = "{name}"' in vmx
        assert f'scsi0:0.fileName = "{name}.vmdk"' in vmx
        assert f'scsi0:1.fileName = "{name}_1.vmdk"' in vmx
        assert 'ethernet0.networkName = "VM Network"' in vmx
        assert 'ctkEnabled = "FALSE"' in vmx
        nvram = download(vcsim, si, f"[LocalDS_0] {name}/{name}.nvram")
        assert len(nvram) == 8684 and nvram.strip(b"\0")

        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        vmx = download(vcsim, si, vmx_path).decode()
        assert 'ctkEnabled = "TRUE"' in vmx and 'scsi0:0.ctkEnabled = "TRUE"' in vmx
        assert download(vcsim, si, f"[LocalDS_0] {name}/{name}.nvram") == nvram


def test_uploaded_vmx_is_left_alone(vcsim: VCSim) -> None:
    name = unique("upload")
    ours = f'.encoding = "UTF-8"\ndisplayName = "{name}"\nmemSize = "64"\n'.encode()
    with connected(vcsim) as si:
        dc = find_by_name(si, vim.Datacenter, vcsim.datacenter)
        pool = find_by_name(si, vim.ClusterComputeResource, "DC0_C0").resourcePool
        si.content.fileManager.MakeDirectory(name=f"[LocalDS_1] {name}", datacenter=dc)
        download(vcsim, si, f"[LocalDS_1] {name}/{name}.vmx", body=ours)
        vm = wait_task(si, dc.vmFolder.RegisterVM_Task(
            path=f"[LocalDS_1] {name}/{name}.vmx", name=name, asTemplate=False, pool=pool))
        assert vm.name == name
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="touched")))
        assert download(vcsim, si, f"[LocalDS_1] {name}/{name}.vmx") == ours


def test_storage_profiles_of_vms_and_disks(vcsim: VCSim) -> None:
    from pyVmomi import pbm

    with connected(vcsim) as si, pbm_content(vcsim, si) as content:
        manager = content.profileManager
        ids = manager.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"),
                                      profileCategory="REQUIREMENT")
        by_name = {p.name: p.profileId.uniqueId for p in manager.PbmRetrieveContent(profileIds=ids)}
        gold, other = by_name["vSAN Default Storage Policy"], by_name["VVol No Requirements Policy"]

        vm = create_vm(si, unique("pbm"), [MiB], profile=gold)
        [disk] = vm_disks(vm.config)

        def associated(key: str, kind: str = "virtualDiskId") -> list[str]:
            ref = pbm.ServerObjectRef(objectType=kind, key=key)
            return [p.uniqueId for p in manager.PbmQueryAssociatedProfile(entity=ref)]

        assert associated(vm._moId, "virtualMachine") == [gold]
        assert associated(f"{vm._moId}:{disk.key}") == [gold]

        added = vim.vm.device.VirtualDisk(
            key=-1, controllerKey=disk.controllerKey, unitNumber=1, capacityInKB=1024, capacityInBytes=MiB,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[LocalDS_0]", diskMode="persistent"))
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
            operation="add", fileOperation="create", device=added,
            profile=[vim.vm.DefinedProfileSpec(profileId=other)])])))
        [new] = [d for d in vm_disks(vm.config) if d.key != disk.key]
        results = manager.PbmQueryAssociatedProfiles(entities=[
            pbm.ServerObjectRef(objectType="virtualDiskId", key=f"{vm._moId}:{k}") for k in (disk.key, new.key)])
        assert [[p.uniqueId for p in r.profileId] for r in results] == [[gold], [other]]
        entities = manager.PbmQueryAssociatedEntity(profile=pbm.profile.ProfileId(uniqueId=other))
        assert [(e.objectType, e.key) for e in entities] == [("virtualDiskId", f"{vm._moId}:{new.key}")]


def test_vapp_config_and_members(vcsim: VCSim) -> None:
    name = unique("app")
    spec = vim.vApp.VAppConfigSpec(
        annotation="a vApp",
        product=[vim.vApp.ProductSpec(operation="add", info=vim.vApp.ProductInfo(key=0, name="repofs", version="1"))],
        property=[vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(
            key=1, id="ip", type="string", defaultValue="10.0.0.1", userConfigurable=True))],
        ipAssignment=vim.vApp.IPAssignmentInfo(ipAllocationPolicy="fixedPolicy", ipProtocol="IPv4"),
        eula=["be nice"])
    with connected(vcsim) as si:
        app = create_vapp(si, name, spec)
        vm = create_vm(si, f"{name}-vm", [MiB], vapp=app)
        assert vm.parentVApp == app and vm.resourcePool == app
        config = app.vAppConfig
        assert config.annotation == "a vApp"
        assert [(p.key, p.name) for p in config.product] == [(0, "repofs")]
        assert [(p.id, p.defaultValue) for p in config.property] == [("ip", "10.0.0.1")]
        assert config.ipAssignment.ipAllocationPolicy == "fixedPolicy"
        assert list(config.eula) == ["be nice"]
        assert [(e.key, e.tag) for e in config.entityConfig] == [(vm, f"{name}-vm")]

        app.UpdateVAppConfig(spec=vim.vApp.VAppConfigSpec(
            property=[vim.vApp.PropertySpec(operation="edit", info=vim.vApp.PropertyInfo(
                key=1, id="ip", type="string", defaultValue="10.0.0.2"))],
            product=[vim.vApp.ProductSpec(operation="remove", removeKey=0)],
            entityConfig=[vim.vApp.EntityConfigInfo(key=vm, tag="web", startOrder=2)]))
        config = app.vAppConfig
        assert [(p.id, p.defaultValue) for p in config.property] == [("ip", "10.0.0.2")]
        assert list(config.product) == []
        assert [(e.key, e.tag, e.startOrder) for e in config.entityConfig] == [(vm, "web", 2)]


def test_vm_vapp_options_are_kept(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("ovf"), [MiB])
        assert vm.config.vAppConfig is None
        options = vim.vApp.VmConfigSpec(
            property=[vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(
                key=0, id="hostname", type="string", value="db1"))],
            ovfEnvironmentTransport=["com.vmware.guestInfo"])
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfig=options)))
        config = vm.config.vAppConfig
        assert [(p.id, p.value) for p in config.property] == [("hostname", "db1")]
        assert list(config.ovfEnvironmentTransport) == ["com.vmware.guestInfo"]
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfigRemoved=True)))
        assert vm.config.vAppConfig is None


def test_tags_through_vapi(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("tagged"), [MiB])
        sid = vapi_call(vcsim, "POST", "/rest/com/vmware/cis/session")["value"]
        try:  # an empty listing is an empty list, as with vCenter
            assert vapi_call(vcsim, "POST",
                             "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-tags",
                             {"object_id": {"id": vm._moId, "type": "VirtualMachine"}}, session=sid) == {"value": []}
        finally:
            vapi_call(vcsim, "DELETE", "/rest/com/vmware/cis/session", session=sid)
        first = attach_tag(vcsim, vm, "backup", "nightly")
        second = attach_tag(vcsim, vm, "backup", "keep-30d")
        assert attach_tag(vcsim, vm, "backup", "nightly") == first  # found, not made twice
    sid = vapi_call(vcsim, "POST", "/rest/com/vmware/cis/session")["value"]
    try:
        attached = vapi_call(vcsim, "POST", "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-tags",
                             {"object_id": {"id": vm._moId, "type": "VirtualMachine"}}, session=sid)["value"]
    finally:
        vapi_call(vcsim, "DELETE", "/rest/com/vmware/cis/session", session=sid)
    assert sorted(attached) == sorted([first, second])


# --- changed-block tracking ---------------------------------------------------------------------

def snapshot_disk(snapshot: vim.vm.Snapshot, key: int) -> vim.vm.device.VirtualDisk:
    [disk] = [d for d in vm_disks(snapshot.config) if d.key == key]
    return disk


def take_snapshot(si: vim.ServiceInstance, vm: vim.VirtualMachine, name: str, ex: bool = False) -> vim.vm.Snapshot:
    if ex:
        task = vm.CreateSnapshotEx_Task(name=name, memory=False)
    else:
        task = vm.CreateSnapshot_Task(name=name, memory=False, quiesce=False)
    snapshot = wait_task(si, task)
    assert isinstance(snapshot, vim.vm.Snapshot)
    return snapshot


def round_out(start: int, length: int) -> tuple[int, int]:
    lo = start // CBT_GRANULARITY * CBT_GRANULARITY
    hi = -(-(start + length) // CBT_GRANULARITY) * CBT_GRANULARITY
    return lo, hi - lo


def test_snapshot_of_a_tracked_vm_carries_change_ids(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-ids"), [16 * MiB, 8 * MiB], change_tracking=True)
        assert vm.config.changeTrackingEnabled
        first = take_snapshot(si, vm, "first")
        ids = {d.key: d.backing.changeId for d in vm_disks(first.config)}
        assert all(ids.values()) and len(set(ids.values())) == 2  # one per disk
        assert {d.key: d.backing.changeId for d in vm_disks(vm.config)} == ids
        for disk in vm_disks(vm.config):
            write_disk(vcsim, disk.backing.fileName, 0, b"x" * 512)
        second = take_snapshot(si, vm, "second", ex=True)
        moved = {d.key: d.backing.changeId for d in vm_disks(second.config)}
        assert all(moved[k] != ids[k] for k in ids)  # change ids move on each snapshot
        # The first snapshot keeps its own config: the second did not rewrite it.
        assert {d.key: d.backing.changeId for d in vm_disks(first.config)} == ids


def test_snapshot_of_an_untracked_vm_has_no_change_ids(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("no-cbt"), [16 * MiB])
        snapshot = take_snapshot(si, vm, "plain")
        [disk] = vm_disks(snapshot.config)
        assert not disk.backing.changeId
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(snapshot=snapshot, deviceKey=disk.key, startOffset=0, changeId="x/0")


def test_changed_areas_since_a_change_id_in_pages(vcsim: VCSim) -> None:
    capacity = GiB  # several 256 MiB pages: the client has to loop
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-query"), [capacity], change_tracking=True)
        [disk] = vm_disks(vm.config)
        write_disk(vcsim, disk.backing.fileName, 900 * MiB, b"before the first snapshot")
        first = take_snapshot(si, vm, "first")
        since = snapshot_disk(first, disk.key).backing.changeId

        writes = [(0, 4096), (3 * CBT_GRANULARITY + 100, 10), (3 * CBT_GRANULARITY + 5000, 70000),
                  (300 * MiB, MiB), (capacity - 512, 512)]
        for offset, length in writes:
            write_disk(vcsim, disk.backing.fileName, offset, os.urandom(length))
        second = take_snapshot(si, vm, "second")

        areas, calls = changed_areas(vm, second, snapshot_disk(second, disk.key), since)
        assert calls == 4
        assert areas == [
            (0, CBT_GRANULARITY),
            (3 * CBT_GRANULARITY, 2 * CBT_GRANULARITY),  # two writes, rounded out and merged
            round_out(300 * MiB, MiB),
            (capacity - CBT_GRANULARITY, CBT_GRANULARITY),
        ]
        # Nothing changed between a snapshot and its own change id.
        assert changed_areas(vm, second, snapshot_disk(second, disk.key),
                             snapshot_disk(second, disk.key).backing.changeId)[0] == []
        assert changed_areas(vm, first, snapshot_disk(first, disk.key), since)[0] == []
        # A page ends where it says, and starts where asked.
        page = vm.QueryChangedDiskAreas(snapshot=second, deviceKey=disk.key, startOffset=256 * MiB, changeId=since)
        assert (page.startOffset, page.length) == (256 * MiB, 256 * MiB)
        assert [(a.start, a.length) for a in page.changedArea] == [round_out(300 * MiB, MiB)]


def test_star_answers_the_allocated_areas(vcsim: VCSim) -> None:
    capacity = 512 * MiB
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-star"), [capacity], change_tracking=True)
        [disk] = vm_disks(vm.config)
        write_disk(vcsim, disk.backing.fileName, 0, b"\x01" * 4096)
        write_disk(vcsim, disk.backing.fileName, 400 * MiB + 8192, b"\x02" * 100_000)
        snapshot = take_snapshot(si, vm, "full")
        areas, calls = changed_areas(vm, snapshot, snapshot_disk(snapshot, disk.key), "*")
    assert calls == 2
    assert areas == [(0, CBT_GRANULARITY), round_out(400 * MiB, 8192 + 100_000)]


def test_bad_change_ids_are_refused(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-bad"), [16 * MiB, 16 * MiB], change_tracking=True)
        snapshot = take_snapshot(si, vm, "s")
        one, two = vm_disks(snapshot.config)

        def query(change_id: str, key: int = one.key, offset: int = 0) -> object:
            return vm.QueryChangedDiskAreas(snapshot=snapshot, deviceKey=key, startOffset=offset, changeId=change_id)

        with pytest.raises(vmodl.fault.InvalidArgument):
            query("not a change id")
        with pytest.raises(vim.fault.FileFault):
            query(two.backing.changeId)  # another disk's
        uuid_part, _, position = one.backing.changeId.rpartition("/")
        with pytest.raises(vim.fault.FileFault):
            query(f"{uuid_part}/{int(position) + 1000}")  # from the future
        with pytest.raises(vmodl.fault.InvalidArgument):
            query(one.backing.changeId, key=99999)  # not a disk
        with pytest.raises(vmodl.fault.InvalidArgument):
            query(one.backing.changeId, offset=16 * MiB)  # past the end
        assert query(one.backing.changeId) is not None  # the connection is still fine


def test_switching_tracking_on_again_resets_it(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-reset"), [16 * MiB])
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        first = take_snapshot(si, vm, "first")
        [disk] = vm_disks(first.config)
        old = disk.backing.changeId
        assert old
        for on in (False, True):
            wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=on)))
        second = take_snapshot(si, vm, "second")
        new = snapshot_disk(second, disk.key).backing.changeId
        assert new.rpartition("/")[0] != old.rpartition("/")[0]
        with pytest.raises(vim.fault.FileFault):  # a backup then reads the disk in full
            vm.QueryChangedDiskAreas(snapshot=second, deviceKey=disk.key, startOffset=0, changeId=old)
        assert changed_areas(vm, second, snapshot_disk(second, disk.key), new)[0] == []


def test_query_needs_a_session(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-auth"), [16 * MiB], change_tracking=True)
        snapshot = take_snapshot(si, vm, "s")
        [disk] = vm_disks(snapshot.config)
        stub = SoapStubAdapter(host=vcsim.host, port=vcsim.port, path="/sdk", version=SIMULATOR_API_VERSION,
                               sslContext=ssl.create_default_context(cadata=vcsim.cert_pem))
        try:
            anonymous = vim.VirtualMachine(vm._moId, stub)
            with pytest.raises(vim.fault.NotAuthenticated):
                anonymous.QueryChangedDiskAreas(snapshot=vim.vm.Snapshot(snapshot._moId, stub), deviceKey=disk.key,
                                                startOffset=0, changeId=disk.backing.changeId)
            with pytest.raises(vim.fault.NotAuthenticated):
                anonymous.CreateSnapshot_Task(name="nope", memory=False, quiesce=False)
        finally:
            stub.DropConnections()


def test_writes_through_the_vddk_standin_are_tracked(
    vcsim: VCSim, vddk_libdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The contract with tests/vddk_standin: same datastore mapping, descriptors it accepts,
    its ctk log lines behind our change ids."""
    import vddk
    from fixtures_vddk import write_standin_config

    config = write_standin_config(
        tmp_path / "standin.conf", datastores=vcsim.datastores,
        server=vcsim.host, user=vcsim.user, password=vcsim.password, thumbprint=vcsim.thumbprint)
    monkeypatch.setenv("VDDK_STANDIN_CONFIG", str(config))
    with connected(vcsim) as si:
        vm = create_vm(si, unique("standin"), [32 * MiB], change_tracking=True)
        [disk] = vm_disks(vm.config)
        first = take_snapshot(si, vm, "first")
        since = snapshot_disk(first, disk.key).backing.changeId
        params = vddk.ConnectParams(server=vcsim.host, vmx_spec=f"moref={vm._moId}",
                                    thumbprint=vcsim.thumbprint, user=vcsim.user, password=vcsim.password)
        with vddk.open_library(vddk_libdir) as lib:
            with lib.connect(params, read_only=False) as conn, conn.open(disk.backing.fileName, read_only=False) as d:
                assert d.capacity == 32 * MiB
                assert d.info.adapter_type == "lsilogic"
                d.write_from(MiB, b"\xab" * 8192)
                d.write_from(20 * MiB + 4096, b"\xcd" * 512)
        second = take_snapshot(si, vm, "second")
        areas, _ = changed_areas(vm, second, snapshot_disk(second, disk.key), since)
        assert areas == [round_out(MiB, 8192), round_out(20 * MiB + 4096, 512)]
        everything, _ = changed_areas(vm, second, snapshot_disk(second, disk.key), "*")
        assert everything == areas
    with open(flat_path(vcsim.local_path(disk.backing.fileName)), "rb") as f:
        f.seek(MiB)
        assert f.read(8192) == b"\xab" * 8192


def test_first_class_disk_changed_blocks(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        manager = vim.vslm.vcenter.VStorageObjectManager("VStorageObjectManager", si._stub)
        ds = find_by_name(si, vim.Datastore, "LocalDS_1")
        spec = vim.vslm.CreateSpec(
            name=unique("fcd-cbt"), capacityInMB=64,
            backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(datastore=ds, provisioningType="thin"))
        disk = wait_task(si, manager.CreateDisk_Task(spec=spec))
        fcd_id, path = disk.config.id, disk.config.backing.filePath
        assert not manager.RetrieveVStorageObject(id=fcd_id, datastore=ds).config.changedBlockTrackingEnabled

        untracked = wait_task(si, manager.VStorageObjectCreateSnapshot_Task(id=fcd_id, datastore=ds, description="a"))
        assert not manager.RetrieveSnapshotDetails(id=fcd_id, datastore=ds, snapshotId=untracked).changedBlockTrackingId

        manager.SetVStorageObjectControlFlags(id=fcd_id, datastore=ds, controlFlags=["enableChangedBlockTracking"])
        assert manager.RetrieveVStorageObject(id=fcd_id, datastore=ds).config.changedBlockTrackingEnabled
        first = wait_task(si, manager.VStorageObjectCreateSnapshot_Task(id=fcd_id, datastore=ds, description="1"))
        details = manager.RetrieveSnapshotDetails(id=fcd_id, datastore=ds, snapshotId=first)
        assert details.path == path and details.changedBlockTrackingId
        write_disk(vcsim, path, 5 * MiB, b"changed" * 100)
        second = wait_task(si, manager.VStorageObjectCreateSnapshot_Task(id=fcd_id, datastore=ds, description="2"))

        info = manager.QueryChangedDiskAreas(id=fcd_id, datastore=ds, snapshotId=second, startOffset=0,
                                             changeId=details.changedBlockTrackingId)
        assert (info.startOffset, info.length) == (0, 64 * MiB)
        assert [(a.start, a.length) for a in info.changedArea] == [round_out(5 * MiB, 700)]
        everything = manager.QueryChangedDiskAreas(id=fcd_id, datastore=ds, snapshotId=second, startOffset=0,
                                                   changeId="*")
        assert [(a.start, a.length) for a in everything.changedArea] == [round_out(5 * MiB, 700)]
        with pytest.raises(vim.fault.FileFault):
            manager.QueryChangedDiskAreas(id=fcd_id, datastore=ds, snapshotId=untracked, startOffset=0,
                                          changeId=details.changedBlockTrackingId)

        wait_task(si, manager.DeleteSnapshot_Task(id=fcd_id, datastore=ds, snapshotId=first))
        with pytest.raises(vim.fault.NotFound):
            manager.RetrieveSnapshotDetails(id=fcd_id, datastore=ds, snapshotId=first)


def test_concurrent_backups_of_several_vms(vcsim: VCSim) -> None:
    """Snapshots, change ids and queries of several VMs at once stay per VM."""
    from concurrent.futures import ThreadPoolExecutor

    def one(n: int) -> list[tuple[int, int]]:
        with connected(vcsim) as si:
            vm = create_vm(si, unique(f"parallel{n}"), [64 * MiB], change_tracking=True)
            [disk] = vm_disks(vm.config)
            first = take_snapshot(si, vm, "first")
            since = snapshot_disk(first, disk.key).backing.changeId
            write_disk(vcsim, disk.backing.fileName, n * MiB, b"x" * 4096)
            second = take_snapshot(si, vm, "second")
            areas, _ = changed_areas(vm, second, snapshot_disk(second, disk.key), since)
            for snapshot in (second, first):
                wait_task(si, snapshot.RemoveSnapshot_Task(removeChildren=False))
            return areas

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(8)))
    assert results == [[round_out(n * MiB, 4096)] for n in range(8)]


def test_injected_snapshot_faults(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("faults"), [MiB], change_tracking=True)
        set_extra_config(si, vm, QUIESCE_FAULT_KEY, "TRUE")
        with pytest.raises(TaskFailed) as failed:
            wait_task(si, vm.CreateSnapshot_Task(name="q", memory=False, quiesce=True))
        assert isinstance(failed.value.fault, vim.fault.ApplicationQuiesceFault)
        with pytest.raises(TaskFailed):
            wait_task(si, vm.CreateSnapshotEx_Task(name="q", memory=False, quiesceSpec=vim.vm.GuestQuiesceSpec()))
        assert vm.snapshot is None
        take_snapshot(si, vm, "without quiescing")  # the retry a backup makes

        set_extra_config(si, vm, SNAPSHOT_FAULT_KEY, "TRUE")
        with pytest.raises(TaskFailed) as failed:
            take_snapshot(si, vm, "any")
        assert isinstance(failed.value.fault, vim.fault.SnapshotFault)
        set_extra_config(si, vm, SNAPSHOT_FAULT_KEY, "")
        take_snapshot(si, vm, "works again")
        assert len(vm.snapshot.rootSnapshotList[0].childSnapshotList) == 1


def test_a_template_is_not_snapshotted_and_an_encrypted_disk_shows_its_key(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("tmpl"), [MiB, MiB])
        disk = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)][1]
        key = vim.encryption.CryptoKeyId(keyId="k-9", providerId=vim.encryption.KeyProviderId(id="kms"))
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
            operation="edit", device=disk, backing=vim.vm.device.VirtualDeviceSpec.BackingSpec(
                crypto=vim.encryption.CryptoSpecEncrypt(cryptoKeyId=key)))])))
        keys = [d.backing.keyId for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        assert keys[0] is None and (keys[1].keyId, keys[1].providerId.id) == ("k-9", "kms")
        vm.MarkAsTemplate()
        with pytest.raises(vmodl.fault.NotSupported):
            vm.CreateSnapshot_Task(name="s", memory=False, quiesce=False)
        with pytest.raises(vmodl.fault.NotSupported):
            vm.CreateSnapshotEx_Task(name="s", memory=False)
        assert vm.snapshot is None
        vm.MarkAsVirtualMachine(pool=find_by_name(si, vim.ClusterComputeResource, "DC0_C0").resourcePool)
        take_snapshot(si, vm, "a VM again")


def test_snapshot_tasks_name_the_vm(vcsim: VCSim) -> None:
    from pyVim.task import WaitForTask

    with connected(vcsim) as si:
        vm = create_vm(si, unique("task-entity"), [MiB])
        snapshot = take_snapshot(si, vm, "s")
        task = snapshot.RemoveSnapshot_Task(removeChildren=False)
        assert WaitForTask(task) == "success"  # reads info.entity, which must be a ManagedEntity
        assert task.info.entity == vm and task.info.entityName == vm.name


def test_snapshot_removal_leaves_no_snapshot(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-remove"), [16 * MiB], change_tracking=True)
        first = take_snapshot(si, vm, "first")
        second = take_snapshot(si, vm, "second")
        wait_task(si, second.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        assert vm.snapshot.currentSnapshot == first
        wait_task(si, first.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        assert vm.snapshot is None
        assert "snapshot" not in get_properties(si, vm, ["snapshot"])


# --- processes ------------------------------------------------------------------------------------

def test_fresh_vcsim_is_a_process_of_its_own(vcsim: VCSim, fresh_vcsim: VCSim) -> None:
    assert fresh_vcsim.pid != vcsim.pid and fresh_vcsim.server != vcsim.server
    with connected(fresh_vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, "DC0_H0_VM0")
        wait_task(si, vm.PowerOffVM_Task())
        wait_task(si, vm.Destroy_Task())
        with pytest.raises(LookupError):
            find_by_name(si, vim.VirtualMachine, "DC0_H0_VM0")
    with connected(vcsim) as si:
        assert find_by_name(si, vim.VirtualMachine, "DC0_H0_VM0").name == "DC0_H0_VM0"


def test_sigterm_stops_and_removes_the_datastore_folders(tmp_path: Path) -> None:
    reason = vcsim_unavailable()
    if reason:
        pytest.skip(f"test vCenter unavailable: {reason}")
    proc = VCSimProcess(tmpdir=tmp_path)
    info = proc.start()
    try:
        folders = list(info.datastores.values())
        assert all(f.is_dir() for f in folders)
        assert all(f.is_relative_to(tmp_path) for f in folders)
        with connected(info) as si:
            create_vm(si, "before-shutdown")
    finally:
        status = proc.stop()
    assert status == 0
    assert not any(f.exists() for f in folders)
    assert proc.process is not None and proc.process.poll() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)


def test_sigint_stops_it_too(tmp_path: Path) -> None:
    reason = vcsim_unavailable()
    if reason:
        pytest.skip(f"test vCenter unavailable: {reason}")
    proc = VCSimProcess(tmpdir=tmp_path)
    info = proc.start()
    try:
        assert proc.process is not None
        proc.process.send_signal(signal.SIGINT)
        assert proc.process.wait(timeout=30) == 0
        assert not any(folder.exists() for folder in info.datastores.values())
    finally:
        proc.stop()


def test_stops_when_its_parent_goes_away(tmp_path: Path) -> None:
    """The fixture's safety net: with -exit-on-stdin-eof the simulator stops when stdin
    closes, as it does when the test process dies without stopping it."""
    reason = vcsim_unavailable()
    if reason:
        pytest.skip(f"test vCenter unavailable: {reason}")
    proc = VCSimProcess(tmpdir=tmp_path)
    info = proc.start()
    try:
        assert proc.process is not None and proc.process.stdin is not None
        proc.process.stdin.close()
        assert proc.process.wait(timeout=30) == 0
        assert not any(folder.exists() for folder in info.datastores.values())
    finally:
        proc.stop()
