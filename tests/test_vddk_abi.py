"""The binding against the ABI of VixDiskLib 7, 8 and 9, judged by the stand-in, which checks
what the real library checks: the 7.0 struct shapes (sector sizes in the info and the create
parameters), whole-chunk QueryAllocatedBlocks, defined hardware versions, the library names and
install paths of VDDK 9 and nbdkit, and the bundled libraries of an in-process load.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

import vddk
from vddk import abi, library
from fixtures_vddk import STANDIN_SRC, Standin

MiB = 1 << 20


def _bindings(lib: vddk.Library) -> library.Bindings:
    return lib._b  # the raw functions, to hand the library what an older binding would


def test_create_parameters_of_the_6_7_shape_are_refused(vddk_lib: vddk.Library,
                                                        standin: Standin) -> None:
    """A binding that allocates the 24-byte 6.7 create parameters hands a 7.0 library whatever
    follows them as sector sizes: the stand-in refuses that, as the real library's checks do,
    and the binding's own 32-byte parameters are accepted."""
    b = _bindings(vddk_lib)
    ffi = b.ffi
    raw = ffi.new("uint8_t[]", 32)
    for i in range(24, 32):
        raw[i] = 0xA5  # heap garbage past a 24-byte allocation
    old = ffi.cast("VixDiskLibCreateParams *", raw)
    old.diskType, old.adapterType, old.hwVersion = abi.DISK_MONOLITHIC_FLAT, 3, 13
    old.capacity = 2048
    path = standin.datastore / "old.vmdk"
    with vddk_lib.connect(None) as conn:
        err = b.Create(conn._handle, str(path).encode(), old, ffi.NULL, ffi.NULL)
        assert err & 0xFFFF == vddk.errors.VIX_E_INVALID_ARG
        assert not path.exists()
        conn.create(str(standin.datastore / "new.vmdk"), MiB)
        with conn.open(str(standin.datastore / "new.vmdk")) as disk:
            assert disk.capacity == MiB
            assert (disk.info.logical_sector_size, disk.info.physical_sector_size) == (512, 512)


@pytest.mark.parametrize("sizes", [(4096, 4096), (512, 4096)], ids=["4Kn", "512e"])
def test_4k_sector_disks_are_created_and_recognised(vddk_lib: vddk.Library, standin: Standin,
                                                    sizes: tuple[int, int]) -> None:
    path = str(standin.datastore / "fourk.vmdk")
    with vddk_lib.connect(None) as conn:
        conn.create(path, 4 * MiB, logical_sector_size=sizes[0], physical_sector_size=sizes[1])
        with conn.open(path) as disk:
            assert (disk.info.logical_sector_size, disk.info.physical_sector_size) == sizes
    text = (standin.datastore / "fourk.vmdk").read_text()
    assert f'ddb.logicalSectorSize = "{sizes[0]}"' in text


def test_a_4kn_disk_of_the_datastore_is_recognised(vddk_lib: vddk.Library,
                                                   standin: Standin) -> None:
    path = standin.disk("vm1/fourk.vmdk", 2 * MiB)
    descriptor = standin.datastore / "vm1" / "fourk.vmdk"
    descriptor.write_text(descriptor.read_text() + 'ddb.logicalSectorSize = "4096"\n'
                          'ddb.physicalSectorSize = "4096"\n')
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        assert disk.info.logical_sector_size == 4096
        assert disk.info.physical_sector_size == 4096


def test_bad_sector_sizes_are_refused_before_the_call(vddk_lib: vddk.Library,
                                                      standin: Standin) -> None:
    with vddk_lib.connect(None) as conn:
        with pytest.raises(vddk.InvalidArgument, match="sector sizes"):
            conn.create(str(standin.datastore / "x.vmdk"), MiB, logical_sector_size=4096,
                        physical_sector_size=512)
    assert not (standin.datastore / "x.vmdk").exists()


def test_hardware_version_is_one_the_header_defines(vddk_lib: vddk.Library,
                                                    standin: Standin) -> None:
    b = _bindings(vddk_lib)
    ffi = b.ffi
    with vddk_lib.connect(None) as conn:
        conn.create(str(standin.datastore / "d.vmdk"), MiB)
        assert f'ddb.virtualHWVersion = "{abi.HWVERSION_NEWEST}"' in (
            standin.datastore / "d.vmdk").read_text()
        assert abi.HWVERSION_NEWEST == 13
        with pytest.raises(vddk.InvalidArgument, match="hardware version 14"):
            conn.create(str(standin.datastore / "e.vmdk"), MiB, hw_version=14)
        # and the library itself refuses one above its newest
        cp = ffi.new("VixDiskLibCreateParams *")
        cp.diskType, cp.adapterType, cp.hwVersion, cp.capacity = abi.DISK_MONOLITHIC_FLAT, 3, 14, 2048
        cp.logicalSectorSize = cp.physicalSectorSize = 512
        err = b.Create(conn._handle, str(standin.datastore / "f.vmdk").encode(), cp, ffi.NULL,
                       ffi.NULL)
        assert err & 0xFFFF == vddk.errors.VIX_E_INVALID_ARG


def test_allocated_blocks_are_asked_in_whole_chunks(vddk_lib: vddk.Library,
                                                    standin: Standin) -> None:
    """A disk whose size is not a multiple of the chunk, with data in its last partial chunk:
    the library is never asked about a partial chunk (the stand-in refuses that), and the tail
    counts as data so nothing is lost."""
    size = 3 * MiB + 128 * 1024
    path = standin.disk("vm1/tail.vmdk", size, data=b"\x01" * 4096, at=3 * MiB + 64 * 1024)
    flat = standin.datastore / "vm1" / "tail-flat.vmdk"
    with open(flat, "r+b") as f:
        f.seek(MiB)
        f.write(b"\x02" * 4096)
    b = _bindings(vddk_lib)
    ffi = b.ffi
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        extents = disk.allocated_extents(chunk_bytes=MiB)
        assert extents == [(MiB, MiB), (3 * MiB, 128 * 1024)]
        data = disk.read(3 * MiB, 128 * 1024)
        assert data[64 * 1024:64 * 1024 + 4096] == b"\x01" * 4096
        # what the library itself says about a partial chunk and an oversized chunk
        out = ffi.new("VixDiskLibBlockList **")
        err = b.QueryAllocatedBlocks(disk._handle, 0, size // 512, 2048, out)
        assert err & 0xFFFF == vddk.errors.VIX_E_INVALID_ARG
        err = b.QueryAllocatedBlocks(disk._handle, 0, 0, 256 * 1024, out)
        assert err & 0xFFFF == vddk.errors.VIX_E_INVALID_ARG


def test_a_chunk_above_the_maximum_is_queried_at_the_maximum(vddk_lib: vddk.Library,
                                                             standin: Standin) -> None:
    size = 256 * MiB
    path = standin.disk("vm1/big.vmdk", size, data=b"\x03" * 512, at=100 * MiB)
    chunk = 2 * abi.MAX_CHUNK_SECTORS * 512  # 128 MiB
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        assert disk.allocated_extents(chunk_bytes=chunk) == [(0, chunk)]
        assert disk.allocated_extents(chunk_bytes=MiB) == [(100 * MiB, MiB)]


def test_library_names_of_vddk_9_and_full_versions(vddk_libdir: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    nine = tmp_path / "nine"
    nine.mkdir()
    shutil.copy(vddk_libdir / "libvixDiskLib.so.8", nine / "libvixDiskLib.so.9")
    assert vddk.find_library(nine) == nine / "libvixDiskLib.so.9"
    assert library.version_of(nine / "libvixDiskLib.so.9") == (9,)
    full = tmp_path / "full"
    full.mkdir()
    shutil.copy(vddk_libdir / "libvixDiskLib.so.8", full / "libvixDiskLib.so.8.0.3")
    shutil.copy(vddk_libdir / "libvixDiskLib.so.8", full / "libvixDiskLib.so.7.0.3")
    assert vddk.find_library(full) == full / "libvixDiskLib.so.8.0.3"
    (full / "libvixDiskLib.so").symlink_to("libvixDiskLib.so.7.0.3")
    assert library.version_of(full / "libvixDiskLib.so") == (7, 0, 3)
    assert "/usr/lib64/vmware-vix-disklib/lib64" in library.INSTALL_DIRS  # nbdkit's default


def test_the_version_announced_to_initex_follows_the_library(vddk_lib: vddk.Library,
                                                             standin: Standin) -> None:
    b = _bindings(vddk_lib)
    assert b.major == 8 and b.init_version == (7, 0)
    assert standin.stat_lines("init")[0] == ["init", "7", "0"]
    six = library.Bindings(b.path, b.ffi, b.lib, b.functions, b.missing_optional, version=(6, 7))
    assert six.init_version == (6, 7)
    assert not abi.info_has_sector_sizes(six.major) and abi.info_has_sector_sizes(9)


def test_bundled_libraries_load_in_process(tmp_path: pathlib.Path) -> None:
    """A VDDK whose libvixDiskLib.so needs a library shipped beside it (as the real one needs
    its OpenSSL and libstdc++) loads in this process without LD_LIBRARY_PATH."""
    lib64 = tmp_path / "vddk" / "lib64"
    lib64.mkdir(parents=True)
    (tmp_path / "bundle.c").write_text("int repofs_bundled_answer(void) { return 42; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libvddkbundle.so.1", "-o",
                    str(lib64 / "libvddkbundle.so.1"), str(tmp_path / "bundle.c")], check=True)
    sources = sorted(str(p) for p in STANDIN_SRC.glob("*.c"))
    subprocess.run(["gcc", "-O0", "-shared", "-fPIC", "-fvisibility=hidden",
                    "-Wl,-soname,libvixDiskLib.so.9", "-Wl,--no-as-needed", "-o",
                    str(lib64 / "libvixDiskLib.so.9"), *sources, f"-L{lib64}",
                    "-l:libvddkbundle.so.1", "-lpthread"], check=True)
    needed = subprocess.run(["readelf", "-d", str(lib64 / "libvixDiskLib.so.9")],
                            capture_output=True, text=True, check=True).stdout
    assert "libvddkbundle.so.1" in needed
    found = vddk.find_library(tmp_path / "vddk")
    bindings = library.load(found)
    assert bindings.major == 9
    assert lib64 / "libvddkbundle.so.1" in library._preloaded
