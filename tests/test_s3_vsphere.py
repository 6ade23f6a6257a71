"""vSphere through an S3 repository: a VM of the test vCenter backed up with
``repofs backup vm:NAME`` straight into S3 (moto on loopback), then restored from there into
vCenter under a new name; its disks, written through VixDiskLib, compared with
``qemu-img compare`` against the disks as a local backup holds them.
"""
from __future__ import annotations

import json
import subprocess

from fixtures_restore import RestoreBed
from fixtures_vsphere import REPOFS, unique
from test_vsphere_restore import disks_by_unit


def test_vsphere_backup_into_s3_and_restore_from_it(restore_bed: RestoreBed, s3) -> None:
    b = restore_bed.backed_up("s3-vm")             # also in a local repository: the reference
    bed = restore_bed.bed
    location = s3.new_location()
    env = bed.env(REPOFS_REPOSITORY=location, **s3.env())
    subprocess.run([*REPOFS, "init", "--encryption", "none"], env=env,
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    backup = subprocess.run(bed.command(f"vm:{b.vm}", "--json"), env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert backup.returncode == 0, backup.stderr
    name = unique("s3-vm-back")
    cmd = bed.command(f"vm:{b.vm}", "--name", name, "--json")
    cmd[cmd.index("backup")] = "restore"
    restored = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)[0]["ok"]
    info = restore_bed.vm(name)
    assert info is not None
    disks = disks_by_unit(info)
    assert sorted(disks) == [0, 1]
    for unit, disk in disks.items():
        assert restore_bed.same_disk(disk.backing.fileName, b.raws[f"scsi0-{unit}"]), unit
