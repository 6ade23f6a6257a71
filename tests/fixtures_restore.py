"""Fixtures for the vSphere restore: a VM backed up through the CLI, then restored and judged.

``restore_bed`` (function scope, on the session's simulator, through ``vsphere``) gives a
``RestoreBed``: ``backed_up(name, disks, pieces)`` creates a VM in the test vCenter, writes guest
data into its disks through VixDiskLib, backs it up with ``repofs backup vm:NAME`` and returns the
generation with the disks as the backup holds them (``repofs restore --to-dir``, raw);
``restore(*args)`` runs ``repofs restore`` with the vSphere options; ``vm(name)`` reads what the
test vCenter says about a VM; ``same_disk(restored_vmdk, raw)`` is ``qemu-img compare``;
``inventory()`` is a comparable picture of the whole inventory and of the datastore folders.
"""
from __future__ import annotations

import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from pyVmomi import vim, vmodl

from format.repository import Repository
from repofs.view.export import restore_to_dir
from repofs.view.tree import RepositoryView

from fixtures_vcsim import connect, disconnect, find_by_name, get_properties, wait_task
from fixtures_vsphere import MiB, VSphereBed, unique


@dataclass
class Backup:
    vm: str
    generation: str
    raws: dict[str, Path]          # disk label -> the disk as backed up (raw file)


@dataclass
class RestoreBed:
    bed: VSphereBed

    @property
    def vcsim(self) -> Any:
        return self.bed.vcsim

    def backed_up(self, prefix: str, disks: Sequence[int] = (8 * MiB, 4 * MiB),
                  pieces: dict[int, list[tuple[int, bytes]]] | None = None, seed: int = 1) -> Backup:
        name = unique(prefix)
        self.bed.create_vm(name, disks)
        if pieces is None:
            rng = random.Random(seed)
            pieces = {0: [(1 * MiB, rng.randbytes(200_192)), (5 * MiB, rng.randbytes(2 * MiB + 4096))]}
        for index, writes in pieces.items():
            self.bed.write(self.bed.disk_path(name, index), writes)
        self.bed.backup(f"vm:{name}")
        # The backup as the repository holds it, read in-process (the CLI's --to-dir path).
        gen = RepositoryView(Repository.open(str(self.bed.repo), None)).generation(name)
        target = self.bed.tmp / f"expected-{name}"
        restore_to_dir(gen, str(target))
        return Backup(name, gen.name, {p.stem: p for p in target.glob("*.raw")})

    def restore(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [*self.bed.command(*args)]
        cmd[cmd.index("backup")] = "restore"
        proc = subprocess.run(cmd, env=self.bed.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"repofs restore {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def vm(self, name: str) -> dict[str, Any] | None:
        """What vCenter says about the VM ``name`` (None if there is none)."""
        si = connect(self.vcsim)
        try:
            try:
                vm = find_by_name(si, vim.VirtualMachine, name)
            except LookupError:
                return None
            p = get_properties(si, vm, ["config", "runtime.powerState", "snapshot", "parent",
                                        "resourcePool", "runtime.host"])
            config = p["config"]
            devices = list(config.hardware.device)
            return {"moref": vm._moId, "config": config, "devices": devices,
                    "power": str(p.get("runtime.powerState")),
                    "snapshots": p.get("snapshot"),
                    "folder": get_properties(si, p["parent"], ["name"]).get("name"),
                    "pool": get_properties(si, p["resourcePool"], ["name"]).get("name")
                    if p.get("resourcePool") is not None else None,  # a template has none
                    "host": get_properties(si, p["runtime.host"], ["name"]).get("name")
                    if p.get("runtime.host") is not None else None,
                    "disks": [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)],
                    "nics": [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)],
                    "controllers": [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]}
        finally:
            disconnect(si)

    def power(self, name: str, on: bool) -> None:
        si = connect(self.vcsim)
        try:
            vm = find_by_name(si, vim.VirtualMachine, name)
            wait_task(si, vm.PowerOnVM_Task() if on else vm.PowerOffVM_Task())
        finally:
            disconnect(si)

    def local(self, datastore_path: str) -> Path:
        return self.vcsim.local_path(datastore_path)

    def same_disk(self, restored: str, raw: Path) -> bool:
        """``qemu-img compare`` of a restored disk (datastore path) with the backed-up raw disk."""
        proc = subprocess.run(["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "raw",
                               str(self.local(restored)), str(raw)], capture_output=True, text=True)
        return proc.returncode == 0

    def inventory(self) -> dict[str, Any]:
        """Every managed entity (type, moref, name) and every file of the datastore folders."""
        si = connect(self.vcsim)
        try:
            content = si.content
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ManagedEntity], True)
            try:
                pc = vmodl.query.PropertyCollector
                spec = pc.FilterSpec(
                    objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[pc.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                    propSet=[pc.PropertySpec(type=vim.ManagedEntity, pathSet=["name"])])
                entities = []
                result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
                while result is not None:
                    entities += [(type(o.obj).__name__, o.obj._moId, o.propSet[0].val if o.propSet else None)
                                 for o in result.objects]
                    if not result.token:
                        break
                    result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
            finally:
                view.Destroy()
        finally:
            disconnect(si)
        files = sorted(str(p.relative_to(folder)) for folder in self.vcsim.datastores.values()
                       for p in folder.rglob("*") if p.is_file() and p.name != "vmware.log")
        return {"entities": sorted(entities), "files": files}


@pytest.fixture
def restore_bed(vsphere: VSphereBed) -> Iterator[RestoreBed]:
    yield RestoreBed(vsphere)


__all__ = ["Backup", "MiB", "RestoreBed", "restore_bed"]
