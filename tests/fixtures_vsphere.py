"""Fixtures for the vSphere backup: the test vCenter and the VDDK stand-in, wired together.

``vsphere`` (function scope, on the session's simulator) gives a ``VSphereBed``: the simulator,
a stand-in configuration whose datastores are the simulator's datastore folders (so what VDDK
reads is what the simulator's disks hold), a stats file, an unencrypted repository, and
helpers to run ``repofs`` as a subprocess with the vSphere options, to write guest data
into a VM's disk through the VDDK binding (which records the writes in the disk's ctk log,
where the simulator's changed-block tracking reads them), and to list a VM's snapshots.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from pyVmomi import vim

import vddk
from fixtures_vcsim import VCSim, connect, create_vm, disconnect, find_by_name
from fixtures_vddk import build_standin, read_stats, write_standin_config
from restore.backup.snapshot import snapshots_of

ROOT = Path(__file__).resolve().parent.parent
REPOFS = [sys.executable, "-m", "repofs.cli"]
MiB = 2**20


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class VSphereBed:
    vcsim: VCSim
    tmp: Path
    libdir: Path
    config: Path
    stats: Path
    repo: Path
    password_file: Path

    # -- the stand-in ------------------------------------------------------------------------

    def configure(self, **settings: object) -> None:
        """(Re)write the stand-in config: the simulator's datastores, its server name and
        thumbprint (so that a wrong one is refused), stats on; ``settings`` add fault keys."""
        write_standin_config(self.config, datastores=self.vcsim.datastores, stats=self.stats,
                             server=self.vcsim.host, thumbprint=self.vcsim.thumbprint, **settings)

    def reads(self, since: int = 0) -> list[tuple[str, int, int]]:
        """(path, offset, length) of every VDDK read recorded after line ``since``."""
        return [(w[1], int(w[2]), int(w[3])) for w in read_stats(self.stats)[since:] if w[0] == "read"]

    def stat_count(self) -> int:
        return len(read_stats(self.stats))

    # -- the CLI -----------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("REPOFS_", "VSPHERE_", "VDDK_"))}
        env.update(PYTHONPATH=str(ROOT), PYTHONWARNINGS="error", VDDK_STANDIN_CONFIG=str(self.config),
                   REPOFS_REPOSITORY=str(self.repo))
        env.update(extra)
        return env

    def vsphere_args(self, *, password_file: Path | None = None, thumbprint: str | None = None) -> list[str]:
        return ["--server", self.vcsim.server, "--user", self.vcsim.user,
                "--vsphere-password-file", str(password_file or self.password_file),
                "--thumbprint", thumbprint or self.vcsim.thumbprint,
                "--vddk-libdir", str(self.libdir)]

    def command(self, *args: str, **kw: Any) -> list[str]:
        return [*REPOFS, "backup", *args, *self.vsphere_args(**kw)]

    def backup(self, *args: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(*args, **kw), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"repofs backup {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def repofs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*REPOFS, *args], env=self.env(), capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"repofs {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    # -- the simulator -----------------------------------------------------------------------

    def si(self) -> Any:
        return connect(self.vcsim)

    def create_vm(self, name: str, disks: Sequence[int] = (64 * MiB,), **kw: Any) -> Any:
        si = connect(self.vcsim)
        try:
            vm = create_vm(si, name, disks, **kw)
            return vm._moId
        finally:
            disconnect(si)

    def snapshots(self, name: str) -> list[tuple[str, str]]:
        si = connect(self.vcsim)
        try:
            return snapshots_of(si, find_by_name(si, vim.VirtualMachine, name))
        finally:
            disconnect(si)

    def disk_path(self, vm_name: str, index: int = 0) -> Path:
        """The local descriptor of the VM's disk number ``index`` (in device order)."""
        si = connect(self.vcsim)
        try:
            vm = find_by_name(si, vim.VirtualMachine, vm_name)
            disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
            return self.vcsim.local_path(disks[index].backing.fileName)
        finally:
            disconnect(si)

    def write(self, descriptor: Path, pieces: Sequence[tuple[int, bytes]]) -> None:
        """Write guest data through VixDiskLib (local mode): the stand-in logs each write in
        the disk's ctk log, which is what changed-block tracking answers from."""
        os.environ["VDDK_STANDIN_CONFIG"] = str(self.config)
        with vddk.open_library(self.libdir) as lib, lib.connect(None, read_only=False) as conn, \
                conn.open(str(descriptor), read_only=False) as disk:
            for offset, data in pieces:
                disk.write_from(offset, data)
            disk.flush()


def make_bed(vcsim: VCSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VSphereBed:
    """A bed on the given simulator (the ``vsphere`` fixture's, or one a test runs itself)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    libdir = build_standin()
    repo = tmp_path / "repo"
    pw = tmp_path / "vsphere-password"
    pw.write_text(vcsim.password + "\n")
    pw.chmod(0o600)  # a password file others can read draws a warning
    bed = VSphereBed(vcsim, tmp_path, libdir, tmp_path / "standin.conf", tmp_path / "stats.log", repo, pw)
    bed.configure()
    monkeypatch.setenv("VDDK_STANDIN_CONFIG", str(bed.config))
    subprocess.run([*REPOFS, "init", str(repo), "--encryption", "none"], env=bed.env(), check=True,
                   capture_output=True)
    return bed


@pytest.fixture
def vsphere(vcsim: VCSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VSphereBed]:
    yield make_bed(vcsim, tmp_path, monkeypatch)
