"""repofs files mount/umount (root): kernel loop mounts where the kernel can, the rootless
reader elsewhere, the same answers as the rootless path, and nothing left attached — after
success, after an error and after an interrupt."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_images import LVM_LV, LVM_VG, expected, same, snapshot_guest, snapshot_local
from fixtures_mount import resident
from repofs.guest import extmeta
from repofs.mount import prefill
from repofs.guest.guestfs import GuestGeneration
from repofs.mount.loopmount import State, is_mounted

# slow: each test attaches loop devices and kernel-mounts the guest volumes (the rootless
# reader, in test_files.py, stays in the developer loop)
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mount need root"), pytest.mark.slow]


def loops_on(marker: str) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line]


def leftovers(directory: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            where = line.split()[4]
            if where.startswith(str(directory)) or where.startswith("/run/repofs/repofs-files-"):
                found.append(where)
    found += loops_on("/run/repofs/repofs-files-")
    if State.load(os.path.realpath(directory)) is not None:
        found.append("state file")
    return found


@pytest.fixture
def target(tmp_path, guest_repo):
    d = tmp_path / "guest files"          # a space in the mount directory too
    d.mkdir()
    yield d
    if State.load(os.path.realpath(d)) is not None:
        guest_repo.run("files", "umount", str(d), check=False)
    assert leftovers(d) == []


def placements(stdout: bytes) -> dict[str, tuple[str, str]]:
    out = {}
    for line in stdout.decode().splitlines():
        vol, fstype, how, _where, _detail = line.split("\t")
        out[vol] = (fstype, how)
    return out


def test_loop_mount_matches_rootless_and_tears_down(guest_repo, guest_images, target):
    r = guest_repo
    proc = r.run("files", "mount", "vm:guest", str(target))
    placed = placements(proc.stdout)
    assert placed["gpt_ext4/p1"] == ("ext", "kernel")
    assert placed["mbr_ntfs/p2"] == ("luks", "skipped")
    for vol in ("mbr_fat/p1", "mbr_ntfs/p1"):       # kernel without vfat/ntfs: rootless FUSE
        assert placed[vol][1] in ("kernel", "rootless")
    if "whole_xfs" in guest_images.images:
        assert placed["whole_xfs/whole"] == ("xfs", "kernel")
    if "gpt_lvm" in guest_images.images:
        assert placed[f"gpt_lvm/{LVM_VG}/{LVM_LV}"] == ("ext", "kernel")
    assert "broken_gpt/-" in placed and placed["broken_gpt/-"][1] == "skipped"

    gen = GuestGeneration(guest_repo.open_generation())
    for vol, tree, posix in [("gpt_ext4/p1", guest_images.tree, True),
                             ("gpt_ext4/p2", guest_images.small, True),
                             ("mbr_fat/p1", guest_images.fat_tree, False)]:
        kernel_view = snapshot_local(target / vol)
        same(kernel_view, expected(tree, posix))
        assert kernel_view == snapshot_guest(gen, vol)          # the same answers, both paths
    for vol in ("whole_xfs/whole", "gpt_btrfs/p1", f"gpt_lvm/{LVM_VG}/{LVM_LV}", "mbr_ntfs/p1"):
        if vol.split("/")[0] in guest_images.images:
            assert snapshot_local(target / vol) == snapshot_guest(gen, vol), vol
    # sparse file: same bytes through the kernel
    assert (target / "gpt_ext4/p1/sparse.img").read_bytes() == guest_images.tree.files["sparse.img"]
    # read-only, journal not replayed
    with pytest.raises(OSError):
        (target / "gpt_ext4/p1/new").write_bytes(b"x")

    # a second mount on the same directory is refused, and changes nothing
    again = r.run("files", "mount", "vm:guest", str(target), check=False)
    assert again.returncode == 1 and "already holds a files mount" in again.stderr.decode()
    assert is_mounted(str(target / "gpt_ext4/p1"))

    r.run("files", "umount", str(target))
    assert leftovers(target) == []
    assert os.listdir(target) == []


def test_returns_with_the_ext_metadata_in_the_page_cache(guest_repo, guest_images, target):
    """A first walk right after the command finds the guest's inode tables and directories in
    the flat file's page cache (repofs.prefill), holding the disk's own bytes."""
    image = guest_images.need("gpt_ext4").read_bytes()
    label = guest_repo.disks["gpt_ext4"]
    ranges = [(v.offset + off, n) for v in GuestGeneration(guest_repo.open_generation()).volumes(label)
              if v.fstype == "ext" for off, n in extmeta.metadata_ranges(v.open(), prefill.LIMIT)]
    assert len(ranges) > 2
    guest_repo.run("files", "mount", "vm:guest", str(target))
    mnt = State.load(os.path.realpath(target)).repo_mount
    flat = os.path.join(mnt, "guest", "latest", f"{label}-flat.vmdk")
    fd = os.open(flat, os.O_RDONLY)
    try:
        assert resident(fd, len(image), ranges)
        for off, n in ranges:              # from the page cache: the pushed bytes
            assert os.pread(fd, n, off) == image[off:off + n], off
    finally:
        os.close(fd)
    guest_repo.run("files", "umount", str(target))


def test_relative_repository_and_directory(guest_repo, target):
    """Paths given relative to the working directory keep working in the private mount that
    runs on after the command (a daemon's working directory is "/")."""
    env = {k: v for k, v in guest_repo.env.items() if k != "REPOFS_REPOSITORY"}
    rel_repo = os.path.relpath(guest_repo.path, target.parent)
    proc = subprocess.run([sys.executable, "-m", "repofs.cli", "files", "mount", "vm:guest", target.name,
                           "-r", rel_repo], env=env, cwd=target.parent, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    try:
        kernel = [v for v, (_fs, how) in placements(proc.stdout).items() if how == "kernel"]
        assert kernel and all(os.listdir(target / v) for v in kernel)
    finally:
        guest_repo.run("files", "umount", target.name, cwd=target.parent)


def test_errors_leave_nothing_attached(guest_repo, target):
    proc = guest_repo.run("files", "mount", "vm:nobody", str(target), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 8 and "nobody" in err and err.count("\n") == 1
    assert leftovers(target) == []
    proc = guest_repo.run("files", "umount", str(target), check=False)
    assert proc.returncode == 1 and "holds no files mount" in proc.stderr.decode()


def test_interrupt_leaves_nothing_attached(guest_repo, target):
    """Ctrl-C at whatever point the set-up has reached: it either finished (then umount) or
    unwound everything itself."""
    proc = subprocess.Popen([sys.executable, "-m", "repofs.cli", "files", "mount", "vm:guest", str(target)],
                            env=guest_repo.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait until it has attached something (or finished), then interrupt
    deadline = time.monotonic() + 60
    while proc.poll() is None and not loops_on("/run/repofs/repofs-files-") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    if proc.returncode == 0:
        guest_repo.run("files", "umount", str(target))
    else:
        assert proc.returncode == 130
    assert leftovers(target) == []


def test_from_an_existing_mount(guest_repo, guest_images, target, tmp_path):
    mnt = tmp_path / "repo-mount"
    mnt.mkdir()
    guest_repo.run("mount", str(guest_repo.path), str(mnt))
    try:
        gen_dir = mnt / "guest" / "latest"
        proc = guest_repo.run("files", "mount", "vm:guest", str(target), "--from", str(gen_dir))
        assert placements(proc.stdout)["gpt_ext4/p1"] == ("ext", "kernel")
        assert (target / "gpt_ext4/p1/日本語/ファイル.bin").read_bytes() == \
            guest_images.tree.files["日本語/ファイル.bin"]
        files = Path(os.path.realpath(gen_dir)) / "files"
        if files.is_dir():          # the same answers: kernel loop mount and the mount's files/
            for vol in ("gpt_ext4/p1", "mbr_fat/p1"):
                assert snapshot_local(target / vol) == snapshot_local(files / vol), vol
        guest_repo.run("files", "umount", str(target))
        assert loops_on(str(mnt)) == []
    finally:
        guest_repo.run("umount", str(mnt), check=False)
    assert not is_mounted(str(mnt))
