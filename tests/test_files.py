"""repofs files: guest files read rootlessly out of a generation (ls, cat, stat, get) and the
model behind them (``repofs.guest.guestfs``), on images built by ``fixtures_images``."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from fixtures_images import LVM_LV, LVM_VG, expected, same, snapshot_guest, snapshot_local
from repofs.guest.guestfs import (EncryptedVolume, GuestGeneration, GuestNotFound, PartitionTableDamaged,
                            UnsupportedVolume)

# --- volumes -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gen(guest_repo):
    return GuestGeneration(guest_repo.open_generation())


def test_volumes_are_named_by_partition_number_lvm_and_whole_disk(gen, guest_images):
    names = {d: [(v.name, v.fstype) for v in gen.volumes(d)] for d in gen.disk_labels() if d != "broken_gpt"}
    assert names["gpt_ext4"] == [("p1", "ext"), ("p2", "ext")]
    assert names["mbr_fat"] == [("p1", "vfat"), ("p5", "ext")]     # logical: numbered from 5
    assert gen.read("mbr_fat/p5/in a logical partition.txt", 0, 10) == b"p5\n"
    assert names["mbr_ntfs"] == [("p1", "ntfs"), ("p2", "luks")]
    if "whole_xfs" in names:
        assert names["whole_xfs"] == [("whole", "xfs")]
    if "gpt_lvm" in names:
        assert names["gpt_lvm"] == [("p1", "lvm2"), (f"{LVM_VG}/{LVM_LV}", "ext")]
        assert [n for n, _s in gen.listdir("gpt_lvm")] == ["p1", LVM_VG]
        assert [n for n, _s in gen.listdir(f"gpt_lvm/{LVM_VG}")] == [LVM_LV]
    p1 = gen.volumes("gpt_ext4")[0]
    assert (p1.offset, p1.size, p1.description) == (1 << 20, 64 << 20, "root")


# --- the same tree, byte for byte, from every filesystem -----------------------------------------

CASES = [  # volume, which tree, POSIX modes?
    ("gpt_ext4/p1", "tree", True),
    ("gpt_ext4/p2", "small", True),
    ("whole_xfs/whole", "small", True),
    (f"gpt_lvm/{LVM_VG}/{LVM_LV}", "small", True),
    ("gpt_btrfs/p1", "small", True),
    ("mbr_fat/p1", "fat_tree", False),
    ("mbr_ntfs/p1", "ntfs_tree", False),
    ("mbr_exfat/p1", "fat_tree", False),
]


@pytest.mark.parametrize("volume,which,posix", CASES,
                         ids=[c[0].split("/")[0] + "-" + c[0].split("/")[1] for c in CASES])
def test_rootless_tree_matches_what_was_written(gen, guest_images, volume, which, posix):
    guest_images.need(volume.split("/")[0])
    if volume.startswith("mbr_ntfs") and not guest_images.ntfs_populated:
        assert [n for n, _ in gen.listdir(volume)] == []
        pytest.skip("ntfs-3g could not populate the NTFS volume: listing of an empty one only")
    same(snapshot_guest(gen, volume), expected(getattr(guest_images, which), posix))


def test_sparse_file_reads_zeros_in_holes_and_symlinks_resolve_inside_the_guest(gen, guest_images):
    tree = guest_images.tree
    f = gen.open("gpt_ext4/p1/sparse.img")
    assert f.read(0, 4096) == bytes(4096)
    assert f.read(5 << 20, 8192) == tree.files["sparse.img"][5 << 20:(5 << 20) + 8192]
    assert gen.read("gpt_ext4/p1/abs-link", 0, 100) == tree.files["café/naïve ✓.txt"]
    assert gen.read("gpt_ext4/p1/dir-link/d2/../../../hello.txt", 0, 100) == b"hello world\n"
    assert gen.stat("gpt_ext4/p1/dir-link", follow=True).is_dir
    with pytest.raises(GuestNotFound):
        gen.read("gpt_ext4/p1/dangling", 0, 1)


def test_bad_addresses_raise_named_errors(gen, guest_images):
    with pytest.raises(GuestNotFound, match="no disk"):
        gen.listdir("nodisk")
    with pytest.raises(GuestNotFound, match="no volume 'p9'"):
        gen.listdir("gpt_ext4/p9")
    with pytest.raises(GuestNotFound, match="no such file"):
        gen.stat("gpt_ext4/p1/café/missing")
    with pytest.raises(EncryptedVolume, match="luks"):
        gen.listdir("mbr_ntfs/p2")
    if "gpt_lvm" in guest_images.images:
        with pytest.raises(UnsupportedVolume, match="LVM physical volume"):
            gen.listdir("gpt_lvm/p1")
    with pytest.raises(PartitionTableDamaged):
        gen.listdir("broken_gpt")


# --- the command line ------------------------------------------------------------------------

@pytest.fixture
def cli(guest_repo, capsysbinary, monkeypatch):
    """The real ``repofs`` entry point, in-process (a subprocess per call costs ~1 s here)."""
    from repofs.cli.app import main
    for key in ("REPOFS_REPOSITORY", "REPOFS_PASSWORD_FILE"):
        monkeypatch.setenv(key, guest_repo.env[key])

    def run(*args: str, check: bool = True) -> SimpleNamespace:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsysbinary.readouterr()
        if check and code:
            raise AssertionError(f"repofs {' '.join(args)} exited {code}: {err.decode()}")
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


def test_cli_ls_cat_stat(cli, guest_repo, guest_images):
    r = SimpleNamespace(run=cli)
    # one run through a real process: binary stdout, the console script's wiring
    assert guest_repo.run("files", "cat", "vm:guest:gpt_ext4/p1/big.bin").stdout == guest_images.tree.files["big.bin"]
    disks = r.run("files", "ls", "vm:guest").stdout.decode().split()
    assert "gpt_ext4" in disks and "mbr_fat" in disks
    vols = r.run("files", "ls", "-l", "vm:guest@latest:gpt_ext4").stdout.decode().splitlines()
    assert vols[0].split("\t")[:3] == ["p1", "64.0M", "ext"]
    names = r.run("files", "ls", "vm:guest:gpt_ext4/p1/").stdout.decode().splitlines()
    assert "name with spaces" in names and "日本語" in names and "rel-link" in names
    long = r.run("files", "ls", "-l", "vm:guest:gpt_ext4/p1").stdout.decode()
    assert "-rwxr-xr-x" in long and "abs-link -> /café/naïve ✓.txt" in long
    assert r.run("files", "cat", "vm:guest:gpt_ext4/p1/日本語/ファイル.bin").stdout == \
        guest_images.tree.files["日本語/ファイル.bin"]
    assert r.run("files", "cat", "vm:guest:mbr_fat/p1/name with spaces/a file.txt").stdout == \
        guest_images.fat_tree.files["name with spaces/a file.txt"]
    out = r.run("files", "stat", "vm:guest:gpt_ext4/p1/secret").stdout.decode()
    assert "0o600" in out and "Size: 11" in out


@pytest.mark.parametrize("args,code,text", [
    (["ls", "vm:guest:nodisk"], 8, "no disk 'nodisk'"),
    (["ls", "vm:guest:gpt_ext4/p7"], 8, "no volume 'p7'"),
    (["cat", "vm:guest:gpt_ext4/p1/nope"], 8, "no such file"),
    (["ls", "vm:nobody:gpt_ext4"], 8, "no generations"),
    (["ls", "vm:guest@1999:gpt_ext4"], 8, "no generation '1999'"),
    (["ls", "vm:guest:mbr_ntfs/p2"], 12, "encrypted (luks)"),
    (["ls", "vm:guest:broken_gpt"], 1, "partition table is damaged"),
    (["cat", "vm:guest:gpt_ext4/p1/deep"], 1, "is a directory"),
    (["ls", "guest:gpt_ext4"], 2, "unknown address"),
])
def test_cli_errors_are_one_line(cli, args, code, text):
    proc = cli("files", *args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("repofs: error: ") and text in err


def test_cli_get_keeps_names_modes_times_symlinks_and_holes(cli, guest_images, tmp_path):
    r = SimpleNamespace(run=cli)
    r.run("files", "get", "vm:guest:gpt_ext4/p1", str(tmp_path))
    got = tmp_path / "p1"
    same(snapshot_local(got), expected(guest_images.tree))
    assert (got / "secret").stat().st_ino == (got / "hard link to secret").stat().st_ino
    sparse = (got / "sparse.img").stat()
    assert sparse.st_blocks * 512 < sparse.st_size // 2          # holes stayed holes
    # refuses to overwrite, then --force does
    proc = r.run("files", "get", "vm:guest:gpt_ext4/p1/hello.txt", str(got), check=False)
    assert proc.returncode == 21 and "already exists" in proc.stderr.decode()
    (got / "hello.txt").write_bytes(b"changed")
    r.run("files", "get", "--force", "vm:guest:gpt_ext4/p1/hello.txt", str(got))
    assert (got / "hello.txt").read_bytes() == b"hello world\n"
    # one file to a new name; a symlink stays a symlink
    r.run("files", "get", "vm:guest:gpt_ext4/p1/café/naïve ✓.txt", str(tmp_path / "copy.txt"))
    assert (tmp_path / "copy.txt").read_bytes() == guest_images.tree.files["café/naïve ✓.txt"]
    r.run("files", "get", "vm:guest:gpt_ext4/p1/dir-link", str(tmp_path))
    assert os.readlink(tmp_path / "dir-link") == "deep/d1"


def test_cli_get_from_fat(cli, guest_images, tmp_path):
    cli("files", "get", "vm:guest:mbr_fat/p1/deep", str(tmp_path))
    want = {p[len("deep/"):]: v for p, v in expected(guest_images.fat_tree, posix=False).items()
            if p.startswith("deep/")}
    same(snapshot_local(tmp_path / "deep"), want)


def test_hostile_names_never_leave_the_target(tmp_path):
    """A filesystem whose directory lists "..", "a/b" or "" cannot make `get` write outside:
    the names are escaped into single path components, extracted under those."""
    from repofs.guest.extract import extract
    from repofs.guest.guestfs import GuestStat, GuestTree, _Node

    class Leaf(_Node):
        def stat(self):
            return GuestStat(mode=0o100644, size=1, mtime_ns=0)

        def stream(self):
            import io
            return io.BytesIO(b"x")

    class Root(_Node):
        def stat(self):
            return GuestStat(mode=0o40755, size=4096, mtime_ns=0)

        def children(self):
            return iter([("..", Leaf()), ("a/b", Leaf()), ("", Leaf()), ("ok", Leaf())])

    tree = GuestTree.__new__(GuestTree)
    import threading
    from collections import OrderedDict
    tree.volume, tree.where, tree.root = None, "d/v", Root()
    tree._lock, tree._dirs, tree._streams = threading.RLock(), OrderedDict(), OrderedDict()
    escaped = ["\\x00", "\\x2e\\x2e", "a\\x2fb", "ok"]     # names.component: shown escaped
    assert [n for n, _ in tree.listdir("")] == escaped
    (tmp_path / "dest").mkdir()
    extract(tree, "/", str(tmp_path / "dest" / "out"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["dest", "out", *escaped])


def test_a_damaged_filesystem_does_not_hide_its_neighbours(guest_images, tmp_path):
    """p2's ext4 superblock wiped: listing the disk still shows p1 and p2, p1 reads, and p2
    says it is damaged (exit code 1 from the CLI)."""
    import shutil as sh

    from repofs.guest.guestfs import FilesystemDamaged
    from repofs.view.folder import FileDisk
    image = tmp_path / "damaged.img"
    sh.copy(guest_images.need("gpt_ext4"), image)
    with open(image, "r+b") as f:
        f.seek(66 * (1 << 20) + 1024)            # p2's superblock: magic kept, geometry zeroed
        f.write(bytes(56) + b"\x53\xef")

    class Gen:
        vm, name, time_ns = "v", "g", 0
        disks = [FileDisk(str(image), "d")]
    g = GuestGeneration(Gen())
    listing = dict(g.listdir("d"))
    assert sorted(listing) == ["p1", "p2"] and listing["p2"].mode & 0o777 == 0
    assert g.read("d/p1/hello.txt", 0, 100) == b"hello world\n"
    with pytest.raises(FilesystemDamaged, match="d/p2: cannot read its ext filesystem"):
        g.listdir("d/p2")


@pytest.mark.parametrize("head,kind", [
    (b"\xeb\x58\x90-FVE-FS-" + bytes(4085), "bitlocker"),
    (b"LUKS\xba\xbe\x00\x01" + bytes(4088), "luks"),
    (bytes(4086) + b"SWAPSPACE2", "swap"),
    (bytes(512) + b"LABELONE" + bytes(16) + b"LVM2 001" + bytes(3552), "lvm2"),
    (bytes(4096), None),
])
def test_volume_signatures(head, kind):
    import io

    from repofs.guest.guestfs import probe_fstype
    assert probe_fstype(io.BytesIO(head + bytes(0x11000))) == kind


# --- repofs.ext4, our ext2/3/4 reader, on its own images ------------------------------------------

EXT_VARIANTS = {  # name: mkfs options (all with a 1 KiB or 4 KiB block, rootless through -d)
    "ext4-64bit": ["-t", "ext4", "-O", "64bit", "-I", "256", "-b", "4096"],
    "ext4-32bit-128": ["-t", "ext4", "-O", "^64bit", "-I", "128", "-b", "1024"],
    "ext2-blockmap": ["-t", "ext2", "-I", "128", "-b", "1024"],
    "ext3": ["-t", "ext3", "-b", "1024"],
}


def _ext_tree(root):
    """Files the reader must give back exactly: a large (htree) directory, names with spaces
    and non-ASCII, fast and slow symlinks, a sparse file, a file needing double-indirect
    blocks with 1 KiB blocks, a 20-deep path, times past 2038 and before 1970."""
    import random
    rng = random.Random(7)
    (root / "big dir").mkdir()
    for i in range(3000):
        (root / "big dir" / f"entry {i:05} — é.txt").write_bytes(b"%d\n" % i)
    (root / "café").mkdir()
    (root / "café" / "naïve ✓.txt").write_bytes(rng.randbytes(5000))
    (root / "double-indirect.bin").write_bytes(rng.randbytes(3 << 20))
    with open(root / "sparse.img", "wb") as f:
        f.seek(5 << 20)
        f.write(rng.randbytes(9000))
        f.truncate(12 << 20)
    os.symlink("café/naïve ✓.txt", root / "fast-link")
    os.symlink("x" * 80 + "/" + "y" * 100, root / "slow-link")
    deep = root
    for i in range(20):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"deep\n")
    os.utime(root / "café" / "naïve ✓.txt", ns=(2_240_000_000_123_456_789, 2_240_000_000_123_456_789))  # 2040
    os.utime(root / "sparse.img", ns=(-300_000_000_987_654_321, -300_000_000_987_654_321))          # 1960
    os.chmod(root / "double-indirect.bin", 0o600)


@pytest.fixture(scope="module")
def ext_images(tmp_path_factory):
    import shutil as sh
    import subprocess
    if not sh.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    base = tmp_path_factory.mktemp("ext")
    tree = base / "tree"
    tree.mkdir()
    _ext_tree(tree)
    images = {}
    for name, opts in EXT_VARIANTS.items():
        image = base / f"{name}.img"
        subprocess.run(["mkfs.ext4", "-q", "-F", *opts, "-E", "root_owner=0:0", "-d", str(tree), str(image), "48M"],
                       check=True, capture_output=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})
        # e2fsck -D indexes large directories (an htree), as a running kernel would have
        subprocess.run(["e2fsck", "-fyD", str(image)], capture_output=True)
        images[name] = image
    return tree, images


def _ext_snapshot(fs, ino, prefix=""):
    out = {}
    for name, child in fs.listdir(ino):
        path = prefix + name
        kind = child.mode & 0o170000
        if kind == 0o040000:
            out[path + "/"] = (child.mode,)
            out.update(_ext_snapshot(fs, child, path + "/"))
        elif kind == 0o120000:
            out[path] = (child.mode & 0o170000, fs.readlink(child))
        else:
            out[path] = (child.mode, child.size, fs.open(child).read())
    return out


def _local_snapshot(root, prefix=""):
    out = {}
    for entry in os.scandir(root):
        path = prefix + entry.name
        s = entry.stat(follow_symlinks=False)
        if entry.is_symlink():
            out[path] = (0o120000, os.readlink(entry.path))
        elif entry.is_dir():
            out[path + "/"] = (s.st_mode,)
            out.update(_local_snapshot(entry.path, path + "/"))
        else:
            with open(entry.path, "rb") as f:
                out[path] = (s.st_mode, s.st_size, f.read())
    return out


@pytest.mark.parametrize("variant", list(EXT_VARIANTS))
def test_ext4_reader_gives_back_the_tree_byte_for_byte(ext_images, variant):
    from repofs.guest.ext4 import Ext4
    tree, images = ext_images
    with open(images[variant], "rb") as fh:
        fs = Ext4(fh)
        assert fs.version == {"ext4-64bit": 4, "ext4-32bit-128": 4, "ext2-blockmap": 2, "ext3": 3}[variant]
        got = _ext_snapshot(fs, fs.root)
        names = [n for n, _ in fs.listdir(fs.root)]
    want = _local_snapshot(tree)
    assert "lost+found" in names and got.pop("lost+found/")[0] & 0o170000 == 0o040000
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path


def test_ext4_times_follow_the_kernel_past_2038_and_before_1970(ext_images, tmp_path):
    """Raw fields as the kernel encodes them (signed 32-bit seconds; in 256-byte inodes an
    ``_extra`` word of nanoseconds << 2 | epoch bits), set with debugfs, decoded back."""
    import shutil as sh
    import subprocess
    from repofs.guest.ext4 import Ext4
    _tree, images = ext_images
    cases = {  # variant: {path: (mtime field, mtime_extra field or None, expected ns)}
        "ext4-64bit": {"/sparse.img": (2**32 - 300_000_001, 12_345_679 << 2, -300_000_000_987_654_321),   # 1960
                       "/fast-link": (2_240_000_000, 123_456_789 << 2 | 1, 2_240_000_000_123_456_789)},  # 2040
        "ext2-blockmap": {"/sparse.img": (2**32 - 300_000_001, None, -300_000_001_000_000_000)},
    }
    for variant, fields in cases.items():
        image = tmp_path / f"{variant}.img"
        sh.copy(images[variant], image)
        for path, (seconds, extra, _ns) in fields.items():
            cmds = [f"sif {path} mtime {seconds:#x}"]
            if extra is not None:
                cmds.append(f"sif {path} mtime_extra {extra:#x}")
            for cmd in cmds:
                subprocess.run(["debugfs", "-w", "-R", cmd, str(image)], check=True, capture_output=True)
        with open(image, "rb") as fh:
            fs = Ext4(fh)
            top = dict(fs.listdir(fs.root))
            for path, (_s, _x, ns) in fields.items():
                assert top[path.strip("/")].mtime_ns == ns, (variant, path)


def test_ext4_large_directory_is_hashed_and_fully_listed(ext_images):
    import subprocess
    from repofs.guest.ext4 import Ext4
    _tree, images = ext_images
    out = subprocess.run(["debugfs", "-R", 'stat "/big dir"', str(images["ext4-64bit"])],
                         capture_output=True, text=True).stdout
    assert int(out.split("Flags: ")[1].split()[0], 16) & 0x1000     # EXT4_INDEX_FL: an htree
    with open(images["ext4-64bit"], "rb") as fh:
        fs = Ext4(fh)
        big = dict(fs.listdir(fs.root))["big dir"]
        assert sorted(n for n, _ in fs.listdir(big)) == sorted(f"entry {i:05} — é.txt" for i in range(3000))


def test_ext4_damaged_structures_raise_its_error(ext_images, tmp_path):
    from repofs.guest.ext4 import Ext4, Ext4Error
    _tree, images = ext_images
    data = bytearray(images["ext4-64bit"].read_bytes()[:1 << 20])
    data[1024 + 24:1024 + 28] = (40).to_bytes(4, "little")          # absurd block size
    import io
    with pytest.raises(Ext4Error, match="block size"):
        Ext4(io.BytesIO(bytes(data)))
    with pytest.raises(Ext4Error, match="magic"):
        Ext4(io.BytesIO(bytes(8192)))


def test_ext4_inline_data_beyond_the_inode_is_reported_unsupported_not_damaged(tmp_path):
    """With ``inline_data``, a file under 60 bytes lives in i_block (read), a larger one in the
    inode's extended attributes, which repofs does not read: it says so, it does not call the
    filesystem damaged, and the rest of the tree still reads."""
    import shutil as sh
    import subprocess

    from repofs.guest.guestfs import UnsupportedFeature
    from repofs.view.folder import FileDisk
    if not sh.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "tiny.txt").write_bytes(b"x" * 20)
    (tree / "mid.txt").write_bytes(b"y" * 100)
    image = tmp_path / "inline.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-O", "inline_data", "-I", "256", "-d", str(tree),
                    str(image), "8M"], check=True, capture_output=True)

    class Gen:
        vm, name, time_ns = "v", "g", 0
        disks = [FileDisk(str(image), "d")]
    g = GuestGeneration(Gen())
    assert sorted(n for n, _ in g.listdir("d/whole")) == ["lost+found", "mid.txt", "tiny.txt"]
    assert g.read("d/whole/tiny.txt", 0, 100) == b"x" * 20
    with pytest.raises(UnsupportedFeature, match="inline"):
        g.read("d/whole/mid.txt", 0, 200)
