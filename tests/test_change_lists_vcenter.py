"""Changed areas as vCenter answers them (QueryChangedDiskAreas) are untrusted: an answer with
an area beyond the disk, negative or empty, outside the range it covers, not covering the
offset asked for, or with more areas than sectors, is refused and the disk read in full (its
allocated blocks from VixDiskLib), with the reason in the plan; overlapping or unsorted areas
inside the disk are merged. The test vCenter answers what a test puts in the VM's extraConfig
``repofs.vcsim.changedAreas`` (tests/vcsim/cbt.go).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from pyVmomi import vim

from fixtures_vcsim import VCSim, connected, create_vm, get_properties, set_extra_config, vm_disks, wait_task
from fixtures_vsphere import MiB, VSphereBed, unique
from restore.backup import changed

INJECT = "repofs.vcsim.changedAreas"
CAPACITY = 8 * MiB


def _plan(si: Any, vm: Any, previous_id: str | None) -> changed.ReadPlan:
    snap = wait_task(si, vm.CreateSnapshot_Task(name="cbt", memory=False, quiesce=False))
    try:
        disk = vm_disks(get_properties(si, snap, ["config"])["config"])[0]
        doc = {"capacity_bytes": CAPACITY, "change_id": disk.backing.changeId, "key": disk.key,
               "uuid": disk.backing.uuid}
        previous = None if previous_id is None else {
            "capacity_bytes": CAPACITY, "change_id": previous_id, "uuid": disk.backing.uuid}
        return changed.plan_disk(vm, snap, doc, previous, tracking=True)
    finally:
        wait_task(si, snap.RemoveSnapshot_Task(removeChildren=False))


@pytest.fixture
def tracked_vm(vcsim: VCSim) -> Any:
    with connected(vcsim) as si:
        vm = create_vm(si, unique("cbt-hostile"), [CAPACITY], change_tracking=True)
        yield si, vm
        wait_task(si, vm.Destroy_Task())


@pytest.mark.parametrize("answer, why", [
    ({"areas": [[0, 65536], [CAPACITY - 4096, 8192]]}, "area 1 [8384512, 8192] is beyond the end of the disk"),
    ({"areas": [[-65536, 131072]]}, "area 0 [-65536, 131072] is negative or empty"),
    ({"areas": [[65536, 0]]}, "area 0 [65536, 0] is negative or empty"),
    ({"areas": [[65536, -1]]}, "negative or empty"),
    ({"startOffset": 0, "length": MiB, "areas": [[2 * MiB, 4096]]}, "outside the answered range [0, 1048576)"),
    ({"startOffset": 4096, "areas": []}, "the answer covers [4096, 8392704), not the offset asked for"),
    ({"length": 0, "areas": []}, "not the offset asked for"),
    ({"length": -5, "areas": []}, "not the offset asked for"),
    ({"startOffset": -1, "length": 2, "areas": []}, "the answer covers [-1, 1)"),  # found by the long fuzz run
    ({"areas": [[512 * i, 512] for i in range(CAPACITY // 512)] + [[0, 512]]}, "16385 areas in 8388608 bytes"),
])
def test_nonsense_changed_areas_are_refused(tracked_vm: Any, answer: dict, why: str) -> None:
    si, vm = tracked_vm
    honest = _plan(si, vm, None)
    assert honest.extents is not None  # the simulator's own answer is used
    set_extra_config(si, vm, INJECT, json.dumps(answer))
    for previous_id in (None, honest_change_id(si, vm)):
        plan = _plan(si, vm, previous_id)
        assert plan.extents is None and not plan.are_changes, plan
        assert "refused" in plan.reason and why in plan.reason, plan.reason


def honest_change_id(si: Any, vm: Any) -> str:
    snap = wait_task(si, vm.CreateSnapshot_Task(name="id", memory=False, quiesce=False))
    try:
        return vm_disks(get_properties(si, snap, ["config"])["config"])[0].backing.changeId
    finally:
        wait_task(si, snap.RemoveSnapshot_Task(removeChildren=False))


def test_overlapping_unsorted_areas_inside_the_disk_are_merged(tracked_vm: Any) -> None:
    si, vm = tracked_vm
    set_extra_config(si, vm, INJECT, json.dumps(
        {"areas": [[3 * MiB, MiB], [65536, 65536], [0, 131072], [4096, 10], [3 * MiB + 4096, 2 * MiB]]}))
    plan = _plan(si, vm, None)
    assert plan.extents == [(0, 131072), (3 * MiB, 2 * MiB + 4096)]


def test_backup_with_nonsense_areas_reads_in_full_byte_for_byte(vsphere: VSphereBed, tmp_path: Path) -> None:
    """The command goes on: the incremental reads the whole disk from VixDiskLib's allocated
    blocks, and the generation restores to exactly the disk's bytes."""
    name = unique("cbt-liar")
    vsphere.create_vm(name, [CAPACITY], change_tracking=True)
    disk = vsphere.disk_path(name)
    vsphere.write(disk, [(0, b"A" * MiB), (5 * MiB, b"B" * MiB)])
    vsphere.backup(f"vm:{name}")
    vsphere.write(disk, [(2 * MiB, b"C" * 65536)])
    with connected(vsphere.vcsim) as si:
        from fixtures_vcsim import find_by_name
        vm = find_by_name(si, vim.VirtualMachine, name)
        set_extra_config(si, vm, INJECT, json.dumps({"areas": [[0, 65536], [CAPACITY, 65536]]}))
    out = json.loads(vsphere.backup(f"vm:{name}", "--json").stdout)[0]
    assert out["disks"][0]["mode"] == "full"
    assert "refused" in out["plan"][0]["reason"] and "beyond the end of the disk" in out["plan"][0]["reason"]
    restored = tmp_path / "r"
    gens = json.loads(vsphere.repofs("generations", name, "--json").stdout)
    vsphere.repofs("restore", f"vm:{name}", "--to-dir", str(restored), "--generation", gens[-1]["generation"])
    got = next(restored.glob("*.raw")).read_bytes()
    assert got == b"A" * MiB + bytes(MiB) + b"C" * 65536 + bytes(3 * MiB - 65536) + b"B" * MiB + bytes(2 * MiB)
    assert vsphere.snapshots(name) == []


# --- fuzzing the check of an answer ----------------------------------------------------------------

class _Area:
    def __init__(self, start: int, length: int) -> None:
        self.start, self.length = start, length


class _Info:
    def __init__(self, start: int, length: int, areas: list) -> None:
        self.startOffset, self.length, self.changedArea = start, length, [_Area(*a) for a in areas]


numbers = st.integers(-(2**64), 2**64) | st.integers(-4096, CAPACITY + 4096)


@given(asked=st.integers(0, CAPACITY - 1), start=numbers, length=numbers,
       areas=st.lists(st.tuples(numbers, numbers), max_size=12))
def test_fuzz_changed_area_answers(asked: int, start: int, length: int, areas: list) -> None:
    """Any answer: either areas inside the disk and inside the answer, or the named refusal."""
    try:
        got = changed.check_answer(_Info(start, length, areas), asked, CAPACITY, 2000)
    except changed.ChangedAreasRefused as e:
        assert "\n" not in str(e)
        return
    assert start <= asked < start + length
    for s, n in got:
        assert 0 <= start <= s and n > 0 and s + n <= min(start + length, CAPACITY)
