"""The typed metadata schema (restore/vsphere/vmmeta.py): the contract between a vSphere backup
and its restore. A document passes through unchanged (unknown keys kept, absent keys left
absent); a malformed one is refused with one MetadataError that names the field. The round trip
of real captured documents runs in tests/test_vsphere_backup_more.py (the simulator)."""
from __future__ import annotations

import copy
import json

import pytest

from restore.vsphere.errors import MetadataError
from restore.vsphere.vmmeta import MAX_DEPTH, MAX_ITEMS, SCHEMA, DiskMeta, NicMeta, VMMetadata

DOC = {
    "schema": SCHEMA, "kind": "vm", "captured_at": "2026-11-30T10:00:00Z",
    "source": {"server": "vc", "port": 443, "api_type": "VirtualCenter"},
    "vm": {"name": "web01", "moref": "vm-42", "uuid": "u", "instance_uuid": "i",
           "power_state": "poweredOn", "template": False},
    "placement": {"datacenter": "DC0", "datacenter_moref": "datacenter-2", "folder_path": "/DC0/vm",
                  "folder_moref": "group-v3", "resource_pool_path": "/DC0/host/C0/Resources",
                  "resource_pool_moref": "resgroup-1", "host": "h1", "host_moref": "host-1",
                  "compute_resource": "C0", "compute_resource_moref": "domain-c1",
                  "datastores": ["LocalDS_0"], "folder_relative": ""},
    "vapp": None,
    "config": {"name": "web01", "numCPU": 2, "extraConfig": {"a": "b"}},
    "config_full": {"files": {"vmPathName": "[LocalDS_0] web01/web01.vmx"}},
    "controllers": [{"key": 1000, "type": "ParaVirtualSCSIController", "bus": 0, "devices": [2000]}],
    "devices": [{"_type": "VirtualDisk", "key": 2000}],
    "disks": [{"label": "scsi0-0", "key": 2000, "device_label": "Hard disk 1", "uuid": None,
               "capacity_bytes": 2 << 20, "mode": "persistent", "provisioning": "thin", "sharing": None,
               "write_through": False, "backing_type": "FlatVer2BackingInfo",
               "controller": {"key": 1000, "type": "ParaVirtualSCSIController", "bus": 0}, "unit": 0,
               "datastore": "LocalDS_0", "datastore_moref": "datastore-1",
               "file": "[LocalDS_0] web01/web01.vmdk", "directory": "web01", "change_id": "52 aa/7",
               "content_id": "c", "storage_io": {"limit": -1}, "backup_possible": True,
               "skip_reason": None, "storage_profiles": [{"id": "p", "name": "gold"}]}],
    "networks": [{"key": 4000, "label": "Network adapter 1", "adapter": "VirtualVmxnet3",
                  "mac_address": "00:50:56:00:00:01", "address_type": "assigned", "wake_on_lan": True,
                  "start_connected": True, "connected": True, "controller_key": 100, "unit": 7,
                  "kind": "standard", "network": "VM Network", "network_moref": None}],
    "storage_profile": [{"id": "p", "name": "gold"}],
    "custom_attributes": {"owner": "team-a"},
    "tags": None,
    "files": {"vmx_path": "[LocalDS_0] web01/web01.vmx", "nvram_path": None, "vmx": "x = 1\n",
              "layout": [{"name": "[LocalDS_0] web01/web01.vmx", "type": "config", "size": 6}]},
    "snapshot": {"moref": "snapshot-9", "name": "repofs-backup", "quiesced": False, "notes": []},
    "warnings": [],
}


def test_round_trip_keeps_the_document_byte_for_byte():
    doc = copy.deepcopy(DOC)
    doc["disks"][0]["from_a_newer_capture"] = {"x": [1, 2]}   # unknown keys are kept
    doc["later"] = 1
    meta = VMMetadata.from_json(doc)
    assert json.dumps(meta.to_json(), sort_keys=True) == json.dumps(doc, sort_keys=True)
    assert meta.disks[0].capacity_bytes == 2 << 20 and meta.networks[0].network == "VM Network"
    assert meta.placement.datacenter == "DC0" and meta.files.vmx == "x = 1\n"
    assert "nvram_b64" not in meta.to_json()["files"]          # absent stays absent
    assert meta.disk("scsi0-0") is meta.disks[0] and meta.disk("nvme0-0") is None


def test_an_older_document_with_fewer_keys_still_reads():
    doc = {"schema": SCHEMA, "vm": {"name": "old"}, "disks": [{"label": "scsi0-0", "capacity_bytes": 512}]}
    meta = VMMetadata.from_json(doc)
    assert meta.to_json() == doc and meta.networks == [] and meta.files.vmx is None


def test_records_made_by_the_capture_leave_unset_fields_out():
    nic = NicMeta.make(key=4000, kind="opaque", opaque_network_id="n")
    assert nic.to_json() == {"key": 4000, "kind": "opaque", "opaque_network_id": "n"}
    assert DiskMeta.make(label="sata0-1", capacity_bytes=0).to_json() == {"label": "sata0-1", "capacity_bytes": 0}


def _broken(path: str, value):
    doc = copy.deepcopy(DOC)
    *parents, last = path.split("/")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return doc


@pytest.mark.parametrize("path,value,named", [
    ("disks/0/capacity_bytes", "2097152", "disks[0].capacity_bytes: expected an integer"),
    ("disks/0/capacity_bytes", True, "disks[0].capacity_bytes: expected an integer"),
    ("disks/0/capacity_bytes", -1, "disks[0].capacity_bytes"),
    ("disks/0/capacity_bytes", 1 << 60, "disks[0].capacity_bytes"),
    ("disks/0/label", "../../etc/passwd", "disks[0].label"),
    ("disks/0/label", "", "disks[0].label"),
    ("disks/0/backup_possible", "yes", "disks[0].backup_possible: expected true or false"),
    ("disks", {"scsi0-0": {}}, "disks: expected a list"),
    ("networks/0/key", None, "networks[0].key: expected an integer"),
    ("networks/0/network", 7, "networks[0].network: expected a string"),
    ("placement/datastores", ["a", 3], "placement.datastores[1]"),
    ("vm", "web01", "vm: expected an object"),
    ("files/vmx", ["x"], "files.vmx: expected a string"),
    ("schema", "repofs.vsphere.vm/99", "schema"),
    ("config_full", {"a": [[[]]] * (MAX_ITEMS + 1)}, "config_full.a"),
])
def test_malformed_documents_are_refused_naming_the_field(path, value, named):
    with pytest.raises(MetadataError) as refused:
        VMMetadata.from_json(_broken(path, value))
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_duplicate_labels_and_unbounded_nesting_are_refused():
    doc = copy.deepcopy(DOC)
    doc["disks"].append(copy.deepcopy(doc["disks"][0]))
    with pytest.raises(MetadataError, match=r"disks\[1\].label: 'scsi0-0' appears twice"):
        VMMetadata.from_json(doc)
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(MetadataError, match="nested deeper"):
        VMMetadata.from_json(_broken("config_full", deep))
    with pytest.raises(MetadataError, match="expected an object"):
        VMMetadata.from_json([DOC])


VAPP = {"name": "app", "moref": "resgroup-v9", "path": "/DC0/host/C0/Resources/app",
        "vapp_config": {"_vimtype": "vim.vApp.VAppConfigInfo", "annotation": "gold"},
        "resource_config": None,
        "entity": {"_vimtype": "vim.vApp.EntityConfigInfo",
                   "key": {"_moref": "vm-42", "_vimtype": "vim.VirtualMachine"}, "tag": "web01",
                   "startOrder": 2, "startDelay": 30, "waitingForGuest": True, "startAction": "powerOn",
                   "stopDelay": 45, "stopAction": "guestShutdown", "destroyWithParent": False}}


def test_a_vapp_members_start_up_settings_are_typed_and_round_trip():
    doc = _broken("vapp", copy.deepcopy(VAPP))
    meta = VMMetadata.from_json(doc)
    entity = meta.vapp.entity
    assert (entity.startOrder, entity.startDelay, entity.waitingForGuest, entity.startAction,
            entity.stopDelay, entity.stopAction, entity.destroyWithParent) == \
        (2, 30, True, "powerOn", 45, "guestShutdown", False)
    assert meta.vapp.path == "/DC0/host/C0/Resources/app"
    assert json.dumps(meta.to_json(), sort_keys=True) == json.dumps(doc, sort_keys=True)
    older = _broken("vapp", {"name": "app", "entity": None})      # a capture without an entry
    assert VMMetadata.from_json(older).to_json()["vapp"] == {"name": "app", "entity": None}


@pytest.mark.parametrize("field,value,named", [
    ("startOrder", -1, "vapp.entity.startOrder: -1 is out of range"),
    ("startDelay", 1 << 40, "vapp.entity.startDelay"),
    ("stopDelay", "30", "vapp.entity.stopDelay: expected an integer"),
    ("startAction", "reboot", "vapp.entity.startAction: 'reboot' is not one of none, powerOn"),
    ("stopAction", "x" * 10_000, "vapp.entity.stopAction"),
    ("waitingForGuest", "yes", "vapp.entity.waitingForGuest: expected true or false"),
    ("key", "vm-42", "vapp.entity.key: expected an object"),
])
def test_a_vapp_entry_out_of_vsphere_s_bounds_is_refused(field, value, named):
    vapp = copy.deepcopy(VAPP)
    vapp["entity"][field] = value
    with pytest.raises(MetadataError) as refused:
        VMMetadata.from_json(_broken("vapp", vapp))
    assert named in str(refused.value) and len(str(refused.value)) < 300
