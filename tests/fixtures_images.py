"""Guest disk images for the file-level recovery tests, made deterministically (seeded data,
fixed UUIDs, fixed times) and, where the tools allow it, without root.

- ``gpt_ext4``: GPT, p1 ext4 (``mkfs.ext4 -d``) with the full tree, p2 ext4 with a small tree.
- ``mbr_fat``: MBR, p1 FAT32 (``mkfs.vfat --offset`` + ``mcopy -s -m``), no symlinks or holes;
  p2 extended holding the logical p5 (ext4, one file).
- ``mbr_ntfs``: MBR, p1 NTFS (``mkntfs`` on a partition image, populated through ``ntfs-3g``
  when FUSE works — its symlinks are Interix files, its hard links real —, else empty), p2 a
  LUKS header (encrypted, for the refusal).
- ``whole_xfs``: XFS straight on the disk (no table), populated through a loop mount (root).
- ``mbr_exfat``: MBR, p1 exFAT (``mkfs.exfat``, populated through ``mount.exfat-fuse``, root).
- ``gpt_btrfs``: GPT, p1 Btrfs (``mkfs.btrfs --rootdir``).
- ``broken_gpt``: a GPT whose header is seeded garbage.
- ``gpt_lvm``: GPT, p1 an LVM PV (vg ``rfstest``, lv ``data``); the LV is never activated (no
  device-mapper here): ext4 is written at the LV's offset with ``mkfs.ext4 -E offset``.

Each builder skips (with the reason) when a tool is missing or refuses. A session-wide
repository holds all of them as VM ``guest`` (one disk per image) for the CLI tests.
"""
from __future__ import annotations

import os
import random
import stat as st
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
T0 = 1_700_000_000          # fixed times (even seconds: FAT keeps 2 s steps)
UUID = "5e1f0c2a-7d3b-4e59-9a61-0c2b3d4e5f60"
# GPT partition type GUIDs: Linux file system data, Linux LVM
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LINUX_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
PASSPHRASE = "files test passphrase"


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
           "E2FSPROGS_FAKE_TIME": str(T0), "MTOOLS_SKIP_CHECK": "1", **kw.pop("env", {})}
    return subprocess.run(cmd, check=True, capture_output=True, env=env, **kw)


def _tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")


@dataclass
class Tree:
    """What a guest filesystem should hold: path -> bytes, symlinks, modes, mtimes."""
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    hardlinks: dict[str, str] = field(default_factory=dict)  # new name -> existing file
    dirs: list[str] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    mtimes: dict[str, int] = field(default_factory=dict)    # seconds
    sparse: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # path -> data runs


def make_tree(seed: int, *, symlinks: bool = True, sparse: bool = True, big: int = 3 * MiB,
              deep: int = 20) -> Tree:
    rng = random.Random(seed)
    t = Tree()
    t.dirs = ["café", "日本語", "name with spaces", "deep"]
    t.files["hello.txt"] = b"hello world\n"
    t.files["name with spaces/a file.txt"] = b"spaces inside\n" * 10
    t.files["café/naïve ✓.txt"] = "non-ASCII: naïve café ✓\n".encode()
    t.files["日本語/ファイル.bin"] = rng.randbytes(100_000)
    t.files["big.bin"] = rng.randbytes(big)
    t.files["empty"] = b""
    t.files["exec.sh"] = b"#!/bin/sh\necho hi\n"
    t.files["secret"] = b"top secret\n"
    t.modes["exec.sh"], t.modes["secret"] = 0o755, 0o600
    path = "deep"
    for i in range(1, deep + 1):
        path += f"/d{i}"
        t.dirs.append(path)
    t.files[path + "/leaf.txt"] = b"at the bottom\n"
    for i in range(30):
        t.files[f"name with spaces/many/f{i:03}.dat"] = rng.randbytes(rng.randrange(0, 9000))
    t.dirs.append("name with spaces/many")
    if sparse:
        size, runs = 16 * MiB, [(5 * MiB, 8192), (16 * MiB - 4096, 4096)]
        data = bytearray(size)
        for off, n in runs:
            data[off:off + n] = rng.randbytes(n)
        t.files["sparse.img"] = bytes(data)
        t.sparse["sparse.img"] = runs
    if symlinks:
        t.hardlinks["hard link to secret"] = "secret"
        t.links["rel-link"] = "hello.txt"
        t.links["abs-link"] = "/café/naïve ✓.txt"
        t.links["dir-link"] = "deep/d1"
        t.links["dangling"] = "nowhere/at all"
    for i, p in enumerate(sorted(t.files) + sorted(t.dirs)):
        t.mtimes[p] = T0 - 86400 + 2 * i
    return t


def write_tree(tree: Tree, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for d in tree.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for p, data in tree.files.items():
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        if p in tree.sparse:
            with open(f, "wb") as out:
                out.truncate(len(data))
                for off, n in tree.sparse[p]:
                    out.seek(off)
                    out.write(data[off:off + n])
        else:
            f.write_bytes(data)
        os.chmod(f, tree.modes.get(p, 0o644))
    for p, target in tree.links.items():
        os.symlink(target, root / p)
    for p, existing in tree.hardlinks.items():
        os.link(root / existing, root / p)
    for p in sorted(tree.mtimes, key=lambda p: -p.count("/")):
        os.utime(root / p, (tree.mtimes[p], tree.mtimes[p]))
    for p in tree.links:
        os.utime(root / p, (T0, T0), follow_symlinks=False)
    os.utime(root, (T0, T0))


def _sfdisk(image: Path, label: str, parts: list[str]) -> None:
    script = f"label: {label}\nunit: sectors\n" + "\n".join(parts) + "\n"
    _run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image), input=script.encode())


def _blank(image: Path, size: int) -> None:
    with open(image, "wb") as f:
        f.truncate(size)


def build_gpt_ext4(image: Path, work: Path, tree: Tree, small: Tree) -> None:
    _tool("sfdisk"), _tool("mkfs.ext4")
    _blank(image, 96 * MiB)
    # GPT with fixed disk and partition GUIDs so the image is the same on every run
    _sfdisk(image, "gpt", [f"label-id: {UUID}",
                           f"start=2048, size={64 * 2048}, type={LINUX_FS}, uuid={UUID[:-2]}01, name=root",
                           f"start={66 * 2048}, size={24 * 2048}, type={LINUX_FS}, uuid={UUID[:-2]}02, name=data"])
    src = work / "ext4-root"
    write_tree(tree, src)
    _run("mkfs.ext4", "-q", "-F", "-U", UUID, "-E", f"offset={MiB},hash_seed={UUID}", "-L", "root",
         "-d", str(src), str(image), f"{64 * 1024}k")
    src2 = work / "ext4-data"
    write_tree(small, src2)
    _run("mkfs.ext4", "-q", "-F", "-U", UUID, "-E", f"offset={66 * MiB},hash_seed={UUID}", "-L", "data",
         "-d", str(src2), str(image), f"{24 * 1024}k")


def build_mbr_fat(image: Path, work: Path, tree: Tree) -> None:
    _tool("mkfs.vfat"), _tool("mcopy")
    _blank(image, 80 * MiB)
    # p1 FAT32; p2 an extended partition holding logical p5 (ext4): Linux numbering
    _sfdisk(image, "dos", ["label-id: 0x5e1f0c2a", f"start=2048, size={72 * 2048}, type=c",
                           f"start={73 * 2048}, size={7 * 2048}, type=5",
                           f"start={74 * 2048}, size={5 * 2048}, type=83"])
    logical = work / "logical"
    logical.mkdir()
    (logical / "in a logical partition.txt").write_bytes(b"p5\n")
    os.utime(logical / "in a logical partition.txt", (T0, T0))
    _run("mkfs.ext4", "-q", "-F", "-U", UUID, "-E", f"offset={74 * MiB},hash_seed={UUID}", "-d", str(logical),
         str(image), f"{5 * 1024}k")
    _run("mkfs.vfat", "-F", "32", "-s", "1", "-i", "5e1f0c2a", "-n", "GUESTFAT", "--invariant",
         "--offset", "2048", str(image), str(72 * 1024))
    src = work / "fat"
    write_tree(tree, src)
    names = sorted(os.listdir(src))
    _run("mcopy", "-s", "-m", "-i", f"{image}@@{MiB}", *[str(src / n) for n in names], "::/")


def build_mbr_ntfs(image: Path, work: Path, tree: Tree) -> bool:
    """Returns whether the NTFS volume was populated (needs ntfs-3g over FUSE)."""
    _tool("mkntfs")
    part = work / "ntfs-part.img"
    _blank(part, 40 * MiB)
    _run("mkntfs", "-F", "-Q", "-q", "-L", "GUESTNTFS", "-p", "2048", "-H", "255", "-S", "63", str(part))
    populated = False
    mnt = work / "ntfs-mnt"
    mnt.mkdir()
    if shutil.which("ntfs-3g"):
        try:
            _run("ntfs-3g", "-o", "rw", str(part), str(mnt), timeout=30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        else:
            try:
                write_tree(tree, mnt)
                populated = True
            finally:
                _unmount_fuse(mnt)
    _blank(image, 64 * MiB)
    _sfdisk(image, "dos", ["label-id: 0x5e1f0c2b", f"start=2048, size={40 * 2048}, type=7",
                           f"start={42 * 2048}, size={8 * 2048}, type=83"])
    with open(image, "r+b") as out, open(part, "rb") as inp:
        out.seek(MiB)
        shutil.copyfileobj(inp, out)
        out.seek(42 * MiB)                   # a LUKS2 header's first bytes: "encrypted"
        out.write(b"LUKS\xba\xbe\x00\x02" + bytes(504))
    return populated


def _unmount_fuse(mnt: Path) -> None:
    for cmd in (["fusermount3", "-u", str(mnt)], ["fusermount", "-u", str(mnt)], ["umount", str(mnt)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return


def _losetup(image: Path, offset: int = 0, size: int | None = None) -> str:
    cmd = ["losetup", "-f", "--show", "-o", str(offset)]
    if size:
        cmd += ["--sizelimit", str(size)]
    return _run(*cmd, str(image)).stdout.decode().strip()


def build_whole_xfs(image: Path, work: Path, tree: Tree) -> None:
    _tool("mkfs.xfs")
    if os.geteuid() != 0:
        pytest.skip("populating XFS needs a loop mount (root)")
    _blank(image, 320 * MiB)                  # XFS wants at least 300 MB
    _run("mkfs.xfs", "-q", "-f", "-m", f"uuid={UUID}", "-L", "guestxfs", str(image))
    mnt = work / "xfs-mnt"
    mnt.mkdir()
    dev = _losetup(image)
    try:
        try:
            _run("mount", "-t", "xfs", dev, str(mnt))
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot mount XFS to populate it: {e.stderr.decode().strip()}")
        try:
            write_tree(tree, mnt / "x")
            for p in os.listdir(mnt / "x"):
                os.rename(mnt / "x" / p, mnt / p)
            os.rmdir(mnt / "x")
            os.utime(mnt, (T0, T0))
        finally:
            _run("umount", str(mnt))
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


LVM_VG, LVM_LV = "rfstest", "data"
_LV_SECTION = """
\tlogical_volumes {
\t\tdata {
\t\t\tid = "rfstst-0000-0000-0000-0000-0000-000001"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 10
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = ["pv0", 0]
\t\t\t}
\t\t}
\t}
"""


def build_gpt_lvm(image: Path, work: Path, tree: Tree, extra=None) -> None:
    """``extra(folder)``, when given, adds to the tree before mkfs (special files, odd names)."""
    _tool("pvcreate")
    if os.geteuid() != 0:
        pytest.skip("pvcreate needs a block device (loop, root)")
    _blank(image, 80 * MiB)
    _sfdisk(image, "gpt", [f"label-id: {UUID}",
                           f"start=2048, size={76 * 2048}, type={LINUX_LVM}, uuid={UUID[:-2]}03"])
    dev = _losetup(image, MiB, 76 * MiB)
    lvm_env = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
    conf = ("devices { use_devicesfile=0 filter=[\"a|^%s$|\", \"r|.*|\"] } "
            "activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }") % dev
    # No device-mapper in this kernel, so lvcreate refuses; the LV is written into the VG's
    # metadata with vgcfgrestore instead (no activation needed), then filled at its offset.
    meta = work / "vg.txt"
    try:
        try:
            _run("pvcreate", "-q", "--config", conf, "-ff", "-y", dev, env=lvm_env)
            _run("vgcreate", "-q", "--config", conf, LVM_VG, dev, env=lvm_env)
            _run("vgcfgbackup", "-q", "--config", conf, "-f", str(meta), LVM_VG, env=lvm_env)
            text = meta.read_text()
            end = text.rindex("}")
            meta.write_text(text[:end] + _LV_SECTION + text[end:])
            _run("vgcfgrestore", "-q", "--config", conf, "-f", str(meta), LVM_VG, env=lvm_env)
            pe_start = int(_run("pvs", "--config", conf, "--noheadings", "--units", "b", "--nosuffix",
                                "-o", "pe_start", dev, env=lvm_env).stdout.decode().strip())
        except subprocess.CalledProcessError as e:
            pytest.skip(f"LVM tools refused: {e.stderr.decode().strip().splitlines()[-1:]}")
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    src = work / "lvm-tree"
    write_tree(tree, src)
    if extra is not None:
        extra(src)
    _run("mkfs.ext4", "-q", "-F", "-U", UUID, "-E", f"offset={MiB + pe_start},hash_seed={UUID}",
         "-d", str(src), str(image), f"{40 * 1024}k")


def build_gpt_btrfs(image: Path, work: Path, tree: Tree) -> None:
    _tool("mkfs.btrfs")
    src = work / "btrfs-tree"
    write_tree(tree, src)
    part = work / "btrfs-part.img"
    _blank(part, 128 * MiB)
    _run("mkfs.btrfs", "-q", "-f", "-U", UUID, "-L", "guestbtrfs", "--rootdir", str(src), str(part))
    _blank(image, 130 * MiB)
    _sfdisk(image, "gpt", [f"label-id: {UUID}",
                           f"start=2048, size={128 * 2048}, type={LINUX_FS}, uuid={UUID[:-2]}04"])
    with open(image, "r+b") as out, open(part, "rb") as inp:
        out.seek(MiB)
        shutil.copyfileobj(inp, out)


def build_mbr_exfat(image: Path, work: Path, tree: Tree) -> None:
    """exFAT: ``mkfs.exfat`` on a partition image, populated through ``mount.exfat-fuse`` on a
    loop device (root; this kernel has no exfat driver), then copied into the disk."""
    _tool("mkfs.exfat"), _tool("mount.exfat-fuse")
    if os.geteuid() != 0:
        pytest.skip("populating exFAT needs a loop device (root)")
    part = work / "exfat-part.img"
    _blank(part, 40 * MiB)
    _run("mkfs.exfat", "-L", "GUESTEXFAT", str(part))
    mnt = work / "exfat-mnt"
    mnt.mkdir()
    dev = _losetup(part)
    try:
        _run("mount.exfat-fuse", dev, str(mnt))
        try:
            write_tree(tree, mnt / "x")
            for p in os.listdir(mnt / "x"):
                os.rename(mnt / "x" / p, mnt / p)
            os.rmdir(mnt / "x")
            for p, t in tree.mtimes.items():        # the renames above touched the top level
                if "/" not in p:
                    os.utime(mnt / p, (t, t))
        finally:
            _unmount_fuse(mnt)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    _blank(image, 44 * MiB)
    _sfdisk(image, "dos", ["label-id: 0x5e1f0c2c", f"start=2048, size={40 * 2048}, type=7"])
    with open(image, "r+b") as out, open(part, "rb") as inp:
        out.seek(MiB)
        shutil.copyfileobj(inp, out)


def build_broken_gpt(image: Path, work: Path, tree: Tree, small: Tree) -> None:
    """A GPT whose header is overwritten with seeded garbage after its signature."""
    build_gpt_ext4(image, work, tree, small)
    with open(image, "r+b") as f:
        f.seek(512 + 8)
        f.write(random.Random(1).randbytes(80))


@dataclass
class GuestImages:
    """Built images by name (absent when their builder was skipped) and what they hold."""
    dir: Path
    tree: Tree
    small: Tree
    fat_tree: Tree
    ntfs_tree: Tree
    images: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ntfs_populated: bool = False

    def need(self, name: str) -> Path:
        if name not in self.images:
            pytest.skip(self.skipped.get(name, f"{name} was not built"))
        return self.images[name]


def _try(images: GuestImages, name: str, build) -> None:
    image = images.dir / f"{name}.img"
    work = images.dir / f"work-{name}"
    work.mkdir()
    try:
        result = build(image, work)
    except pytest.skip.Exception as e:
        images.skipped[name] = str(e.msg)
        return
    except subprocess.CalledProcessError as e:
        images.skipped[name] = f"{e.cmd[0]} failed: {e.stderr.decode(errors='replace').strip()[:300]}"
        return
    finally:
        shutil.rmtree(work, ignore_errors=True)
    images.images[name] = image
    if name == "mbr_ntfs":
        images.ntfs_populated = bool(result)


@pytest.fixture(scope="session")
def guest_images(tmp_path_factory: pytest.TempPathFactory) -> GuestImages:
    d = tmp_path_factory.mktemp("guest-images")
    tree = make_tree(7)
    small = make_tree(8, big=64 * 1024, deep=3, sparse=False)
    fat_tree = make_tree(9, symlinks=False, sparse=False, big=MiB, deep=8)
    ntfs_tree = make_tree(10, sparse=False, big=MiB, deep=8)     # ntfs-3g writes symlinks, hard links
    imgs = GuestImages(d, tree, small, fat_tree, ntfs_tree)
    _try(imgs, "gpt_ext4", lambda i, w: build_gpt_ext4(i, w, tree, small))
    _try(imgs, "mbr_fat", lambda i, w: build_mbr_fat(i, w, fat_tree))
    _try(imgs, "mbr_ntfs", lambda i, w: build_mbr_ntfs(i, w, ntfs_tree))
    _try(imgs, "whole_xfs", lambda i, w: build_whole_xfs(i, w, small))
    _try(imgs, "gpt_lvm", lambda i, w: build_gpt_lvm(i, w, small))
    _try(imgs, "mbr_exfat", lambda i, w: build_mbr_exfat(i, w, fat_tree))
    _try(imgs, "gpt_btrfs", lambda i, w: build_gpt_btrfs(i, w, small))
    _try(imgs, "broken_gpt", lambda i, w: build_broken_gpt(i, w, small, small))
    return imgs


@dataclass
class GuestRepo:
    """A repository holding every built image as a disk of VM ``guest``."""
    path: Path
    env: dict
    images: GuestImages
    disks: dict[str, str]      # image name -> disk label

    def run(self, *args: str, check: bool = True, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "repofs.cli", *args], env=self.env,
                              capture_output=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"repofs {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}")
        return proc

    def open_generation(self):
        from format.repository import Repository
        from repofs.view.tree import RepositoryView
        return RepositoryView(Repository.open(self.path, PASSPHRASE.encode())).generation("guest")


@pytest.fixture(scope="session")
def guest_repo(guest_images: GuestImages, tmp_path_factory: pytest.TempPathFactory) -> GuestRepo:
    from format.repository import Repository
    from repofs.ingest.backup import backup
    from repofs.ingest.sources import LocalImage

    d = tmp_path_factory.mktemp("guest-repo")
    repo = d / "repo"
    pw = d / "passphrase"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)  # a password file others can read draws a warning
    # a cheap KDF keeps each CLI call fast; the format is the same
    r = Repository.init(repo, PASSPHRASE.encode(), kdf={"name": "argon2id", "time_cost": 1,
                                                      "memory_kib": 8 * 1024, "parallelism": 1})
    sources = [LocalImage.open(str(p), label=name) for name, p in guest_images.images.items()]
    try:
        backup(r, "guest", sources)
    finally:
        for s in sources:
            s.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOFS_")}
    env.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(pw), PYTHONPATH=str(ROOT),
               PYTHONWARNINGS="error", LANG="C.UTF-8", TZ="UTC")
    return GuestRepo(repo, env, guest_images, {n: n for n in guest_images.images})


# --- a filesystem snapshot, comparable between the rootless reader, the mount and the kernel --

IGNORED = {"lost+found"}


def snapshot_guest(g, root: str) -> dict[str, tuple]:
    out: dict[str, tuple] = {}

    def walk(rel: str) -> None:
        for name, s in g.listdir(f"{root}/{rel}" if rel else root):
            if not rel and name in IGNORED:
                continue
            path = f"{rel}/{name}" if rel else name
            full = f"{root}/{path}"
            if s.is_dir:
                out[path] = ("dir", st.S_IMODE(s.mode), s.mtime_ns // 10**9, s.size)
                walk(path)
            elif s.is_symlink:
                out[path] = ("link", g.readlink(full))
            else:
                f = g.open(full)
                out[path] = ("file", st.S_IMODE(s.mode), s.mtime_ns // 10**9, f.read(0, s.size + 1),
                             s.nlink, s.uid, s.gid)
    walk("")
    return out


def snapshot_local(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in IGNORED]
            filenames = [f for f in filenames if f not in IGNORED]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            s = p.lstat()
            if st.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif st.S_ISDIR(s.st_mode):
                out[rel] = ("dir", st.S_IMODE(s.st_mode), s.st_mtime_ns // 10**9, s.st_size)
            else:
                out[rel] = ("file", st.S_IMODE(s.st_mode), s.st_mtime_ns // 10**9, p.read_bytes(),
                            s.st_nlink, s.st_uid, s.st_gid)
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return out


def expected(tree: Tree, posix: bool = True) -> dict[str, tuple]:
    """What a snapshot of ``tree`` must show (directory modes are whatever mkdir gave)."""
    out: dict[str, tuple] = {}
    for p, data in tree.files.items():
        out[p] = ("file", tree.modes.get(p, 0o644), tree.mtimes[p], data)
    for d in tree.dirs:
        out[d] = ("dir", None, tree.mtimes[d])
    for p, target in tree.links.items():
        out[p] = ("link", target)
    for p, existing in tree.hardlinks.items():
        out[p] = out[existing]
    if not posix:
        out = {p: (v[0], None, *v[2:]) if v[0] != "link" else v for p, v in out.items()}
    return out


def same(snap: dict[str, tuple], want: dict[str, tuple]) -> None:
    assert sorted(snap) == sorted(want)
    for p, w in want.items():
        got = snap[p]
        if w[0] == "link":
            assert got == w, p
            continue
        assert got[0] == w[0], p
        if w[1] is not None:
            assert got[1] == w[1], (p, oct(got[1]), oct(w[1]))
        assert got[2] == w[2], (p, "mtime")
        if w[0] == "file":
            assert got[3] == w[3], (p, "content")


# --- hostile guests: LVM metadata rewritten on disk ------------------------------------------

LVM_INITIAL_CRC = 0xF597A6CF


def lvm_crc(data: bytes, initial: int = LVM_INITIAL_CRC) -> int:
    """LVM's checksum: CRC-32 (the zlib polynomial) without the final inversion."""
    import zlib
    return ~zlib.crc32(data, ~initial & 0xFFFFFFFF) & 0xFFFFFFFF


def rewrite_lvm_metadata(image: Path, pv_offset: int, edit) -> None:
    """Replace the current metadata text of the PV at ``pv_offset`` by ``edit(text)``, with
    its size and checksums recomputed as LVM writes them: what a guest with root can do to its
    own disk. Layout (LVM2 on-disk format): label in sector 1, its pv_header names the
    metadata areas; an area starts with mda_header (checksum, magic, version, start, size)
    followed by raw_locn entries (offset, size, checksum, flags) of the text."""
    import struct
    with open(image, "r+b") as f:
        f.seek(pv_offset + 512)
        label = f.read(512)
        assert label[:8] == b"LABELONE"
        pvh = pv_offset + 512 + struct.unpack_from("<I", label, 20)[0]
        f.seek(pvh + 32 + 8)
        while struct.unpack("<QQ", f.read(16)) != (0, 0):     # data areas
            pass
        mda_at, _mda_size = struct.unpack("<QQ", f.read(16))
        f.seek(pv_offset + mda_at)
        head = bytearray(f.read(512))
        start = struct.unpack_from("<Q", head, 24)[0]
        off, size, crc, flags = struct.unpack_from("<QQII", head, 40)
        f.seek(pv_offset + start + off)
        raw = f.read(size)
        assert lvm_crc(raw) == crc and lvm_crc(bytes(head[4:512])) == struct.unpack_from("<I", head)[0]
        new = edit(raw.rstrip(b"\0").decode()).encode() + raw[len(raw.rstrip(b"\0")):]
        f.seek(pv_offset + start + off)
        f.write(new)
        struct.pack_into("<QQII", head, 40, off, len(new), lvm_crc(new), flags)
        struct.pack_into("<I", head, 0, lvm_crc(bytes(head[4:512])))
        f.seek(pv_offset + mda_at)
        f.write(head)
