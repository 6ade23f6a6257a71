"""Fixtures for the VixDiskLib binding: the stand-in library, its configuration, test disks.

``vddk_libdir`` builds the C stand-in (tests/vddk_standin) into build/ and yields that
directory; ``standin`` writes a stand-in configuration file and points VDDK_STANDIN_CONFIG at
it; ``make_flat_disk`` writes a monolithicFlat descriptor and its flat extent. Other test
modules (e.g. the restore tests) can use the same fixtures and helpers.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
from dataclasses import dataclass, field
from typing import Iterator

import pytest

import vddk

SERVER = "vc.test"
USER = "backup@vsphere.local"
PASSWORD = "s3cret-Pa55"
THUMBPRINT = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD"
DEFAULTS: dict[str, object] = {
    "server": SERVER, "user": USER, "password": PASSWORD, "thumbprint": THUMBPRINT,
}

ROOT = pathlib.Path(__file__).resolve().parent.parent
STANDIN_SRC = ROOT / "tests" / "vddk_standin"
BUILD = ROOT / "build"


def build_standin(out: pathlib.Path = BUILD) -> pathlib.Path:
    """Build the stand-in into ``out`` (make is a no-op when it is up to date)."""
    subprocess.run(["make", "-s", "-C", str(STANDIN_SRC), f"OUT={out}"], check=True)
    return out


def write_standin_config(path: pathlib.Path, *, datastores: dict[str, str | os.PathLike[str]]
                         | None = None, **settings: object) -> pathlib.Path:
    """Write a stand-in config: ``datastore.<NAME>=<dir>`` lines, then ``key=value`` lines."""
    lines = ["# stand-in VixDiskLib configuration (tests/fixtures_vddk.py)"]
    for name, directory in (datastores or {}).items():
        lines.append(f"datastore.{name}={os.fspath(directory)}")
    for key, value in settings.items():
        if value is not None:
            lines.append(f"{key}={value}")
    path.write_text("\n".join(lines) + "\n")
    return path


DESCRIPTOR = """\
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW {sectors} FLAT "{flat}" 0

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "{cylinders}"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.uuid = "60 00 c2 9a 3b 51 7e 5d-bd 06 62 7f 55 2e 6d 01"
ddb.virtualHWVersion = "14"
"""


def make_flat_disk(descriptor: pathlib.Path, size: int, data: bytes | None = None,
                   at: int = 0) -> pathlib.Path:
    """A monolithicFlat disk of ``size`` bytes (sparse), with ``data`` written at ``at``."""
    assert size % 512 == 0
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    flat = descriptor.with_name(descriptor.name[:-len(".vmdk")] + "-flat.vmdk")
    sectors = size // 512
    descriptor.write_text(DESCRIPTOR.format(sectors=sectors, flat=flat.name,
                                            cylinders=max(1, sectors // (255 * 63))))
    with open(flat, "wb") as f:
        f.truncate(size)
        if data:
            f.seek(at)
            f.write(data)
    return descriptor


def read_stats(path: pathlib.Path) -> list[list[str]]:
    """The stats file's lines, split into words ("read <path> <offset> <length>" ...)."""
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines()]


@dataclass
class Standin:
    """A stand-in set-up for one test: a datastore directory, a config file, a stats file."""

    directory: pathlib.Path
    config: pathlib.Path
    stats: pathlib.Path
    datastore: pathlib.Path
    settings: dict[str, object] = field(default_factory=dict)

    def configure(self, **settings: object) -> None:
        """Rewrite the config: the defaults (server, credentials) updated with ``settings``
        (a value of None drops a key). Read by the next InitEx."""
        self.settings = {**DEFAULTS, **settings}
        write_standin_config(self.config, datastores={"LocalDS_0": self.datastore},
                             stats=self.stats, **self.settings)

    def params(self, **overrides: object) -> vddk.ConnectParams:
        """Connect parameters that the configured stand-in accepts, with overrides."""
        values: dict[str, object] = {"server": SERVER, "vmx_spec": "moref=vm-42",
                                     "thumbprint": THUMBPRINT, "user": USER,
                                     "password": PASSWORD}
        values.update(overrides)
        return vddk.ConnectParams(**values)  # type: ignore[arg-type]

    def disk(self, name: str, size: int, data: bytes | None = None, at: int = 0) -> str:
        """A disk in LocalDS_0; returns its datastore path "[LocalDS_0] name"."""
        make_flat_disk(self.datastore / name, size, data, at)
        return f"[LocalDS_0] {name}"

    def stat_lines(self, kind: str | None = None) -> list[list[str]]:
        return [w for w in read_stats(self.stats) if kind is None or w[0] == kind]


@pytest.fixture(scope="session")
def vddk_libdir() -> pathlib.Path:
    """The directory holding the stand-in libvixDiskLib.so.8 (built if needed)."""
    return build_standin()


@pytest.fixture
def standin(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    """A configured stand-in: datastore LocalDS_0 in tmp_path, server vc.test, stats on."""
    s = Standin(tmp_path, tmp_path / "standin.conf", tmp_path / "stats.log",
                tmp_path / "LocalDS_0")
    s.datastore.mkdir()
    s.configure()
    monkeypatch.setenv("VDDK_STANDIN_CONFIG", str(s.config))
    yield s


@pytest.fixture
def vddk_lib(vddk_libdir: pathlib.Path, standin: Standin) -> Iterator[vddk.Library]:
    """The stand-in, initialized in this process with the ``standin`` configuration."""
    with vddk.open_library(vddk_libdir, isolated=False) as lib:
        yield lib
