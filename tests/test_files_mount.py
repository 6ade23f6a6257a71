"""The mount's files/ folder: /<vm>/<generation>/files/<disk>/<volume>/… through a real FUSE
mount, with the same answers as the rootless reader (and so as the kernel's loop mounts)."""
from __future__ import annotations

import errno
import os
import shutil

import pytest

from fixtures_images import LVM_LV, LVM_VG, expected, same, snapshot_guest, snapshot_local
from repofs.guest.guestfs import GuestGeneration


# --- the handlers called directly under trio: no kernel ----------------------------------------

def test_handlers_serve_the_guest_tree(guest_repo, guest_images, monkeypatch):
    import pyfuse3
    import trio

    from format.repository import Repository
    from fixtures_images import PASSPHRASE
    from repofs.mount.fusefs import MountSettings, RepofsOperations
    from repofs.view.tree import RepositoryView

    view = RepositoryView(Repository.open(guest_repo.path, PASSPHRASE.encode()), 64 << 20)
    ops = RepofsOperations(view, MountSettings(io_timeout=30))
    gen = view.generation("guest")

    async def lookup(*names):
        inode, attr = pyfuse3.ROOT_INODE, None
        for n in names:
            attr = await ops.lookup(inode, n.encode(), None)
            inode = attr.st_ino
        return attr

    async def listdir(inode):
        names = []
        monkeypatch.setattr(pyfuse3, "readdir_reply",
                            lambda token, name, attr, nxt: names.append(name.decode()) or True)
        fh = await ops.opendir(inode, None)
        await ops.readdir(fh, 0, None)
        await ops.releasedir(fh)
        return names

    async def main():
        gdir = await lookup("guest", gen.name)
        assert "files" in await listdir(gdir.st_ino)
        files = await lookup("guest", gen.name, "files")
        assert sorted(await listdir(files.st_ino)) == sorted(guest_images.images)
        p1 = await lookup("guest", gen.name, "files", "gpt_ext4", "p1")
        assert "日本語" in await listdir(p1.st_ino)
        big = await lookup("guest", gen.name, "files", "gpt_ext4", "p1", "big.bin")
        assert big.st_size == len(guest_images.tree.files["big.bin"]) and big.st_mode == 0o100644
        again = await lookup("guest", gen.name, "files", "gpt_ext4", "p1", "big.bin")
        assert again.st_ino == big.st_ino                   # stable inode numbers
        info = await ops.open(big.st_ino, os.O_RDONLY, None)
        assert await ops.read(info.fh, 1000, 5000) == guest_images.tree.files["big.bin"][1000:6000]
        await ops.release(info.fh)
        link = await lookup("guest", gen.name, "files", "gpt_ext4", "p1", "abs-link")
        assert await ops.readlink(link.st_ino, None) == "/café/naïve ✓.txt".encode()
        for names, code in [(("gpt_ext4", "p9"), errno.ENOENT), (("gpt_ext4", "p1", "nope"), errno.ENOENT)]:
            with pytest.raises(pyfuse3.FUSEError) as e:
                await lookup("guest", gen.name, "files", *names)
            assert e.value.errno == code
        luks = await lookup("guest", gen.name, "files", "mbr_ntfs", "p2")
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.opendir(luks.st_ino, None)
        assert e.value.errno == errno.EACCES
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(big.st_ino, os.O_RDWR, None)
        assert e.value.errno == errno.EROFS
    trio.run(main)


# --- through a real mount -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mounted(guest_repo, tmp_path_factory):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    mnt = tmp_path_factory.mktemp("files-mount")
    guest_repo.run("mount", str(guest_repo.path), str(mnt))
    try:
        files = mnt / "guest" / "latest" / "files"
        if not files.is_dir():
            pytest.skip("this mount has no files/ folder")
        yield files
    finally:
        guest_repo.run("umount", str(mnt), check=False)


@pytest.fixture(scope="module")
def gen(guest_repo):
    return GuestGeneration(guest_repo.open_generation())


def test_disks_and_volumes_are_folders(mounted, guest_images):
    assert sorted(os.listdir(mounted)) == sorted(guest_images.images)
    assert os.listdir(mounted / "gpt_ext4") == ["p1", "p2"]
    if "gpt_lvm" in guest_images.images:
        assert sorted(os.listdir(mounted / "gpt_lvm")) == ["p1", LVM_VG]
        assert os.listdir(mounted / "gpt_lvm" / LVM_VG) == [LVM_LV]


@pytest.mark.parametrize("volume,which,posix", [
    ("gpt_ext4/p1", "tree", True), ("whole_xfs/whole", "small", True), ("gpt_btrfs/p1", "small", True),
    (f"gpt_lvm/{LVM_VG}/{LVM_LV}", "small", True), ("mbr_fat/p1", "fat_tree", False),
    ("mbr_ntfs/p1", "ntfs_tree", False), ("mbr_exfat/p1", "fat_tree", False)])
def test_same_tree_as_the_rootless_reader(mounted, gen, guest_images, volume, which, posix):
    guest_images.need(volume.split("/")[0])
    if volume.startswith("mbr_ntfs") and not guest_images.ntfs_populated:
        pytest.skip("NTFS volume is empty")
    through_mount = snapshot_local(mounted / volume)
    assert through_mount == snapshot_guest(gen, volume)
    same(through_mount, expected(getattr(guest_images, which), posix))


def test_cp_a_works_and_keeps_holes_readable(mounted, guest_images, tmp_path):
    shutil.copytree(mounted / "gpt_ext4/p1", tmp_path / "copy", symlinks=True)
    same(snapshot_local(tmp_path / "copy"), expected(guest_images.tree))
    with open(mounted / "gpt_ext4/p1/sparse.img", "rb") as f:
        f.seek(5 << 20)
        assert f.read(8192) == guest_images.tree.files["sparse.img"][5 << 20:(5 << 20) + 8192]


def test_unreadable_volumes_answer_with_an_errno(mounted):
    with pytest.raises(OSError) as e:
        os.listdir(mounted / "mbr_ntfs/p2")            # LUKS
    assert e.value.errno == errno.EACCES
    with pytest.raises(FileNotFoundError):
        os.stat(mounted / "gpt_ext4/p9")
    with pytest.raises(FileNotFoundError):
        os.stat(mounted / "gpt_ext4/p1/missing")
    with pytest.raises(OSError):
        (mounted / "gpt_ext4/p1/hello.txt").write_bytes(b"x")


def _walk_inodes(root) -> dict[str, int]:
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(d, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_ino
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the kernel's caches needs root")
def test_guest_entries_the_kernel_forgets_are_dropped(mounted, guest_images):
    """The mount keeps a guest entry only while the kernel holds it (a file manager over a
    large guest tree must not grow the mount without bound): after the kernel drops its
    dentries and inodes, the mount's entry count (statvfs f_files) falls, and a second walk
    finds the same entries with the same inode numbers."""
    import time

    root = mounted / "gpt_ext4/p1"
    first = _walk_inodes(root)
    held = os.statvfs(mounted).f_files
    assert held > len(first)
    fewer = held
    for _ in range(50):                        # FORGETs reach the server asynchronously
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        time.sleep(0.1)
        fewer = os.statvfs(mounted).f_files
        if fewer <= held - len(first) // 2:
            break
    assert fewer <= held - len(first) // 2, (held, fewer)
    assert _walk_inodes(root) == first
    same(snapshot_local(root), expected(guest_images.tree))
