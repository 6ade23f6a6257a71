"""A shared repository mount (``-o allow_other``) does not hand every VM's disks — or a
guest's files — to every local user: by default only the mounting user reads (0400/0500),
guest owners are not shown, and the administrator opens it with ``-o umask=``/``uid=``/``gid=``.
Checked through a real mount with a real second user (uid 65534 via ``setpriv``)."""
from __future__ import annotations

import os
import shutil
import stat as st
import subprocess
import tempfile
from pathlib import Path

import pytest

from fixtures_mount import DISK, VM, mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="a second user needs root and setpriv")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_dir():
    """A folder every user can traverse (pytest's own temporary folders are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="repofs-shared-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def flat(m) -> Path:
    return m.path / VM / "latest" / f"{DISK}-flat.vmdk"


def test_a_shared_mount_keeps_other_users_out_by_default(mount_source, open_dir):
    with mounted(mount_source, open_dir / "mnt", "-o", "allow_other") as m:
        disk = flat(m)
        assert st.S_IMODE(disk.stat().st_mode) == 0o400
        assert st.S_IMODE((m.path / VM).stat().st_mode) == 0o500
        denied = as_nobody("head", "-c", "512", str(disk))
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
        assert as_nobody("ls", str(m.path / VM)).returncode != 0
        assert disk.read_bytes()[:512] == mount_source.image.read_bytes()[:512]   # the owner reads


def test_the_administrator_opens_a_shared_mount_with_umask(mount_source, open_dir):
    with mounted(mount_source, open_dir / "mnt", "-o", "allow_other,umask=022") as m:
        disk = flat(m)
        assert st.S_IMODE(disk.stat().st_mode) == 0o444
        read = as_nobody("head", "-c", "4096", str(disk))
        assert read.returncode == 0, read.stderr
        assert read.stdout == mount_source.image.read_bytes()[:4096]


def test_a_shared_mount_opens_to_a_group_with_gid(mount_source, open_dir):
    with mounted(mount_source, open_dir / "mnt", "-o", "allow_other,gid=65534,umask=027") as m:
        disk = flat(m)
        assert (disk.stat().st_gid, st.S_IMODE(disk.stat().st_mode)) == (65534, 0o440)
        assert as_nobody("head", "-c", "512", str(disk)).returncode == 0
        other = subprocess.run(["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups",
                                "head", "-c", "512", str(disk)], capture_output=True)
        assert other.returncode != 0


def test_guest_files_of_a_shared_mount_show_the_mount_owner(mount_source, open_dir):
    with mounted(mount_source, open_dir / "mnt", "-o", "allow_other") as m:
        files = m.path / VM / "latest" / "files"
        found = []
        for dirpath, _dirnames, filenames in os.walk(files):
            for n in filenames:
                found.append(os.lstat(os.path.join(dirpath, n)))
            if len(found) > 20:
                break
        assert found, "the guest tree is empty"
        for s in found:
            assert (s.st_uid, s.st_gid) == (0, 0)
            assert not s.st_mode & (st.S_ISUID | st.S_ISGID | 0o077)
