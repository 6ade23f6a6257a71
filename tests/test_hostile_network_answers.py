"""What vCenter answers is untrusted: sizes are bounded, names are data, JSON is checked.

Against the test vCenter where the server can be made to say it (a datastore file larger than
any .vmx, a VM's tags), and on the parsers of answers directly (with hypothesis) where it
cannot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from pyVmomi import vim

from fixtures_vcsim import VCSim, create_vm, wait_task
from fixtures_vsphere import MiB, unique
from restore.backup import metadata
from restore.vm import vmximport
from restore.vsphere import tags
from restore.vsphere.credentials import Credentials
from restore.vsphere.errors import AnswerTooLarge
from restore.vsphere.session import MAX_DOWNLOAD, Session


@pytest.fixture
def session(vcsim: VCSim) -> Any:
    with Session.login(Credentials(vcsim.server, vcsim.user, vcsim.password),
                       thumbprint=vcsim.thumbprint) as s:
        yield s


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
        f.truncate(size)


def test_datastore_download_is_bounded(session: Session, vcsim: VCSim) -> None:
    folder = vcsim.datastores["LocalDS_0"] / unique("big")
    _sparse(folder / "small.vmx", 4096)
    _sparse(folder / "huge.vmx", MAX_DOWNLOAD + 1)
    url = "/folder/{}/{}?dcPath=DC0&dsName=LocalDS_0"
    assert session.http_get(url.format(folder.name, "small.vmx")) == b"x" * 4096
    with pytest.raises(AnswerTooLarge, match=f"more than the {MAX_DOWNLOAD}"):
        session.http_get(url.format(folder.name, "huge.vmx"))


def test_capture_survives_a_huge_vmx(session: Session, vcsim: VCSim) -> None:
    """The metadata is captured; the .vmx is left out with a warning that says why."""
    vm = create_vm(session.si, unique("hugevmx"), [MiB], network=None)
    try:
        local = vcsim.local_path(vm.config.files.vmPathName)
        _sparse(local, MAX_DOWNLOAD + 1)
        doc = metadata.capture(session, vm, None)
        assert "vmx" not in doc["files"]
        assert any(w.startswith(".vmx not downloaded") and "more than" in w for w in doc["warnings"])
    finally:
        wait_task(session.si, vm.Destroy_Task())


def _disk(capacity: int) -> Any:
    return vim.vm.device.VirtualDisk(
        key=2000, unitNumber=0, controllerKey=1000, capacityInBytes=capacity,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[ds] vm/vm.vmdk",
                                                             diskMode="persistent"))


@pytest.mark.parametrize("capacity, possible", [
    (MiB, True), (metadata.MAX_DISK_BYTES, True), (metadata.MAX_DISK_BYTES + 1, False),
    (2**62, False), (0, False), (-512, False)])
def test_impossible_disk_capacity_is_not_read(capacity: int, possible: bool) -> None:
    controller = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0)
    doc = metadata.describe_disk(_disk(capacity), controller, {})
    assert doc.backup_possible is possible
    if not possible:
        assert doc.skip_reason == f"vCenter reports an impossible capacity of {capacity} bytes"


# --- names are data -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, want", [
    ("web01", "web01"), ("../../etc", "%2e.%2f..%2fetc"), ("a/b\\c%d", "a%2fb%5cc%25d"),
    (".", "%2e"), ("..", "%2e."), ("", "vm"), ("x\ny", "x%0ay"), ("é" * 150, "é" * 100),
])
def test_datastore_name_is_one_component(name: str, want: str) -> None:
    assert vmximport.datastore_name(name) == want


def test_vm_name_cannot_add_lines_to_the_vmx() -> None:
    evil = 'x"\nguestOS = "evil|"'
    saved = 'displayName = "old"\nnvram = "old.nvram"\nguestOS = "otherGuest64"\n'
    text = vmximport.prepare_vmx(saved, evil, recover_identity=False)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("guestOS")] == ['guestOS = "otherGuest64"']
    assert 'displayName = "x|22|0AguestOS = |22evil|7C|22"' in lines
    assert 'nvram = "x|22%0aguestOS = |22evil|7C|22.nvram"' in lines


@given(st.text(max_size=300))
def test_fuzz_datastore_name(name: str) -> None:
    out = vmximport.datastore_name(name)
    assert out and "/" not in out and "\\" not in out and out not in (".", "..")
    assert not out.startswith(".") and len(out.encode("utf-8")) <= vmximport.MAX_NAME_BYTES
    assert not any(ord(c) < 0x20 for c in out)


@given(st.text(max_size=100))
def test_fuzz_vmx_names(name: str) -> None:
    text = vmximport.prepare_vmx('displayName = "a"\nnvram = "a.nvram"\n', name, recover_identity=False)
    assert len(text.splitlines()) == 3  # the comment, displayName, nvram: nothing added


# --- the vAPI JSON of tags ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30)
shaped = st.fixed_dictionaries({"value": json_values | st.lists(st.text(max_size=5), max_size=5)
                                | st.dictionaries(st.sampled_from(["name", "category_id", "cardinality", "x"]),
                                                  json_values, max_size=4)})


@given(reply=json_values | shaped)
def test_fuzz_vapi_tag_answers(reply: Any) -> None:
    for parse in (tags.parse_ids, lambda r: tags.parse_object(r, "tag")):
        try:
            out = parse(reply)
        except tags.TagsUnavailable as e:
            assert "\n" not in str(e)
            continue
        if isinstance(out, list):
            assert all(isinstance(i, str) and i for i in out) and len(out) <= tags.MAX_TAGS
        else:
            assert set(out) <= set(tags._TEXT_FIELDS)
            assert all(v is None or isinstance(v, str) for v in out.values())


@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_vapi_raw_answers(raw: bytes) -> None:
    try:
        tags.decode(raw, "vAPI test")
    except tags.TagsUnavailable as e:
        assert str(e) == "vAPI test: the answer is not JSON"


def test_tags_of_a_vm_through_the_checked_parsers(session: Session, vcsim: VCSim) -> None:
    from fixtures_vcsim import attach_tag
    vm = create_vm(session.si, unique("tagged"), [MiB], network=None)
    try:
        attach_tag(vcsim, vm, "backup", "gold")
        reader = tags.TagReader(session, Credentials(vcsim.server, vcsim.user, vcsim.password))
        try:
            got = reader(vm._moId)
        finally:
            reader.close()
        assert [(t["name"], t["category"]) for t in got] == [("gold", "backup")]
    finally:
        wait_task(session.si, vm.Destroy_Task())


