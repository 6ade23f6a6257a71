"""Waiting for vSphere tasks (restore/vsphere/tasks.py) against the test vCenter.

A task that has not ended at the first read is waited for through the server's updates
(``WaitForUpdatesEx``); the test vCenter ends its tasks before answering, so these tests call
that path directly: it must give the task's result, or its failure with the server's message,
as the first read does.
"""
from __future__ import annotations

import uuid

import pytest
from pyVmomi import vim

from fixtures_vcsim import SNAPSHOT_FAULT_KEY, VCSim, connected, create_vm, get_properties, set_extra_config
from restore.vsphere import tasks
from restore.vsphere.errors import TaskFailed

MiB = 2**20


def test_the_end_of_a_task_comes_through_updates(vcsim: VCSim) -> None:
    with connected(vcsim) as si:
        vm = create_vm(si, f"waits-{uuid.uuid4().hex[:8]}", [MiB])
        snap = tasks.wait_for_updates(si, vm.CreateSnapshot_Task(name="one", memory=False,
                                                                 quiesce=False), "snapshot")
        assert isinstance(snap, vim.vm.Snapshot)
        tree = get_properties(si, vm, ["snapshot"])["snapshot"]
        assert [n.snapshot._moId for n in tree.rootSnapshotList] == [snap._moId]
        # the same answer as the first read gives
        assert tasks.wait(si, snap.RemoveSnapshot_Task(removeChildren=False), "remove") is None
        assert get_properties(si, vm, ["snapshot"]).get("snapshot") is None

        set_extra_config(si, vm, SNAPSHOT_FAULT_KEY, "TRUE")
        with pytest.raises(TaskFailed, match=r"^snapshot of the VM: .*SnapshotFault"):
            tasks.wait_for_updates(si, vm.CreateSnapshot_Task(name="two", memory=False,
                                                              quiesce=False), "snapshot of the VM")
        with pytest.raises(TaskFailed, match="SnapshotFault"):
            tasks.wait(si, vm.CreateSnapshot_Task(name="three", memory=False, quiesce=False),
                       "snapshot of the VM")

