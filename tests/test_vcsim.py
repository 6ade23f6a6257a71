"""The test vCenter (tests/vcsim) against pyVmomi: login, TLS pinning, disks with real files,
changed-block tracking, clean shutdown."""
from __future__ import annotations

import gc
import hashlib
import json
import os
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from pyVmomi import vim

from fixtures_vcsim import (
    VCSim,
    VCSimProcess,
    connect,
    connected,
    create_vm,
    disconnect,
    get_properties,
    missing_toolchain,
    vm_disks,
    wait_task,
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


def test_unset_properties_read_as_none(vcsim: VCSim) -> None:
    # pyVmomi reads vm.snapshot with PropertyCollector.Fetch, which crashes the simulator's
    # handler when the property is unset; our front handler answers "unset" instead.
    with connected(vcsim) as si:
        vm = create_vm(si, unique("nosnap"))
        assert vm.snapshot is None
        assert vm.name  # the connection survived


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
        uuid_before = [l for l in descriptor.read_text().splitlines() if l.startswith("ddb.uuid")]

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
    assert [l for l in descriptor.read_text().splitlines() if l.startswith("ddb.uuid")] == uuid_before


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


# --- shutdown -----------------------------------------------------------------------------------

def test_sigterm_stops_and_removes_the_datastore_folders(tmp_path: Path) -> None:
    reason = missing_toolchain()
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
