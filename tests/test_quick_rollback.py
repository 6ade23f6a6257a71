"""Quick Rollback: ``repofs restore vm:NAME --in-place`` against the harsher test vCenter.

The VM's disks are judged byte for byte (their flat files) against the generation; the bytes
written are counted by the VDDK stand-in and must be the changed blocks, not the disks.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from pyVmomi import vim

from fixtures_vcsim import connected, find_by_name, flat_path, set_extra_config, wait_task
from fixtures_vddk import read_stats
from fixtures_vsphere import REPOFS, MiB, VSphereBed, unique
from test_vsphere_harsh import pattern, write

DISK = 16 * MiB


def rollback(bed: VSphereBed, name: str, *args: str, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*REPOFS, "restore", f"vm:{name}", "--in-place", "--json", *args,
                           *bed.vsphere_args()], env=env or bed.env(), capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"restore --in-place exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def disk_bytes(bed: VSphereBed, name: str, index: int = 0) -> bytes:
    return flat_path(bed.disk_path(name, index)).read_bytes()


def written(bed: VSphereBed, since: int) -> int:
    return sum(int(w[3]) for w in read_stats(bed.stats)[since:] if w[0] == "write")


def a_backed_up_vm(bed: VSphereBed, disks: list[int]) -> tuple[str, list[bytes]]:
    name = unique("rollback")
    bed.create_vm(name, disks, change_tracking=True)
    states = []
    for i, size in enumerate(disks):
        state = bytearray(size)
        write(bed, name, [(o, pattern(100 * i + o, MiB)) for o in range(0, size, 3 * MiB)], state, i)
        states.append(bytes(state))
    bed.backup(f"vm:{name}")
    return name, states


def test_only_the_changed_blocks_are_written_back(vsphere: VSphereBed) -> None:
    name, (gen,) = a_backed_up_vm(vsphere, [DISK])
    # the guest changes 3% of its disk, in three places
    changes = [(MiB, pattern(1, 192 * 1024)), (7 * MiB, pattern(2, 128 * 1024)),
               (15 * MiB, pattern(3, 192 * 1024))]
    write(vsphere, name, changes)
    assert disk_bytes(vsphere, name) != gen
    mark = vsphere.stat_count()
    out = json.loads(rollback(vsphere, name).stdout)[0]
    assert out["ok"] and out["in_place"]
    (d,) = out["disks"]
    assert d["mode"] == "changed"
    changed = sum(len(b) for _, b in changes)
    assert d["written_bytes"] == d["changed_bytes"] == changed == written(vsphere, mark)
    assert disk_bytes(vsphere, name) == gen
    assert vsphere.snapshots(name) == []
    assert not list(vsphere.disk_path(name).parent.glob("*.frozen"))


def test_two_controllers_four_disks_and_a_powered_on_vm(vsphere: VSphereBed) -> None:
    name = unique("four")
    with connected(vsphere.vcsim) as si:
        from fixtures_vcsim import create_vm
        vm = create_vm(si, name, [4 * MiB, 6 * MiB], change_tracking=True)
        spec = vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualLsiLogicController(
                key=-300, busNumber=1, sharedBus="noSharing"))] + [
            vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=vim.vm.device.VirtualDisk(
                key=-301 - u, controllerKey=-300, unitNumber=u, capacityInKB=size // 1024,
                capacityInBytes=size, backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                    fileName="[LocalDS_0]", diskMode="persistent", thinProvisioned=u == 0,
                    eagerlyScrub=u == 1)))
            for u, size in enumerate([5 * MiB, 3 * MiB])])
        wait_task(si, vm.ReconfigVM_Task(spec=spec))
    sizes = [4 * MiB, 6 * MiB, 5 * MiB, 3 * MiB]
    gens = []
    for i, size in enumerate(sizes):
        state = bytearray(size)
        write(vsphere, name, [(0, pattern(200 + i, MiB)), (size - MiB, pattern(300 + i, MiB))], state, i)
        gens.append(bytes(state))
    vsphere.backup(f"vm:{name}")
    for i in (1, 3):
        write(vsphere, name, [(2 * MiB if i == 1 else MiB, pattern(400 + i, 64 * 1024))], None, i)
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        wait_task(si, vm.PowerOnVM_Task())
    refused = rollback(vsphere, name, check=False)
    assert refused.returncode == 11, refused.stderr  # BUSY: a running VM needs --force
    assert "powered on" in refused.stderr and vsphere.snapshots(name) == []
    mark = vsphere.stat_count()
    out = json.loads(rollback(vsphere, name, "--force").stdout)[0]
    assert out["powered_on"] and [d["written_bytes"] for d in out["disks"]] == [0, 65536, 0, 65536]
    assert written(vsphere, mark) == 2 * 65536
    for i, gen in enumerate(gens):
        assert disk_bytes(vsphere, name, i) == gen, i
    with connected(vsphere.vcsim) as si:
        assert find_by_name(si, vim.VirtualMachine, name).runtime.powerState == "poweredOn"


def test_changed_areas_unusable_part_way_mean_compare_from_there(vsphere: VSphereBed) -> None:
    """The changed areas come page by page, and are written as they come: a page that does
    not advance, after a first page whose areas were written, turns the disk to compare mode;
    what was written stays (it is the generation's), the rest is found by comparing."""
    name, (gen,) = a_backed_up_vm(vsphere, [DISK])
    changes = [(MiB, pattern(11, 192 * 1024)), (7 * MiB, pattern(12, 128 * 1024))]
    write(vsphere, name, changes)
    # every answer: "[0, 2 MiB) holds one changed area" (the first change); the second page,
    # asked for at 2 MiB, answers [0, 2 MiB) again: it does not advance
    with connected(vsphere.vcsim) as si:
        set_extra_config(si, find_by_name(si, vim.VirtualMachine, name), "repofs.vcsim.changedAreas",
                         json.dumps({"startOffset": 0, "length": 2 * MiB, "areas": [[MiB, 192 * 1024]]}))
    mark = vsphere.stat_count()
    proc = rollback(vsphere, name)
    (d,) = json.loads(proc.stdout)[0]["disks"]
    assert d["mode"] == "compared" and "did not advance" in d["reason"], d
    assert ": changed (" in proc.stderr and ": compared (" in proc.stderr, proc.stderr
    # the first change written from its changed area, the second found by comparing (which
    # writes the whole piece around it); the first, compared again, is equal by then
    first, second = (len(b) for _, b in changes)
    assert first + second <= d["written_bytes"] <= first + 4 * MiB
    assert d["written_bytes"] == written(vsphere, mark)
    assert disk_bytes(vsphere, name) == gen
    assert vsphere.snapshots(name) == []


def test_untrusted_changed_blocks_mean_compare_and_write_what_differs(vsphere: VSphereBed) -> None:
    """A revert since the generation: changed-block tracking would miss what the revert put
    back, so every block is compared; only those that differ are written."""
    name = unique("rbrevert")
    vsphere.create_vm(name, [DISK], change_tracking=True)
    base = bytearray(DISK)
    write(vsphere, name, [(0, pattern(7, 2 * MiB))], base)
    with connected(vsphere.vcsim) as si:
        vm = find_by_name(si, vim.VirtualMachine, name)
        snap = wait_task(si, vm.CreateSnapshot_Task(name="users", memory=False, quiesce=False))
    gen = bytearray(base)
    write(vsphere, name, [(4 * MiB, pattern(8, MiB))], gen)
    vsphere.backup(f"vm:{name}")
    with connected(vsphere.vcsim) as si:  # back to `base`, unseen by tracking
        wait_task(si, vim.vm.Snapshot(snap._moId, si._stub).RevertToSnapshot_Task())
        wait_task(si, vim.vm.Snapshot(snap._moId, si._stub).RemoveSnapshot_Task(removeChildren=False))
    write(vsphere, name, [(10 * MiB, pattern(9, 64 * 1024))])
    mark = vsphere.stat_count()
    out = json.loads(rollback(vsphere, name).stdout)[0]
    (d,) = out["disks"]
    assert d["mode"] == "compared" and "reverted" in d["reason"]
    assert d["written_bytes"] == written(vsphere, mark) <= 2 * MiB
    assert disk_bytes(vsphere, name) == bytes(gen)


def test_a_failed_write_reverts_to_the_safety_snapshot(vsphere: VSphereBed) -> None:
    name, (gen,) = a_backed_up_vm(vsphere, [DISK])
    now = bytearray(gen)
    write(vsphere, name, [(o, pattern(50 + o, 64 * 1024)) for o in range(0, DISK, 2 * MiB)], now)
    vsphere.configure(fail_write_after=1)
    proc = rollback(vsphere, name, check=False)
    assert proc.returncode == 14, proc.stderr  # VDDK
    # the second write fails (the pieces are written while the next ones are read): named
    assert "scsi0-0 at offset 2097152:" in proc.stderr, proc.stderr
    assert "reverted to its safety snapshot" in proc.stderr
    vsphere.configure()
    assert disk_bytes(vsphere, name) == bytes(now)
    assert vsphere.snapshots(name) == []


def test_a_killed_rollback_is_undone_by_the_next_run(vsphere: VSphereBed) -> None:
    name = unique("rbkill")
    vsphere.create_vm(name, [DISK])  # no tracking: compare mode, which reads
    gen = bytearray(DISK)
    write(vsphere, name, [(0, pattern(60, 4 * MiB))], gen)
    vsphere.backup(f"vm:{name}")
    now = bytearray(gen)
    write(vsphere, name, [(MiB, pattern(61, MiB))], now)
    with connected(vsphere.vcsim) as si:  # tracking off again: the rollback compares
        vm = find_by_name(si, vim.VirtualMachine, name)
        wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    vsphere.configure(hang_read_after=1)
    proc = subprocess.Popen([*REPOFS, "restore", f"vm:{name}", "--in-place", *vsphere.vsphere_args()],
                            env=vsphere.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(w[0] == "hang" for w in read_stats(vsphere.stats)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = vsphere.snapshots(name)
    assert len(left) == 1 and left[0][0].startswith("repofs-rollback-")
    vsphere.configure()
    out = json.loads(rollback(vsphere, name).stdout)[0]
    assert any(f"of a killed in-place restore (pid {proc.pid})" in n for n in out["notes"])
    assert disk_bytes(vsphere, name) == bytes(gen)
    assert vsphere.snapshots(name) == []


def test_a_vm_the_repository_does_not_hold_is_one_error_line(vsphere: VSphereBed) -> None:
    """The generation is loaded in a thread while the session logs in: a VM the repository
    does not hold is still one error line and its exit code."""
    name = unique("notheld")
    proc = rollback(vsphere, name, check=False)
    assert proc.returncode == 8, proc.stderr  # NOT_FOUND
    assert proc.stderr.splitlines() == [f"repofs: error: no generations of VM {name!r}: the "
                                        "repository holds none yet"]


def test_a_wrong_passphrase_ends_the_rollback_before_any_vcenter_call(vsphere: VSphereBed,
                                                                       tmp_path) -> None:
    """The repository opens (its key derived) on a thread while pyVmomi is imported: a wrong
    passphrase is still its own error line and exit code, and nothing is done to the VM —
    no safety snapshot, no write."""
    repo = tmp_path / "encrypted"
    env = vsphere.env(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD="right")
    subprocess.run([*REPOFS, "init", str(repo)], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    name = unique("wrongpass")
    vsphere.create_vm(name, [4 * MiB], change_tracking=True)
    write(vsphere, name, [(0, pattern(7, MiB))])
    subprocess.run(vsphere.command(f"vm:{name}"), env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    write(vsphere, name, [(MiB, pattern(8, 64 * 1024))])
    before, mark = disk_bytes(vsphere, name), vsphere.stat_count()
    proc = rollback(vsphere, name, check=False, env=dict(env, REPOFS_PASSWORD="wrong"))
    assert proc.returncode == 5, proc.stderr  # BAD_PASSPHRASE
    assert len(proc.stderr.splitlines()) == 1 and "passphrase" in proc.stderr, proc.stderr
    assert vsphere.snapshots(name) == [] and disk_bytes(vsphere, name) == before
    assert written(vsphere, mark) == 0
    assert json.loads(rollback(vsphere, name, env=env).stdout)[0]["ok"]
    assert disk_bytes(vsphere, name) != before


def test_pieces_lie_within_chunks_and_cover_no_sector_twice() -> None:
    """The rollback's read pieces: cut at chunk boundaries (a piece of one chunk is the cached
    chunk itself), whole sectors, and areas that widen into the same sector write it once."""
    from restore.vm.rollback import _pieces
    areas = [(0, 100), (100, 412), (1000, 10), (MiB - 4096, 2 * MiB + 8192)]
    got = list(_pieces(areas, MiB, 16 * MiB))
    assert got == [(0, 512), (512, 512), (MiB - 4096, 4096), (MiB, MiB), (2 * MiB, MiB),
                   (3 * MiB, 4096)]
    assert all(o // MiB == (o + n - 1) // MiB and o % 512 == n % 512 == 0 for o, n in got)
    # the bytes asked for are covered, once each
    covered = [b for o, n in got for b in range(o, o + n, 512)]
    assert len(covered) == len(set(covered))
    ends = [b for start, length in areas for b in (start, start + length - 1)]
    assert all(any(o <= b < o + n for o, n in got) for b in ends)
    # clipped to the capacity
    assert list(_pieces([(15 * MiB, 4 * MiB)], MiB, 16 * MiB)) == [(15 * MiB, MiB)]
