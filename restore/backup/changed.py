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

The server's answers are checked (``ChangedAreasRefused``): an answer that does not cover
the offset it was asked for, or holds an area that is negative, empty-or-negative in
length, outside the range the answer covers, or beyond the end of the disk, or more areas than
the range has sectors, or more than ``MAX_AREAS`` areas in all, is not used — the disk is then
read in full (every allocated area from
VDDK), and the plan's reason says which area of which answer was refused. Overlapping and
unsorted areas inside the disk are harmless and merged.

Limits: the loop is bounded (a server whose answers do not advance is an error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from format.spans import merge

from restore.vsphere.errors import ChangeTrackingFailed
from restore.vsphere.tasks import fault_text

MAX_QUERIES = 1_000_000
MAX_AREAS = 1_000_000   # changed areas of one disk kept in memory (~100 MB of tuples)
SECTOR = 512


class ChangedAreasRefused(ChangeTrackingFailed):
    """vCenter's QueryChangedDiskAreas answer does not describe the disk (see the module)."""


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


def check_answer(info: Any, asked: int, capacity: int, disk: object) -> list[tuple[int, int]]:
    """The areas of one QueryChangedDiskAreas answer (a ``DiskChangeInfo``, of a VM's disk
    or of a first-class disk) to a query at ``asked``, or ``ChangedAreasRefused`` naming the
    first thing wrong with it."""
    where = f"QueryChangedDiskAreas for disk {disk} at offset {asked}"
    start, length = int(info.startOffset), int(info.length)
    if start < 0 or start > asked or start + length <= asked:
        raise ChangedAreasRefused(f"{where}: the answer covers [{start}, {start + length}), "
                                  "not the offset asked for")
    end = min(start + length, capacity)
    areas = list(info.changedArea or [])
    if len(areas) > max(1, (end - start) // SECTOR):
        raise ChangedAreasRefused(f"{where}: {len(areas)} areas in {end - start} bytes")
    out = []
    for i, area in enumerate(areas):
        a_start, a_length = int(area.start), int(area.length)
        if a_start < 0 or a_length <= 0 or a_start < start or a_start + a_length > end:
            raise ChangedAreasRefused(
                f"{where}: area {i} [{a_start}, {a_length}] is "
                + ("negative or empty" if a_start < 0 or a_length <= 0 else
                   f"beyond the end of the disk ({capacity} bytes)" if a_start + a_length > capacity
                   else f"outside the answered range [{start}, {end})"))
        out.append((a_start, a_length))
    return out


def collect(extents: list[tuple[int, int]], page: list[tuple[int, int]],
            disk: object) -> list[tuple[int, int]]:
    """``extents`` with one answer's areas added (merged within the answer; everything is
    merged at the end), refused beyond ``MAX_AREAS``: memory stays bounded whatever the server
    says, and a disk that fragmented is read in full instead."""
    extents.extend(merge(page))
    if len(extents) > MAX_AREAS:
        raise ChangedAreasRefused(f"QueryChangedDiskAreas for disk {disk}: more than "
                                  f"{MAX_AREAS} changed areas")
    return extents


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
        extents = collect(extents, check_answer(info, offset, capacity, device_key), device_key)
        offset = int(info.startOffset) + int(info.length)
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
            except ChangedAreasRefused as e:
                return ReadPlan(None, False, f"{reason}; allocated areas from VDDK (refused: {e})")
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
    except ChangedAreasRefused as e:
        return full(f"changed areas since {prev_id} refused ({e}): read in full")
    return ReadPlan(extents, True, f"changed since {prev_id}", base_change_id=prev_id)
