"""The in-process binding against the stand-in library, through the real ABI.

Every call and every error path: init order, connect checks, datastore paths, alignment,
range, read-only refusals, close before disconnect, injected faults, concurrency, large and odd
I/O, allocated blocks of sparse files, Create, metadata, logging callbacks, the ctk log and the
stats lines. Data checks are byte for byte.
"""
from __future__ import annotations

import logging
import os
import pathlib
import random
import shutil
import subprocess
import threading

import pytest

import vddk
from vddk import errors
from fixtures_vddk import PASSWORD, Standin, make_flat_disk

MiB = 1 << 20


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _flat(standin: Standin, name: str) -> pathlib.Path:
    return standin.datastore / name.replace(".vmdk", "-flat.vmdk")


# -- library life cycle ---------------------------------------------------------------------

def test_calls_before_initex_are_refused(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    b = vddk.load(vddk.find_library(vddk_libdir))
    assert not b.initialized
    out = b.ffi.new("VixDiskLibConnection *")
    err = b.ConnectEx(b.ffi.NULL, 1, b.ffi.NULL, b.ffi.NULL, out)
    e = b.error(err, "VixDiskLib_ConnectEx")
    assert isinstance(e, vddk.NotInitialized)
    assert (e.code, e.text) == (errors.VIX_E_DISK_NOINIT, "The disk library has not been initialized")
    handle = b.ffi.new("VixDiskLibHandle *")
    assert b.Open(b.ffi.NULL, b"/x.vmdk", 0, handle) & 0xFFFF == errors.VIX_E_DISK_NOINIT


def test_one_library_per_process(vddk_libdir: pathlib.Path, vddk_lib: vddk.Library) -> None:
    with pytest.raises(vddk.Busy):
        vddk.open_library(vddk_libdir, isolated=False)


def test_closed_library_refuses_calls(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    lib = vddk.open_library(vddk_libdir, isolated=False)
    lib.close()
    lib.close()
    with pytest.raises(vddk.InvalidArgument):
        lib.connect()


def test_transport_modes_and_cleanup(vddk_lib: vddk.Library, standin: Standin) -> None:
    assert vddk_lib.transport_modes() == ["file", "san", "hotadd", "nbdssl", "nbd"]
    assert vddk_lib.cleanup(standin.params(vmx_spec=None)) == (0, 0)


def test_error_text_of_unknown_code(vddk_lib: vddk.Library) -> None:
    e = vddk_lib._b.error(0x1234_0000_0000_7777, "X")
    assert type(e) is vddk.VddkError and e.code == 0x7777 and e.text == "Unknown error"
    assert str(e) == "X: Unknown error (VixError 30583)"


# -- local mode and Create ------------------------------------------------------------------

def test_local_create_write_read(vddk_lib: vddk.Library, tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "new.vmdk")
    data = _random(3 * MiB, 1)
    with vddk_lib.connect(None, read_only=False) as conn:
        conn.create(path, 16 * MiB, adapter="ide", hw_version=13)
        with conn.open(path, read_only=False) as disk:
            assert disk.transport_mode == "file"
            assert disk.capacity == 16 * MiB
            assert disk.info.adapter_type == "ide"
            assert disk.read_metadata("virtualHWVersion") == "13"
            disk.write_from(5 * MiB, data)
            disk.flush()
            assert disk.read(5 * MiB, len(data)) == data
        with pytest.raises(vddk.AlreadyExists) as info:
            conn.create(path, 16 * MiB)
        assert info.value.code == errors.VIX_E_FILE_ALREADY_EXISTS
    flat = tmp_path / "new-flat.vmdk"
    assert flat.stat().st_size == 16 * MiB
    assert flat.read_bytes()[5 * MiB:8 * MiB] == data
    text = (tmp_path / "new.vmdk").read_text()
    assert text.splitlines()[1] == "version=1"
    assert 'RW 32768 FLAT "new-flat.vmdk" 0' in text


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")
def test_created_descriptor_satisfies_qemu_img(vddk_lib: vddk.Library,
                                               tmp_path: pathlib.Path) -> None:
    path = tmp_path / "judge.vmdk"
    with vddk_lib.connect(None, read_only=False) as conn:
        conn.create(str(path), 4 * MiB)
        with conn.open(str(path), read_only=False) as disk:
            disk.write_metadata("repofs.note", "rewritten")  # the descriptor is rewritten
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    assert '"virtual-size": 4194304' in out and '"format": "vmdk"' in out
    if shutil.which("vmdkinfo"):
        info = subprocess.run(["vmdkinfo", str(path)], check=True, capture_output=True,
                              text=True).stdout
        assert "Monolithic flat" in info and "4194304 bytes" in info


def test_create_refusals(vddk_lib: vddk.Library, standin: Standin, tmp_path: pathlib.Path) -> None:
    with vddk_lib.connect() as conn:
        with pytest.raises(vddk.AlignmentError):
            conn.create(str(tmp_path / "a.vmdk"), 1000)
        with pytest.raises(vddk.InvalidArgument):
            conn.create(str(tmp_path / "a.vmdk"), 1 * MiB, adapter="floppy")
        with pytest.raises(vddk.InvalidArgument) as info:
            conn.create("relative.vmdk", 1 * MiB)
        assert info.value.code == errors.VIX_E_INVALID_ARG
    with vddk_lib.connect(standin.params()) as conn:
        with pytest.raises(vddk.NotSupported):  # remote disks are made by vCenter
            conn.create("[LocalDS_0] x.vmdk", 1 * MiB)


def test_local_mode_wants_absolute_paths(vddk_lib: vddk.Library) -> None:
    with vddk_lib.connect() as conn:
        with pytest.raises(vddk.DiskNotFound):
            conn.open("[LocalDS_0] vm1/disk.vmdk")


# -- connecting -----------------------------------------------------------------------------

def test_remote_open_maps_datastore(vddk_lib: vddk.Library, standin: Standin) -> None:
    data = _random(MiB, 2)
    path = standin.disk("vm1/vm1.vmdk", 8 * MiB, data, at=2 * MiB)
    with vddk_lib.connect(standin.params(), snapshot_moref="snapshot-7",
                          transports="nbdssl:nbd") as conn:
        with conn.open(path) as disk:
            assert disk.transport_mode == "nbdssl"
            assert disk.capacity == 8 * MiB
            assert disk.info.uuid == "60 00 c2 9a 3b 51 7e 5d-bd 06 62 7f 55 2e 6d 01"
            assert disk.info.physical_geometry == (1, 255, 63)
            assert disk.read(2 * MiB, MiB) == data
            assert disk.read(0, 4096) == bytes(4096)
    assert standin.stat_lines("connect") == [
        ["connect", "vc.test", "moref=vm-42", "1", "snapshot-7", "nbdssl:nbd"]]


def test_transport_preference(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    with vddk_lib.connect(standin.params(), transports="hotadd:nbd:nbdssl") as conn:
        with conn.open(path) as disk:
            assert disk.transport_mode == "nbd"
    with vddk_lib.connect(standin.params(), transports="san:hotadd") as conn:
        with pytest.raises(vddk.NotSupported):
            conn.open(path)


@pytest.mark.parametrize(
    ("override", "error", "code"),
    [
        ({"password": "wrong"}, vddk.AuthenticationFailed, errors.VIX_E_HOST_USER_PERMISSIONS),
        ({"user": "root"}, vddk.AuthenticationFailed, errors.VIX_E_HOST_USER_PERMISSIONS),
        ({"thumbprint": "00:11"}, vddk.CertificateMismatch, errors.VIX_E_NET_HTTP_SSL_SECURITY),
        ({"thumbprint": None}, vddk.CertificateMismatch, errors.VIX_E_NET_HTTP_SSL_SECURITY),
        ({"server": "elsewhere"}, vddk.ConnectionFailed, errors.VIX_E_CANNOT_CONNECT_TO_HOST),
        ({"vmx_spec": "vm-42"}, vddk.InvalidArgument, errors.VIX_E_INVALID_ARG),
    ],
)
def test_connect_refusals(vddk_lib: vddk.Library, standin: Standin, override: dict[str, object],
                          error: type[vddk.VddkError], code: int) -> None:
    with pytest.raises(error) as info:
        vddk_lib.connect(standin.params(**override))
    assert info.value.code == code
    assert info.value.call == "VixDiskLib_ConnectEx"
    assert PASSWORD not in str(info.value) and "wrong" not in str(info.value)


def test_thumbprint_is_case_insensitive(vddk_lib: vddk.Library, standin: Standin) -> None:
    params = standin.params(thumbprint=standin.settings["thumbprint"].lower())  # type: ignore[union-attr]
    vddk_lib.connect(params).close()


def test_cookie_login(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    standin.configure(password=None, cookie="vmware_soap_session=abc")
    with vddk.open_library(vddk_libdir, isolated=False) as lib:
        lib.connect(standin.params(password=None, cookie="vmware_soap_session=abc")).close()
        with pytest.raises(vddk.AuthenticationFailed):
            lib.connect(standin.params(password=None, cookie="vmware_soap_session=zzz"))


def test_params_repr_hides_secrets(standin: Standin) -> None:
    params = standin.params(cookie="cookie-value")
    assert PASSWORD not in repr(params) and "cookie-value" not in repr(params)


def test_first_class_disk_spec(vddk_lib: vddk.Library, standin: Standin) -> None:
    params = standin.params(vmx_spec=None, fcd_id="fcd-1", fcd_datastore="datastore-1")
    with vddk_lib.prepared(params):
        vddk_lib.connect(params).close()
    assert standin.stat_lines("prepare") == [["prepare", "fcd-1", "repofs"]]


# -- opening --------------------------------------------------------------------------------

def test_open_refusals(vddk_lib: vddk.Library, standin: Standin) -> None:
    (standin.datastore / "garbage.vmdk").write_text("this is not a descriptor\n")
    (standin.datastore / "sparse.vmdk").write_bytes(b"KDMV\x01\x00\x00\x00" + bytes(504))
    make_flat_disk(standin.datastore / "noflat.vmdk", MiB)
    _flat(standin, "noflat.vmdk").unlink()
    with vddk_lib.connect(standin.params()) as conn:
        for path, error, code in [
            ("[LocalDS_0] missing.vmdk", vddk.DiskNotFound, errors.VIX_E_FILE_NOT_FOUND),
            ("[OtherDS] d.vmdk", vddk.DiskNotFound, errors.VIX_E_FILE_NOT_FOUND),
            ("/abs/path.vmdk", vddk.InvalidArgument, errors.VIX_E_INVALID_ARG),
            ("[LocalDS_0] ../escape.vmdk", vddk.InvalidArgument, errors.VIX_E_INVALID_ARG),
            ("[LocalDS_0] garbage.vmdk", vddk.VddkError, errors.VIX_E_DISK_INVAL),
            ("[LocalDS_0] sparse.vmdk", vddk.NotSupported, errors.VIX_E_DISK_NOTSUPPORTED),
            ("[LocalDS_0] noflat.vmdk", vddk.DiskNotFound, errors.VIX_E_FILE_NOT_FOUND),
        ]:
            with pytest.raises(error) as info:
                conn.open(path)
            assert info.value.code == code, path
            assert info.value.call == "VixDiskLib_Open"
    assert standin.stat_lines("open") == []


def test_close_before_disconnect(vddk_lib: vddk.Library, standin: Standin,
                                 caplog: pytest.LogCaptureFixture) -> None:
    path = standin.disk("d.vmdk", MiB)
    conn = vddk_lib.connect(standin.params())
    disk = conn.open(path)
    with caplog.at_level(logging.WARNING, logger="vddk.library"):
        with pytest.raises(vddk.Busy) as info:
            conn.close()
    assert info.value.code == errors.VIX_E_OBJECT_IS_BUSY
    assert "Disconnect with 1 disk(s) still open" in caplog.text
    disk.close()
    disk.close()
    conn.close()
    with pytest.raises(vddk.InvalidArgument):
        disk.read(0, 512)
    with pytest.raises(vddk.InvalidArgument):
        conn.open(path)


def test_leaving_connection_block_closes_disks(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    with pytest.raises(RuntimeError):
        with vddk_lib.connect(standin.params()) as conn:
            disk = conn.open(path)
            raise RuntimeError("boom")
    assert disk.closed and conn.closed
    kinds = [w[0] for w in standin.stat_lines() if w[0] in ("open", "close", "disconnect")]
    assert kinds == ["open", "close", "disconnect"]


# -- I/O rules ------------------------------------------------------------------------------

def test_alignment_is_enforced(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    with vddk_lib.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        for offset, size in [(100, 512), (512, 100), (-512, 512)]:
            with pytest.raises(vddk.AlignmentError) as info:
                disk.read_into(offset, bytearray(size))
            assert info.value.code == errors.VIX_E_INVALID_ARG
            with pytest.raises(vddk.AlignmentError):
                disk.write_from(offset, bytes(size))
    assert standin.stat_lines("read") == [] and standin.stat_lines("write") == []


def test_range_is_enforced_by_the_library(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        for offset, size in [(MiB, 512), (MiB - 512, 1024), (2 * MiB, 512)]:
            with pytest.raises(vddk.OutOfRange) as info:
                disk.read_into(offset, bytearray(size))
            assert info.value.code == errors.VIX_E_DISK_OUTOFRANGE
            assert info.value.text == "One of the parameters supplied is out of range"
            assert "out of range (VixError 16007)" in str(info.value)
        assert disk.read_into(MiB - 512, bytearray(512)) == 512
        assert disk.read_into(MiB, bytearray(0)) == 0


def test_read_only_handle_refuses_writes(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB, b"\x07" * 512)
    with vddk_lib.connect(standin.params(), read_only=False) as conn:
        with conn.open(path, read_only=True) as disk:
            with pytest.raises(vddk.ReadOnly) as info:
                disk.write_from(0, bytes(512))
            assert info.value.code == errors.VIX_E_FILE_READ_ONLY
            with pytest.raises(vddk.ReadOnly):
                disk.write_metadata("k", "v")
    assert _flat(standin, "d.vmdk").read_bytes()[:512] == b"\x07" * 512


def test_read_only_connection_refuses_writes(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB, b"\x07" * 512)
    with vddk_lib.connect(standin.params(), read_only=True) as conn:
        with conn.open(path, read_only=False) as disk:
            with pytest.raises(vddk.ReadOnly):
                disk.write_from(0, bytes(512))
    assert _flat(standin, "d.vmdk").read_bytes()[:512] == b"\x07" * 512
    assert not (standin.datastore / "d-ctk.log").exists()


def test_buffers_of_any_type_without_copies(vddk_lib: vddk.Library, standin: Standin) -> None:
    import array
    import mmap

    data = _random(8192, 3)
    path = standin.disk("d.vmdk", MiB, data)
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        words = array.array("Q", bytes(8192))
        disk.read_into(0, words)
        assert words.tobytes() == data
        area = mmap.mmap(-1, 8192)
        disk.read_into(0, memoryview(area)[4096:])
        assert area[4096:] == data[:4096]
        area.close()
        with pytest.raises((TypeError, BufferError)):
            disk.read_into(0, bytes(512))  # not writable


@pytest.mark.parametrize("remote", [True, False], ids=["nbdssl", "local"])
def test_large_and_odd_sized_io(vddk_lib: vddk.Library, standin: Standin, remote: bool) -> None:
    """Requests larger than one library call (2 MiB over NBD, 64 MiB locally), odd sizes."""
    size = 80 * MiB
    path = standin.disk("big.vmdk", size)
    if not remote:
        path = str(standin.datastore / "big.vmdk")
    data = _random(65 * MiB + 3 * 512, 4)
    offset = 7 * 512
    with vddk_lib.connect(standin.params() if remote else None, read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        assert disk.write_from(offset, data) == len(data)
        back = bytearray(len(data))
        assert disk.read_into(offset, back) == len(data)
        assert back == data
        last = _random(512, 5)
        disk.write_from(size - 512, last)
        assert disk.read(size - 512, 512) == last
        assert disk.read(offset - 512, 1024) == bytes(512) + data[:512]
    flat = _flat(standin, "big.vmdk").read_bytes()
    assert flat[offset:offset + len(data)] == data and flat[-512:] == last
    writes = [(int(w[2]), int(w[3])) for w in standin.stat_lines("write")]
    step = 2 * MiB if remote else 64 * MiB
    expected = [(offset + d, min(step, len(data) - d)) for d in range(0, len(data), step)]
    assert writes == expected + [(size - 512, 512)]


# -- allocated blocks -----------------------------------------------------------------------

def test_allocated_extents_follow_the_sparse_file(vddk_lib: vddk.Library, standin: Standin) -> None:
    size = 64 * MiB
    path = standin.disk("sparse.vmdk", size)
    with open(_flat(standin, "sparse.vmdk"), "r+b") as f:
        for at, n in [(3 * MiB + 4096, 4096), (10 * MiB, 2 * MiB), (size - 512, 512)]:
            f.seek(at)
            f.write(b"\xaa" * n)
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        assert disk.allocated_extents() == [(3 * MiB, MiB), (10 * MiB, 2 * MiB),
                                            (63 * MiB, MiB)]
        assert disk.allocated_extents(chunk_bytes=64 << 10) == [
            (3 * MiB, 64 << 10), (10 * MiB, 2 * MiB), (size - (64 << 10), 64 << 10)]
        assert disk.allocated_extents(offset=8 * MiB, length=8 * MiB) == [(10 * MiB, 2 * MiB)]
        with pytest.raises(vddk.InvalidArgument):
            disk.allocated_extents(chunk_bytes=32 << 10)
        with pytest.raises(vddk.AlignmentError):
            disk.allocated_extents(offset=512)


def test_allocated_extents_odd_capacity_and_empty(vddk_lib: vddk.Library, standin: Standin) -> None:
    size = 3 * MiB + 5 * 512
    path = standin.disk("odd.vmdk", size, b"\x01" * 512, at=size - 512)
    empty = standin.disk("empty.vmdk", 4 * MiB)
    with vddk_lib.connect(standin.params()) as conn:
        with conn.open(path) as disk:
            assert disk.allocated_extents() == [(3 * MiB, 5 * 512)]
        with conn.open(empty) as disk:
            assert disk.allocated_extents() == []


def test_allocated_extents_when_the_library_cannot_tell(vddk_libdir: pathlib.Path,
                                                        standin: Standin) -> None:
    standin.configure(no_allocated_blocks=1)
    path = standin.disk("d.vmdk", 4 * MiB)
    with vddk.open_library(vddk_libdir, isolated=False) as lib, \
            lib.connect(standin.params()) as conn, conn.open(path) as disk:
        assert disk.allocated_extents() == [(0, 4 * MiB)]
        assert disk.allocated_extents(offset=MiB, length=MiB) == [(MiB, MiB)]


def test_query_allocated_blocks_rules(vddk_lib: vddk.Library, standin: Standin) -> None:
    """The library's own checks: chunk size >= 128 sectors, aligned start, whole chunks."""
    path = standin.disk("d.vmdk", 4 * MiB)
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        b = vddk_lib._b
        out = b.ffi.new("VixDiskLibBlockList **")
        for start, count, chunk, code in [
            (0, 8192, 64, errors.VIX_E_INVALID_ARG),
            (1, 128, 128, errors.VIX_E_INVALID_ARG),
            (0, 200, 128, errors.VIX_E_INVALID_ARG),
            (0, 8192 + 128, 128, errors.VIX_E_DISK_OUTOFRANGE),
        ]:
            err = b.QueryAllocatedBlocks(disk._handle, start, count, chunk, out)
            assert err & 0xFFFF == code, (start, count, chunk)


# -- metadata -------------------------------------------------------------------------------

def test_metadata(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    with vddk_lib.connect(standin.params(), read_only=False) as conn:
        with conn.open(path, read_only=False) as disk:
            assert disk.metadata_keys() == ["adapterType", "geometry.cylinders", "geometry.heads",
                                            "geometry.sectors", "uuid", "virtualHWVersion"]
            assert disk.read_metadata("adapterType") == "lsilogic"
            disk.write_metadata("repofs.generation", "2026-11-25T15:00:00Z")
            disk.write_metadata("adapterType", "buslogic")
            with pytest.raises(vddk.MetadataKeyNotFound) as info:
                disk.read_metadata("nope")
            assert info.value.code == errors.VIX_E_DISK_KEY_NOTFOUND
            with pytest.raises(vddk.InvalidArgument):
                disk.write_metadata("bad key", "x")
        with conn.open(path) as disk:
            assert disk.read_metadata("repofs.generation") == "2026-11-25T15:00:00Z"
            assert disk.info.adapter_type == "buslogic"
            assert disk.metadata_keys()[-1] == "repofs.generation"
    text = (standin.datastore / "d.vmdk").read_text()
    assert 'ddb.repofs.generation = "2026-11-25T15:00:00Z"' in text
    assert text.startswith("# Disk DescriptorFile\nversion=1\n")


# -- prepare / end access -------------------------------------------------------------------

def test_prepared_pairs_prepare_and_end(vddk_lib: vddk.Library, standin: Standin) -> None:
    params = standin.params()
    with pytest.raises(KeyError):
        with vddk_lib.prepared(params, identity="repofs-test"):
            raise KeyError("inside")
    assert standin.stat_lines("prepare") == [["prepare", "moref=vm-42", "repofs-test"]]
    assert standin.stat_lines("end") == [["end", "moref=vm-42", "repofs-test"]]


def test_access_rules(vddk_lib: vddk.Library, standin: Standin,
                      caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(vddk.AuthenticationFailed):
        vddk_lib.prepare_for_access(standin.params(password="x"))
    with caplog.at_level(logging.WARNING, logger="vddk.library"):
        vddk_lib.end_access(standin.params(vmx_spec="moref=vm-9"))
        vddk_lib.prepare_for_access(standin.params(vmx_spec="moref=vm-1"))
        vddk_lib.close()
    assert standin.stat_lines("end") == [["end", "moref=vm-9", "repofs", "unpaired"]]
    assert "EndAccess for moref=vm-9 without PrepareForAccess" in caplog.text
    assert "PrepareForAccess for moref=vm-1 was never ended (1 open)" in caplog.text


def test_prepared_is_a_no_op_locally(vddk_lib: vddk.Library, standin: Standin) -> None:
    with vddk_lib.prepared(vddk.ConnectParams()):
        pass
    assert standin.stat_lines("prepare") == []


# -- injected faults ------------------------------------------------------------------------

def test_injected_read_fault(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    standin.configure(fail_read_after=2)
    path = standin.disk("d.vmdk", MiB)
    with vddk.open_library(vddk_libdir, isolated=False) as lib, lib.connect(standin.params()) as conn, \
            conn.open(path) as disk:
        disk.read(0, 512)
        disk.read(512, 512)
        with pytest.raises(vddk.IoFailure) as info:
            disk.read(1024, 512)
        assert info.value.code == errors.VIX_E_FILE_ERROR
        assert info.value.call == "VixDiskLib_Read"
    assert len(standin.stat_lines("read")) == 2


def test_injected_write_fault(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    standin.configure(fail_write_after=1)
    path = standin.disk("d.vmdk", MiB)
    with vddk.open_library(vddk_libdir, isolated=False) as lib, \
            lib.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        disk.write_from(0, b"\x01" * 512)
        with pytest.raises(vddk.IoFailure):
            disk.write_from(512, b"\x02" * 512)
        assert disk.read(0, 1024) == b"\x01" * 512 + bytes(512)
    assert (standin.datastore / "d-ctk.log").read_text() == "0 512\n"


def test_dropped_connection(vddk_libdir: pathlib.Path, standin: Standin,
                            caplog: pytest.LogCaptureFixture) -> None:
    standin.configure(drop_connection_after=3, delay_us=100)
    path = standin.disk("d.vmdk", MiB)
    with caplog.at_level(logging.WARNING, logger="vddk.library"):
        with vddk.open_library(vddk_libdir, isolated=False) as lib:
            with lib.connect(standin.params()) as conn, conn.open(path) as disk:
                for i in range(3):
                    disk.read(i * 512, 512)
                for _ in range(2):
                    with pytest.raises(vddk.ConnectionLost) as info:
                        disk.read(0, 512)
                    assert info.value.code == errors.VIX_E_HOST_TCP_CONN_LOST
            # A new connection works again.
            with lib.connect(standin.params()) as conn, conn.open(path) as disk:
                disk.read(0, 512)
    assert "connection to vc.test lost (injected)" in caplog.text


# -- concurrency ----------------------------------------------------------------------------

def test_several_disks_read_at_once(vddk_lib: vddk.Library, standin: Standin) -> None:
    n, size = 4, 8 * MiB
    contents = [_random(size, 10 + i) for i in range(n)]
    paths = [standin.disk(f"vm{i}/disk.vmdk", size, contents[i]) for i in range(n)]
    results: dict[int, bytes] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(n)
    with vddk_lib.connect(standin.params()) as conn:
        def work(i: int) -> None:
            try:
                with conn.open(paths[i]) as disk:
                    barrier.wait()
                    buf = bytearray(size)
                    for off in range(0, size, MiB):
                        disk.read_into(off, memoryview(buf)[off:off + MiB])
                    results[i] = bytes(buf)
            except BaseException as e:  # noqa: BLE001
                failures.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    for i in range(n):
        assert results[i] == contents[i]


def test_open_and_close_are_serialized(vddk_lib: vddk.Library, standin: Standin) -> None:
    """The stand-in answers Busy to overlapping Open/Close; the binding must never overlap."""
    path = standin.disk("d.vmdk", MiB)
    failures: list[BaseException] = []
    with vddk_lib.connect(standin.params()) as conn:
        def churn() -> None:
            try:
                for _ in range(50):
                    with conn.open(path) as disk:
                        disk.read(0, 512)
            except BaseException as e:  # noqa: BLE001
                failures.append(e)

        threads = [threading.Thread(target=churn) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    assert len(standin.stat_lines("open")) == 300 == len(standin.stat_lines("close"))


# -- logging, ctk log, stats ----------------------------------------------------------------

def test_library_log_reaches_python_logging(vddk_libdir: pathlib.Path, standin: Standin,
                                            caplog: pytest.LogCaptureFixture) -> None:
    path = standin.disk("vm1/d.vmdk", 2 * MiB)
    with caplog.at_level(logging.DEBUG, logger="vddk.library"):
        with vddk.open_library(vddk_libdir, isolated=False) as lib, lib.connect(standin.params()) as conn:
            conn.open(path).close()
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("vddk.library", logging.DEBUG,
            "VixDiskLib: stand-in 7.0 initialized with 1 datastore(s)") in messages
    assert ("vddk.library", logging.DEBUG,
            "VixDiskLib: opened [LocalDS_0] vm1/d.vmdk (4096 sectors, nbdssl, flags 4)") in messages
    assert ("vddk.library", logging.DEBUG, "VixDiskLib: exiting") in messages


def test_warn_and_panic_callbacks(vddk_libdir: pathlib.Path, standin: Standin,
                                  caplog: pytest.LogCaptureFixture) -> None:
    standin.configure(panic_on_exit=1)
    with caplog.at_level(logging.DEBUG, logger="vddk.library"):
        with vddk.open_library(vddk_libdir, isolated=False) as lib:
            with pytest.raises(vddk.DiskNotFound):
                lib.connect(standin.params()).open("[LocalDS_0] none.vmdk")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["VixDiskLib: cannot open [LocalDS_0] none.vmdk: The file was not found"] \
        == logging.WARNING
    assert levels["VixDiskLib: panic requested by panic_on_exit (1)"] == logging.CRITICAL


def test_secrets_never_reach_the_log(vddk_libdir: pathlib.Path, standin: Standin,
                                     caplog: pytest.LogCaptureFixture) -> None:
    standin.configure(log_credentials=1)
    with caplog.at_level(logging.DEBUG, logger="vddk"):
        with vddk.open_library(vddk_libdir, isolated=False) as lib:
            lib.connect(standin.params()).close()
    assert "VixDiskLib: login backup@vsphere.local password ***" in caplog.text
    assert PASSWORD not in caplog.text


def test_ctk_log_records_every_write(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("vm1/disk.vmdk", 4 * MiB)
    ctk = standin.datastore / "vm1" / "disk-ctk.log"
    with vddk_lib.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        disk.write_from(0, bytes(4096))
        disk.write_from(3 * MiB, _random(MiB, 6))
        disk.read(0, 4096)
        with pytest.raises(vddk.OutOfRange):
            disk.write_from(4 * MiB, bytes(512))
    assert ctk.read_text() == f"0 4096\n{3 * MiB} {MiB}\n"


def test_stats_lines(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("vm1/disk.vmdk", 4 * MiB)
    local = str(standin.datastore / "vm1" / "disk.vmdk")
    params = standin.params()
    with vddk_lib.prepared(params), \
            vddk_lib.connect(params, read_only=False, transports="nbd") as conn, \
            conn.open(path, read_only=False) as disk:
        disk.read(MiB, 8192)
        disk.write_from(2 * MiB, bytes(1024))
    assert standin.stat_lines()[1:] == [
        ["prepare", "moref=vm-42", "repofs"],
        ["connect", "vc.test", "moref=vm-42", "0", "-", "nbd"],
        ["open", local, "0", "nbd"],
        ["read", local, str(MiB), "8192"],
        ["write", local, str(2 * MiB), "1024"],
        ["close", local],
        ["disconnect", "vc.test"],
        ["end", "moref=vm-42", "repofs"],
    ]
    assert standin.stat_lines()[0] == ["init", "7", "0"]


def test_bad_config_is_refused_at_init(vddk_libdir: pathlib.Path, standin: Standin,
                                       caplog: pytest.LogCaptureFixture) -> None:
    standin.config.write_text("fail_read_after=soon\n")
    with caplog.at_level(logging.WARNING, logger="vddk.library"):
        with pytest.raises(vddk.InvalidArgument):
            vddk.open_library(vddk_libdir, isolated=False)
    assert "fail_read_after wants a number" in caplog.text
    standin.config.write_text("no_such_key=1\n")
    with pytest.raises(vddk.InvalidArgument):
        vddk.open_library(vddk_libdir, isolated=False)
    os.environ.pop("VDDK_STANDIN_CONFIG")
    vddk.open_library(vddk_libdir, isolated=False).close()  # no configuration: local mode only


# -- round trip against a model ---------------------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_SECTORS = 256  # a 128 KiB disk
_writes = st.lists(
    st.tuples(st.integers(0, _SECTORS - 1), st.integers(1, 64), st.integers(0, 255)),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_writes)
def test_writes_round_trip_against_a_model(vddk_lib: vddk.Library, standin: Standin,
                                           writes: list[tuple[int, int, int]]) -> None:
    path = standin.disk("model.vmdk", _SECTORS * 512)  # fresh for every example
    model = bytearray(_SECTORS * 512)
    with vddk_lib.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        for sector, count, fill in writes:
            count = min(count, _SECTORS - sector)
            data = bytes([fill]) * (count * 512)
            disk.write_from(sector * 512, data)
            model[sector * 512:(sector + count) * 512] = data
        assert disk.read(0, len(model)) == model
        for offset, length in disk.allocated_extents(chunk_bytes=64 << 10):
            assert offset % (64 << 10) == 0 and length > 0
    assert _flat(standin, "model.vmdk").read_bytes() == model
