"""Whether vCenter's changed blocks can be trusted, and if not, why (backup and Quick Rollback).

Role: changed-block tracking answers what changed since a change id, but VMware documents
conditions in which the answer is wrong without any fault. ``vm_state`` reads what the next
backup needs to recognise them (the VM's snapshot tree and current snapshot, read before our
own snapshot exists) and is recorded with each disk of the generation; ``distrust`` compares
the recorded state with today's and returns the reason to read in full, or None:

- the VM was reverted to a snapshot since the previous generation: vCenter's event
  ``com.vmware.vc.vm.VmStateRevertedToSnapshot`` for the VM after the previous backup's
  snapshot, or a snapshot that existed then and has become the current one (the snapshot tree).
  A revert rewinds the disks while the change ids issued before keep counting from where they
  were: an incremental on them misses every block the revert put back;
- tracking was switched on while the VM had snapshots (KB 1020128): its answers are
  incomplete until tracking is switched on again with no snapshot present, which
  ``tracking_needs_reset`` asks the caller to do;
- the previous generation's record of tracking says it was not trustworthy.

Limits: an event log trimmed by vCenter's retention and a revert to the snapshot that was
already current leave only the tree, which cannot see that case; the event is what catches it.
Snapshots of our own (``SNAPSHOT_PREFIX``) are not part of the recorded tree.
"""
from __future__ import annotations

import datetime
from typing import Any

from pyVmomi import vim, vmodl

from restore.vsphere.tasks import content, properties

REVERT_EVENT = "com.vmware.vc.vm.VmStateRevertedToSnapshot"
KB_1020128 = ("changed-block tracking was switched on while the VM had snapshots; its answers "
              "are incomplete until it is switched on again without snapshots (KB 1020128)")


def _walk(nodes: Any) -> Any:
    for node in nodes or []:
        yield node
        yield from _walk(node.childSnapshotList)


def vm_state(si: Any, vm: vim.VirtualMachine, own_prefix: str) -> dict[str, Any]:
    """The snapshot tree as the next backup compares it: the current snapshot and every
    snapshot that is not ours, with their creation times (ISO 8601)."""
    return state_of(properties(si, vm, ["snapshot"]).get("snapshot"), own_prefix)


def state_of(info: Any, own_prefix: str) -> dict[str, Any]:
    """``vm_state`` of a VM's ``snapshot`` property already read (None: no snapshot)."""
    if info is None:
        return {"current_snapshot": None, "snapshots": []}
    snaps = [{"moref": n.snapshot._moId, "name": n.name,
              "created": n.createTime.isoformat() if n.createTime else None}
             for n in _walk(info.rootSnapshotList) if not n.name.startswith(own_prefix)]
    current = info.currentSnapshot._moId if info.currentSnapshot is not None else None
    own = {n.snapshot._moId for n in _walk(info.rootSnapshotList) if n.name.startswith(own_prefix)}
    return {"current_snapshot": None if current in own else current, "snapshots": snaps}


def revert_events(si: Any, vm: vim.VirtualMachine, since: datetime.datetime | None) -> list[str]:
    """vCenter's revert events of ``vm`` after ``since`` (all when None), as text."""
    manager = content(si).eventManager
    spec = vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
        # the event is an EventEx; some servers filter by the class name only
        eventTypeId=[REVERT_EVENT, "EventEx"])
    found = []
    for event in manager.QueryEvents(spec) or []:
        if getattr(event, "eventTypeId", None) != REVERT_EVENT:
            continue
        created = event.createdTime
        if since is not None and created is not None and created <= since:
            continue
        text = getattr(event, "fullFormattedMessage", None) or "reverted to a snapshot"
        found.append(f"{text} at {created.isoformat() if created else 'an unknown time'}")
    return found


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


def distrust(si: Any, vm: vim.VirtualMachine, previous: dict[str, Any] | None,
             now: dict[str, Any]) -> str | None:
    """Why the changed blocks since the previous generation cannot be trusted, or None.

    ``previous`` is the previous generation's record for a disk of this VM (its ``vm_state``
    and ``tracking``); ``now`` is ``vm_state`` before this backup's snapshot."""
    if previous is None:
        return None
    tracking = previous.get("tracking") or {}
    if tracking.get("trusted") is False:
        return f"the previous generation's tracking was not trustworthy: {tracking.get('why')}"
    before = previous.get("vm_state")
    if not isinstance(before, dict):
        return None  # a generation written before these records: nothing to compare
    since = _parse_time(before.get("taken_at"))
    try:
        events = revert_events(si, vm, since)
    except vmodl.MethodFault as e:
        events = []
        note = f" (events not readable: {getattr(e, 'msg', type(e).__name__)})"
    else:
        note = ""
    if events:
        return f"the VM was reverted to a snapshot since the previous generation ({events[-1]})"
    known = {s.get("moref") for s in before.get("snapshots") or [] if isinstance(s, dict)}
    current = now.get("current_snapshot")
    if current is not None and current != before.get("current_snapshot") and current in known:
        name = next((s["name"] for s in now["snapshots"] if s["moref"] == current), current)
        return (f"the VM's current snapshot is now {name!r}, which existed at the previous "
                f"generation: it was reverted to it{note}")
    return None


def tracking_needs_reset(previous: dict[str, Any] | None) -> bool:
    """Whether the previous generation found tracking switched on with snapshots present."""
    tracking = (previous or {}).get("tracking") or {}
    return tracking.get("trusted") is False and tracking.get("why") == KB_1020128
