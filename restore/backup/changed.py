"""What to read of a disk: the changed areas since the previous generation, or all of it.

Role: ``plan_disk(si, vm, snapshot, disk, previous)`` decides, for one disk described by
``metadata.describe_disk`` and the previous generation's record of it (its manifest entry's
``source`` dict, or None), whether the backup is incremental, and returns a ``ReadPlan``: the
extents, whether they are changes, and the reason in words. The rules:

- no previous generation of this disk: all allocated areas (change id ``*``), "first backup";
- the disk's capacity differs, or its uuid, or the previous change id is missing, or the changed
  blocks cannot be trusted (``distrust``: a revert, tracking switched on with snapshots present —
  see ``trust``): read in full, saying why;
- otherwise ``QueryChangedDiskAreas(snapshot, key, offset, previous change id)``, called in a
  loop until ``startOffset + length`` covers the disk; a fault there (a reset change-tracking
  log, an id of another disk) means the id is unusable: read in full, saying why.

"Full" means every allocated area (``*``); when changed-block tracking is off even that is not
available and the caller falls back to VDDK's allocated blocks (``extents=None``).

Limits: the loop is bounded (a server whose answers do not advance is an error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from restore.vsphere.errors import ChangeTrackingFailed
from restore.vsphere.tasks import fault_text

MAX_QUERIES = 1_000_000


@dataclass
class ReadPlan:
    extents: list[tuple[int, int]] | None  # None: ask VDDK for the allocated blocks
    are_changes: bool
    reason: str
    base_change_id: str | None = None

    @property
    def mode(self) -> str:
        return "changed" if self.are_changes else "full"

    @property
    def bytes(self) -> int | None:
        return None if self.extents is None else sum(n for _, n in self.extents)


def merge(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, length in sorted(extents):
        if length <= 0:
            continue
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], start + length - out[-1][0])
        else:
            out.append([start, length])
    return [(s, n) for s, n in out]


def query_changed_areas(vm: vim.VirtualMachine, snapshot: Any, device_key: int, capacity: int,
                        change_id: str) -> list[tuple[int, int]]:
    """Every area changed since ``change_id`` (``"*"``: every allocated area), merged."""
    extents: list[tuple[int, int]] = []
    offset = 0
    for _ in range(MAX_QUERIES):
        if offset >= capacity:
            return merge(extents)
        info = vm.QueryChangedDiskAreas(snapshot=snapshot, deviceKey=device_key,
                                        startOffset=offset, changeId=change_id)
        for area in info.changedArea or []:
            extents.append((int(area.start), int(area.length)))
        end = int(info.startOffset) + int(info.length)
        if end <= offset:
            raise ChangeTrackingFailed(
                f"QueryChangedDiskAreas for disk {device_key} did not advance past offset {offset}")
        offset = end
    raise ChangeTrackingFailed(f"QueryChangedDiskAreas for disk {device_key}: too many pages")


def plan_disk(vm: vim.VirtualMachine, snapshot: Any, disk: dict[str, Any],
              previous: dict[str, Any] | None, *, tracking: bool,
              distrust: str | None = None) -> ReadPlan:
    """The plan for one disk (``disk`` as in the metadata's ``disks`` list); ``distrust`` is
    why the changed blocks cannot be trusted for this VM, if they cannot."""
    capacity = disk["capacity_bytes"]
    change_id = disk.get("change_id")

    def full(reason: str) -> ReadPlan:
        if tracking and change_id:
            try:
                return ReadPlan(query_changed_areas(vm, snapshot, disk["key"], capacity, "*"),
                                False, reason)
            except vmodl.MethodFault as e:
                return ReadPlan(None, False, f"{reason}; allocated areas from VDDK "
                                             f"(QueryChangedDiskAreas *: {fault_text(e)})")
        return ReadPlan(None, False, reason if tracking else
                        f"{reason}; changed-block tracking is off: allocated areas from VDDK")

    if previous is None:
        return full("first backup of this disk")
    prev_capacity = previous.get("capacity_bytes")
    if prev_capacity is not None and prev_capacity != capacity:
        return full(f"capacity changed from {prev_capacity} to {capacity} bytes: read in full")
    prev_uuid, uuid = previous.get("uuid"), disk.get("uuid")
    if prev_uuid and uuid and prev_uuid != uuid:
        return full(f"a different disk in this slot (uuid {uuid}, was {prev_uuid}): read in full")
    if distrust:
        return full(f"{distrust}: read in full")
    prev_id = previous.get("change_id")
    if not prev_id:
        return full("the previous generation has no change id: read in full")
    if not tracking or not change_id:
        return full("changed-block tracking gave no change id at this snapshot: read in full")
    try:
        extents = query_changed_areas(vm, snapshot, disk["key"], capacity, prev_id)
    except vmodl.MethodFault as e:
        return full(f"change id {prev_id} unusable ({fault_text(e)}): read in full")
    return ReadPlan(extents, True, f"changed since {prev_id}", base_change_id=prev_id)
