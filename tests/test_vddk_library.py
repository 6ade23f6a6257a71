"""Finding and loading libvixDiskLib: search order, versioned names, the symbol table."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

import vddk
from vddk import library
from fixtures_vddk import STANDIN_SRC


def test_explicit_libdir_wins(vddk_libdir: pathlib.Path, tmp_path: pathlib.Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDDK_LIBDIR", str(tmp_path))
    assert vddk.find_library(vddk_libdir) == vddk_libdir / "libvixDiskLib.so.8"


def test_env_libdir_and_vddk_root(vddk_libdir: pathlib.Path, tmp_path: pathlib.Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A VDDK root has the library in lib64/; the versioned name comes before the bare one.
    (tmp_path / "lib64").mkdir()
    shutil.copy(vddk_libdir / "libvixDiskLib.so.8", tmp_path / "lib64" / "libvixDiskLib.so.7")
    (tmp_path / "lib64" / "libvixDiskLib.so").symlink_to("libvixDiskLib.so.7")
    monkeypatch.setenv("VDDK_LIBDIR", str(tmp_path))
    assert vddk.find_library() == tmp_path / "lib64" / "libvixDiskLib.so.7"


def test_usual_paths_when_nothing_given(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("VDDK_LIBDIR", raising=False)
    monkeypatch.setattr(library, "INSTALL_DIRS", (str(tmp_path / "a"), str(tmp_path / "b")))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "libvixDiskLib.so.6").write_bytes(b"")
    assert vddk.find_library() == tmp_path / "b" / "libvixDiskLib.so.6"


def test_not_found_is_one_clear_line(tmp_path: pathlib.Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VDDK_LIBDIR", raising=False)
    with pytest.raises(vddk.LibraryNotFound) as info:
        vddk.open_library(tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert str(tmp_path) in text and "VDDK_LIBDIR" in text
    assert info.value.code == 4


def _build(tmp_path: pathlib.Path, name: str, *extra: str) -> pathlib.Path:
    out = tmp_path / name
    subprocess.run(["make", "-s", "-C", str(STANDIN_SRC), f"OUT={out}",
                    f"CFLAGS=-O2 {' '.join(extra)}"], check=True)
    return out


def test_missing_required_symbol_names_minimum_version(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "tiny.c"
    src.write_text("unsigned long VixDiskLib_InitEx(void) { return 0; }\n")
    lib = tmp_path / "libvixDiskLib.so.8"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    with pytest.raises(vddk.MissingSymbol) as info:
        vddk.load(lib)
    assert info.value.symbol == "VixDiskLib_Exit"
    assert "VDDK 5.5 or newer is required" in str(info.value)


def test_missing_optional_symbols_degrade(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A VDDK 6.5-like library: no QueryAllocatedBlocks, no AllocateConnectParams."""
    from fixtures_vddk import make_flat_disk, write_standin_config

    libdir = _build(tmp_path, "old", "-DSTANDIN_VDDK_6_5")
    ds = tmp_path / "ds"
    make_flat_disk(ds / "d.vmdk", 4 << 20, b"\x01" * 512, at=1 << 20)
    write_standin_config(tmp_path / "c.conf", datastores={"DS": ds}, server="vc", user="u",
                         password="p")
    monkeypatch.setenv("VDDK_STANDIN_CONFIG", str(tmp_path / "c.conf"))
    with vddk.open_library(libdir, isolated=False) as lib:
        assert not lib.has("QueryAllocatedBlocks") and not lib.has("AllocateConnectParams")
        assert lib.has("Flush")
        params = vddk.ConnectParams(server="vc", vmx_spec="moref=vm-1", user="u", password="p")
        with lib.connect(params) as conn, conn.open("[DS] d.vmdk") as disk:
            assert disk.allocated_extents() == [(0, 4 << 20)]
            assert disk.read(1 << 20, 512) == b"\x01" * 512


# Offsets of the VDDK 6.7+ structs on LP64, as the real library lays them out.
LAYOUT = {
    "VixDiskLibConnectParams": (128, {"vmxSpec": 0, "serverName": 8, "thumbPrint": 16,
                                      "privateUse": 24, "credType": 32, "creds": 40,
                                      "port": 64, "nfcHostPort": 68, "reserved3": 72,
                                      "reserved4": 80, "reserved5": 88, "spec": 96,
                                      "specType": 120}),
    # VDDK 7.0 added the two uint32 sector sizes at the end of the info and create parameters.
    "VixDiskLibInfo": (64, {"biosGeo": 0, "physGeo": 12, "capacity": 24, "adapterType": 32,
                            "numLinks": 36, "parentFileNameHint": 40, "uuid": 48,
                            "logicalSectorSize": 56, "physicalSectorSize": 60}),
    "VixDiskLibBlockList": (24, {"numBlocks": 0, "blocks": 8}),
    "VixDiskLibCreateParams": (32, {"diskType": 0, "adapterType": 4, "hwVersion": 8,
                                    "capacity": 16, "logicalSectorSize": 24,
                                    "physicalSectorSize": 28}),
}


def test_cdef_layouts_match_the_abi() -> None:
    ffi = vddk.abi.make_ffi()
    for struct, (size, fields) in LAYOUT.items():
        assert ffi.sizeof(struct) == size, struct
        for name, offset in fields.items():
            assert ffi.offsetof(struct, name) == offset, (struct, name)


def test_standin_header_has_the_same_layouts(tmp_path: pathlib.Path) -> None:
    """The stand-in's C declarations agree with the binding's cdef (the compiler says so)."""
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "standin.h"',
             "int main(void) {"]
    for struct, (_size, fields) in LAYOUT.items():
        lines.append(f'printf("%zu\\n", sizeof({struct}));')
        for name in fields:
            lines.append(f'printf("%zu\\n", offsetof({struct}, {name}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(["gcc", f"-I{STANDIN_SRC}", "-o", str(exe), str(src)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True,
                                          text=True).stdout.split()]
    expected = [v for size, fields in LAYOUT.values() for v in (size, *fields.values())]
    assert got == expected
