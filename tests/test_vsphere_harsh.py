"""The backup against vSphere as it really behaves (tests/vcsim/harsh.go, the stand-in's faults).

Each test sets up a condition that a kind test vCenter hides — a snapshot that freezes the
disks while the guest writes, a revert that changed-block tracking does not see, tracking
switched on with snapshots present (KB 1020128), a VM that cannot track, a snapshot left by a
killed run, a removal that leaves consolidationNeeded, transient NFC faults, a session that
expires during a long read — and checks the generation byte for byte against the disk's
state at the backup's snapshot, and what the backup says about it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from fixtures_vcsim import connected, find_by_name, running_vcsim, set_extra_config, wait_task
from fixtures_vsphere import MiB, VSphereBed, make_bed, unique
from test_vsphere_backup import generations, manifest_json, restore_raw

DISK = 16 * MiB


def pattern(seed: int, size: int) -> bytes:
    import random
    return random.Random(seed).randbytes(size)


def write(bed: VSphereBed, name: str, pieces: list[tuple[int, bytes]],
          state: bytearray | None = None, index: int = 0) -> None:
    """A guest write (through VDDK, which tells changed-block tracking), mirrored in ``state``."""
    bed.write(bed.disk_path(name, index), pieces)
    if state is not None:
        for offset, data in pieces:
            state[offset:offset + len(data)] = data


def backup_json(bed: VSphereBed, name: str, *args: str) -> dict:
    proc = bed.backup(f"vm:{name}", "--json", *args)
    return json.loads(proc.stdout)[0]


def latest(bed: VSphereBed, name: str, tmp: Path, tag: str) -> bytes:
    gen = generations(bed, name)[-1]["generation"]
    return restore_raw(bed, name, gen, tmp / tag)


def snapshot(si, vm, name: str):
    return wait_task(si, vm.CreateSnapshot_Task(name=name, memory=False, quiesce=False))


# --- snapshots freeze data ----------------------------------------------------------------------

def test_guest_writes_during_the_backup_are_not_in_the_generation(vsphere: VSphereBed,
                                                                   tmp_path: Path) -> None:
    name = unique("frozen")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    with connected(vsphere.vcsim) as si:  # a running guest
        wait_task(si, find_by_name(si, vim.VirtualMachine, name).PowerOnVM_Task())
    state = bytearray(DISK)
    write(vsphere, name, [(o, pattern(o, MiB)) for o in range(0, DISK, 2 * MiB)], state)
    at_snapshot = bytes(state)
    vsphere.configure(delay_us=150_000)  # slow reads: the guest writes while they go on
    proc = subprocess.Popen(vsphere.command(f"vm:{name}", "--json"), env=vsphere.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not vsphere.snapshots(name):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        during = [(o, pattern(1000 + o, 64 * 1024)) for o in range(0, DISK, MiB)]
        write(vsphere, name, during, state)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    vsphere.configure()
    assert latest(vsphere, name, tmp_path, "g1") == at_snapshot
    # The writes are in the next generation, found by changed-block tracking.
    out = backup_json(vsphere, name)
    assert out["disks"][0]["mode"] == "changed"
    assert latest(vsphere, name, tmp_path, "g2") == bytes(state)
    assert vsphere.snapshots(name) == []


# --- reverts ------------------------------------------------------------------------------------

def test_a_revert_means_a_full_read_with_the_reason(vsphere: VSphereBed, tmp_path: Path) -> None:
    """Reverted to the snapshot that was current at the previous backup: the tree looks the
    same, changed-block tracking says only the new write changed; vCenter's revert event is
    what tells. An incremental would keep the blocks the revert undid."""
    name = unique("revert")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    state = bytearray(DISK)
    write(vsphere, name, [(0, pattern(1, 4 * MiB))], state)
    at_s = bytes(state)
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        s = snapshot(si, vm, "before-upgrade")
    write(vsphere, name, [(4 * MiB, pattern(2, 4 * MiB)), (MiB, pattern(3, MiB))], state)
    assert backup_json(vsphere, name)["ok"]
    assert latest(vsphere, name, tmp_path, "g1") == bytes(state)

    with connected(vsphere.vcsim) as si:
        wait_task(si, vim.vm.Snapshot(s._moId, si._stub).RevertToSnapshot_Task())
    state = bytearray(at_s)
    write(vsphere, name, [(12 * MiB, pattern(4, 64 * 1024))], state)
    out = backup_json(vsphere, name)
    (disk,) = out["disks"]
    assert disk["mode"] == "full"
    (plan,) = out["plan"]
    assert "reverted to a snapshot" in plan["reason"] and plan["reason"].endswith("read in full")
    assert any("changed blocks not trusted" in n for n in out["notes"])
    assert latest(vsphere, name, tmp_path, "g2") == bytes(state)
    gen = generations(vsphere, name)[-1]["generation"]
    src = manifest_json(vsphere, name, gen)["disks"][0]
    assert "reverted" in src["read"]["reason"] and src["read"]["mode"] == "full"
    # the one after is incremental again
    write(vsphere, name, [(8 * MiB, pattern(5, 64 * 1024))], state)
    assert backup_json(vsphere, name)["disks"][0]["mode"] == "changed"
    assert latest(vsphere, name, tmp_path, "g3") == bytes(state)


def test_a_revert_to_an_older_snapshot_is_seen_in_the_tree(vsphere: VSphereBed,
                                                           tmp_path: Path) -> None:
    from restore.vsphere import changetrust as trust
    name = unique("tree")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        s1 = snapshot(si, vm, "one")
        snapshot(si, vm, "two")
        before = {"vm_state": {**trust.vm_state(si, vm, "repofs-backup-"), "taken_at": None}}
        assert before["vm_state"]["current_snapshot"] != s1._moId
        wait_task(si, vim.vm.Snapshot(s1._moId, si._stub).RevertToSnapshot_Task())
        now = trust.vm_state(si, vm, "repofs-backup-")
        assert now["current_snapshot"] == s1._moId
        # with the event log: the event; and the tree alone says it too
        assert "reverted" in trust.distrust(si, vm, before, now)
        events = trust.revert_events(si, vm, None)
        assert len(events) == 1
        original = trust.revert_events
        try:
            trust.revert_events = lambda *a: []  # an event log that has been trimmed
            why = trust.distrust(si, vm, before, now)
        finally:
            trust.revert_events = original
        assert "current snapshot is now 'one'" in why


# --- changed-block tracking's rules -------------------------------------------------------------

def test_tracking_switched_on_with_snapshots_present_is_not_trusted(vsphere: VSphereBed,
                                                                    tmp_path: Path) -> None:
    """KB 1020128: read in full while the snapshots are there, then reset tracking once they
    are gone, then incrementals again."""
    name = unique("kb1020128")
    vsphere.create_vm(name, [DISK])
    state = bytearray(DISK)
    write(vsphere, name, [(0, pattern(10, 2 * MiB))], state)
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        user = snapshot(si, vm, "users-own")
    first = backup_json(vsphere, name)
    assert any("KB 1020128" in n for n in first["notes"])
    write(vsphere, name, [(6 * MiB, pattern(11, MiB))], state)
    second = backup_json(vsphere, name)
    assert second["disks"][0]["mode"] == "full" and "KB 1020128" in second["plan"][0]["reason"]
    assert latest(vsphere, name, tmp_path, "g2") == bytes(state)
    with connected(vsphere.vcsim) as si:
        wait_task(si, vim.vm.Snapshot(user._moId, si._stub).RemoveSnapshot_Task(removeChildren=False))
    write(vsphere, name, [(9 * MiB, pattern(12, MiB))], state)
    third = backup_json(vsphere, name)
    assert third["disks"][0]["mode"] == "full"
    assert any("was reset" in n for n in third["notes"])
    assert latest(vsphere, name, tmp_path, "g3") == bytes(state)
    write(vsphere, name, [(13 * MiB, pattern(13, 64 * 1024))], state)
    fourth = backup_json(vsphere, name)
    assert fourth["disks"][0]["mode"] == "changed" and fourth["disks"][0]["read_bytes"] <= MiB
    assert latest(vsphere, name, tmp_path, "g4") == bytes(state)


def test_a_vm_that_cannot_track_is_read_by_allocated_blocks(vsphere: VSphereBed,
                                                            tmp_path: Path) -> None:
    name = unique("hw4")
    vsphere.create_vm(name, [DISK])
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(version="vmx-04")))
    state = bytearray(DISK)
    write(vsphere, name, [(3 * MiB, pattern(20, MiB))], state)
    mark = vsphere.stat_count()
    out = backup_json(vsphere, name)
    assert out["ok"] and out["disks"][0]["mode"] == "full"
    assert any("hardware version 7" in n and "allocated blocks" in n for n in out["notes"]), out["notes"]
    # only the allocated MiB was read (the stand-in's allocated blocks)
    assert sum(n for _, _, n in vsphere.reads(mark)) == MiB
    assert latest(vsphere, name, tmp_path, "g1") == bytes(state)
    write(vsphere, name, [(7 * MiB, pattern(21, MiB))], state)
    again = backup_json(vsphere, name)
    assert again["disks"][0]["mode"] == "full"
    assert latest(vsphere, name, tmp_path, "g2") == bytes(state)
    gen = generations(vsphere, name)[-1]["generation"]
    md = manifest_json(vsphere, name, gen)["metadata"]
    assert md["change_tracking"]["trusted"] is False


# --- orphans and consolidation ------------------------------------------------------------------

def test_a_killed_backup_leaves_a_snapshot_the_next_run_removes(vsphere: VSphereBed,
                                                                tmp_path: Path) -> None:
    name = unique("orphan")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    state = bytearray(DISK)
    write(vsphere, name, [(0, pattern(30, 4 * MiB))], state)
    vsphere.configure(hang_read_after=1)  # the run stops in a read; we kill it there
    proc = subprocess.Popen(vsphere.command(f"vm:{name}"), env=vsphere.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(w[0] == "hang" for w in vsphere_stats(vsphere)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        workers = children(proc.pid)
        assert workers  # the VixDiskLib worker, stuck in its read
        os.kill(proc.pid, signal.SIGKILL)  # the command alone, as a crash would
        proc.wait()
        # The worker, stuck in a call that never returns, goes with its parent.
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "the VixDiskLib worker outlived its parent"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    left = vsphere.snapshots(name)
    assert len(left) == 1 and left[0][0].startswith("repofs-backup-")
    vsphere.configure()
    out = backup_json(vsphere, name)
    assert any(n.startswith(f"removed orphaned snapshot {left[0][0]}: its run (pid {proc.pid}")
               for n in out["notes"])
    assert vsphere.snapshots(name) == []
    assert latest(vsphere, name, tmp_path, "g1") == bytes(state)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def vsphere_stats(bed: VSphereBed) -> list[list[str]]:
    from fixtures_vddk import read_stats
    return read_stats(bed.stats)


def test_a_foreign_snapshot_with_our_name_is_left_alone(vsphere: VSphereBed) -> None:
    name = unique("foreign")
    with connected(vsphere.vcsim) as si:
        from fixtures_vcsim import create_vm
        vm = create_vm(si, name, [4 * MiB], change_tracking=True)
        wait_task(si, vm.CreateSnapshot_Task(name="repofs-backup-backup-someone", memory=False,
                                             quiesce=False))
    out = backup_json(vsphere, name)
    assert any("has our name but not our marker" in n for n in out["notes"])
    assert [n for n, _ in vsphere.snapshots(name)] == ["repofs-backup-backup-someone"]


def test_consolidation_needed_after_the_removal_is_done_and_reported(vsphere: VSphereBed) -> None:
    name = unique("consolidate")
    with connected(vsphere.vcsim) as si:
        from fixtures_vcsim import create_vm
        vm = create_vm(si, name, [4 * MiB], change_tracking=True)
        set_extra_config(si, vm, "repofs.vcsim.consolidationFault", "TRUE")
    out = backup_json(vsphere, name)
    assert any("needed consolidation after the snapshot removal: consolidated" in n
               for n in out["notes"])
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        assert not vm.runtime.consolidationNeeded


# --- VDDK I/O -----------------------------------------------------------------------------------

def test_transient_nfc_faults_are_retried(vsphere: VSphereBed, tmp_path: Path) -> None:
    name = unique("transient")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    state = bytearray(DISK)
    write(vsphere, name, [(0, pattern(40, 4 * MiB))], state)
    vsphere.configure(transient_read_faults=2)
    proc = vsphere.backup(f"vm:{name}", "--json")
    out = json.loads(proc.stdout)[0]
    assert out["ok"]
    assert sum(1 for w in vsphere_stats(vsphere) if w[0] == "transient") == 2
    assert "retrying" in proc.stderr
    vsphere.configure()
    assert latest(vsphere, name, tmp_path, "g1") == bytes(state)


def test_a_hung_vddk_call_is_killed_and_the_snapshot_removed(vsphere: VSphereBed) -> None:
    name = unique("hung")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    write(vsphere, name, [(0, pattern(50, 4 * MiB))])
    vsphere.configure(hang_read_after=1)
    env = vsphere.env(VDDK_CALL_TIMEOUT="3")
    proc = subprocess.run(vsphere.command(f"vm:{name}"), env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 14, proc.stderr
    assert "did not answer within 3" in proc.stderr
    assert vsphere.snapshots(name) == []
    assert generations(vsphere, name) == []


def test_the_session_is_kept_alive_during_a_long_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vCenter whose sessions expire after 2 idle seconds, a read of 4 s: the snapshot is
    still removed at the end, with the same session."""
    with running_vcsim("-session-idle-timeout=2s", tmpdir=tmp_path / "vcsim") as info:
        bed = make_bed(info, tmp_path / "bed", monkeypatch)
        name = unique("idle")
        bed.create_vm(name, [DISK], change_tracking=True)
        write(bed, name, [(o, pattern(60 + o, MiB)) for o in range(0, 8 * MiB, MiB)])
        bed.configure(delay_us=500_000)  # 8 reads: 4 s
        proc = subprocess.run(bed.command(f"vm:{name}"), env=bed.env(REPOFS_VSPHERE_KEEPALIVE_SECONDS="0.5"),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert bed.snapshots(name) == []
