"""``umount`` of a busy mount says what to do; ``mount`` keeps a folder's files visible.

A real FUSE mount (tests/fixtures_mount.py) held busy by an open file of this process.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fixtures_mount import VM, MountSource, is_mounted, mounted, repofs_cmd


def test_umount_of_a_busy_mount_says_what_to_do(mount_source: MountSource, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(mount_source, mnt) as m:
        vmx = next((m.path / VM / mount_source.generation).glob("*.vmx"))
        fd = os.open(vmx, os.O_RDONLY)          # a reader keeps the mount busy
        try:
            proc = subprocess.run(repofs_cmd("umount", str(mnt)), env=mount_source.env(),
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 11, proc.stderr
            assert proc.stderr.count("repofs: error:") == 1 and "is in use" in proc.stderr
            assert f"fuser -vm {mnt}" in proc.stderr and f"repofs umount --lazy {mnt}" in proc.stderr
            assert is_mounted(mnt)
        finally:
            os.close(fd)
        done = subprocess.run(repofs_cmd("umount", str(mnt)), env=mount_source.env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
