"""Fuzzing the guest parsers (hypothesis): partition tables and volume probing, LVM metadata,
ext2/3/4 structures, sparse VMDK headers and grain tables.

Each test starts from real structures — images made by ``mkfs.ext4``/``mkfs.ext2`` and
``sfdisk``, a PV laid out as LVM2 writes it, a VMDK from ``qemu-img`` — and mutates the bytes
that matter (the superblock, group descriptors, inode tables, directory blocks, extent nodes,
partition entries, metadata text, headers and tables): single bytes, and 32-bit fields set to
boundary values. Property: on any of them the reader returns a bounded result or raises its
documented error class (``Ext4Error``, ``GuestError``, ``SparseVmdkError``), never another
exception, and every case ends within ``SECONDS`` in ``MEMORY`` more bytes of address space.

CI runs the seeded ``ci`` profile (tests/conftest.py; ``EXAMPLES`` per test); the long run is
``REPOFS_FUZZ=long .venv/bin/python -m pytest -q tests/test_fuzz_guest.py`` (docs/security.md).
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import signal
import stat as stmod
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from fixtures_images import _run, lvm_crc

LONG = os.environ.get("REPOFS_FUZZ") == "long"
EXAMPLES = int(os.environ.get("REPOFS_FUZZ_EXAMPLES", 20000 if LONG else 60))
SECONDS = 10
MEMORY = 1 << 30
WALK = 500                          # entries a case walks at most
BOUNDARY = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


class TooSlow(Exception):
    pass


@contextlib.contextmanager
def bounded():
    """One case: at most SECONDS of wall time and MEMORY more address space."""
    def alarm(signum, frame):
        raise TooSlow(f"a case ran longer than {SECONDS} s")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (now + MEMORY, hard))
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Seed:
    data: bytes
    regions: list[tuple[int, int]] = field(default_factory=list)   # (offset, length) worth mutating


def mutations(seed: Seed):
    """Patches of ``seed``: single bytes and boundary 32-bit values inside its regions, and
    sometimes a truncation."""
    spots = st.sampled_from(seed.regions).flatmap(
        lambda r: st.integers(r[0], max(r[0], r[0] + r[1] - 4)))
    byte = st.tuples(spots, st.integers(0, 255).map(lambda b: bytes([b])))
    word = st.tuples(spots, st.sampled_from(BOUNDARY).map(lambda v: struct.pack("<I", v)))
    cut = st.one_of(st.none(), st.integers(0, len(seed.data)))
    return st.tuples(st.lists(st.one_of(byte, word), min_size=1, max_size=12), cut)


def apply(seed: Seed, patch) -> bytes:
    edits, cut = patch
    data = bytearray(seed.data)
    for at, value in edits:
        data[at:at + len(value)] = value
    return bytes(data if cut is None or cut > len(data) // 2 else data[:cut])


# --- seeds ------------------------------------------------------------------------------------

def _tree(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"x" * 5000)
    (root / "dir" / "sub" / "deep").write_bytes(b"deep\n")
    for i in range(40):                         # a directory of several blocks
        (root / "many" / f"entry-{i:03d}-{'n' * 40}").parent.mkdir(exist_ok=True)
        (root / "many" / f"entry-{i:03d}-{'n' * 40}").write_bytes(b"%d" % i)
    os.symlink("dir/file", root / "fast-link")
    os.symlink("/" + "long/" * 30 + "target", root / "slow-link")
    with open(root / "sparse", "wb") as f:
        f.seek(200 << 10)
        f.write(b"end")


def _ext_regions(image: bytes) -> list[tuple[int, int]]:
    """The metadata of a clean image: superblock, descriptors, inode tables in use,
    directory blocks and extent-tree/indirect blocks."""
    from repofs.guest.ext4 import Ext4
    fs = Ext4(io.BytesIO(image))
    bs = fs.block_size
    regions = [(1024, 1024)] + [(b * bs, bs) for b in fs.descriptor_blocks()]
    regions += [(off, used * fs.inode_size) for _g, off, used in fs.inode_tables()]
    for d in fs.directories():
        tree: list[int] = []
        for phys, count in fs.runlist(d, tree):
            if phys is not None:
                regions.append((phys * bs, count * bs))
        regions += [(b * bs, bs) for b in tree]
    return regions


@pytest.fixture(scope="module")
def ext_seeds(tmp_path_factory) -> dict[str, Seed]:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    d = tmp_path_factory.mktemp("fuzz-ext")
    src = d / "src"
    _tree(src)
    seeds = {}
    for kind, extra in (("ext4", ["-t", "ext4", "-b", "1024"]), ("ext2", ["-t", "ext2", "-b", "1024"]),
                        ("ext4-4k", ["-t", "ext4", "-b", "4096", "-O", "64bit,metadata_csum"])):
        img = d / f"{kind}.img"
        with open(img, "wb") as f:
            f.truncate(2 << 20)
        _run("mkfs.ext4", "-q", "-F", *extra, "-N", "128", "-E", "hash_seed=5e1f0c2a-7d3b-4e59-9a61-0c2b3d4e5f60",
             "-U", "5e1f0c2a-7d3b-4e59-9a61-0c2b3d4e5f60", "-d", str(src), str(img))
        data = img.read_bytes()
        seeds[kind] = Seed(data, _ext_regions(data))
    return seeds


class BytesDisk:
    def __init__(self, data: bytes, label: str = "d"):
        self.data, self.label, self.capacity = data, label, len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def close(self) -> None:
        pass


@dataclass
class BytesGeneration:
    disks: list
    vm: str = "fuzz"
    name: str = "g"
    time_ns: int = 0


def walk_ext(fs) -> int:
    """Every entry, breadth first, up to WALK: stat, list, read a file's first block, read links."""
    from repofs.guest.ext4 import Inode
    todo: list[Inode] = [fs.root]
    seen = 0
    while todo and seen < WALK:
        ino = todo.pop(0)
        for name, child in fs.listdir(ino):
            seen += 1
            assert isinstance(name, str) and len(name) <= 255
            if stmod.S_ISDIR(child.mode):
                todo.append(child)
            elif stmod.S_ISLNK(child.mode):
                assert len(fs.readlink(child)) <= fs.block_size
            elif stmod.S_ISREG(child.mode):
                f = fs.open(child)
                f.seek(0)
                assert len(f.read(fs.block_size)) <= fs.block_size
    return seen


def walk_guest(g, prefix: str) -> int:
    todo, seen = [prefix], 0
    while todo and seen < WALK:
        path = todo.pop(0)
        for name, s in g.listdir(path):
            seen += 1
            assert "/" not in name and name not in (".", "..")
            child = f"{path}/{name}"
            if s.is_dir:
                todo.append(child)
            elif s.is_file:
                assert len(g.read(child, 0, 4096)) <= 4096
    return seen


# --- ext2/3/4 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ext4", "ext2", "ext4-4k"])
def test_fuzz_ext_structures(ext_seeds, kind):
    from repofs.guest.ext4 import Ext4, Ext4Error
    from repofs.guest.extmeta import metadata_ranges
    seed = ext_seeds[kind]
    assert walk_ext(Ext4(io.BytesIO(seed.data))) > 40          # the seed itself reads whole

    @settings(max_examples=EXAMPLES)
    @given(mutations(seed))
    def case(patch):
        data = apply(seed, patch)
        with bounded():
            # what a backup does with every guest volume (the metadata copies): never raises
            ranges = metadata_ranges(io.BytesIO(data), 64 << 20)
            assert sum(n for _o, n in ranges) <= 64 << 20
            try:
                walk_ext(Ext4(io.BytesIO(data)))
            except Ext4Error:
                pass
    case()


# --- partition tables, volume probing, the guest tree ----------------------------------------

@pytest.fixture(scope="module")
def table_seeds(ext_seeds, tmp_path_factory) -> dict[str, Seed]:
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk is not installed")
    d = tmp_path_factory.mktemp("fuzz-tables")
    seeds = {}
    fs = ext_seeds["ext4"].data
    for label, script in (("gpt", "label: gpt\nstart=2048, size=4096\nstart=6144, size=2048\n"),
                          ("mbr", "label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=4096, type=5\n"
                                  "start=8192, size=1024, type=83\n")):
        img = d / f"{label}.img"
        with open(img, "wb") as f:
            f.truncate(5 << 20)
        subprocess.run(["sfdisk", "-q", str(img)], input=script.encode(), check=True, capture_output=True)
        data = bytearray(img.read_bytes())
        data[1 << 20:(1 << 20) + len(fs)] = fs
        regions = [(0, 34 * 512), (len(data) - 33 * 512, 33 * 512), (6144 * 512, 512), (8192 * 512 - 512, 512)]
        regions += [((1 << 20) + o, n) for o, n in ext_seeds["ext4"].regions[:4]]
        seeds[label] = Seed(bytes(data), regions)
    return seeds


@pytest.mark.parametrize("label", ["gpt", "mbr"])
def test_fuzz_partition_tables_and_guest_tree(table_seeds, label):
    from repofs.guest.guestfs import GuestError, GuestGeneration
    seed = table_seeds[label]
    g = GuestGeneration(BytesGeneration([BytesDisk(seed.data)]))
    assert [v.name for v in g.volumes("d")][0] == "p1" and walk_guest(g, "d/p1") > 40

    @settings(max_examples=EXAMPLES)
    @given(mutations(seed))
    def case(patch):
        data = apply(seed, patch)
        g = GuestGeneration(BytesGeneration([BytesDisk(data)]))
        with bounded():
            try:
                for v in g.volumes("d"):
                    assert v.offset is None or 0 <= v.offset and 0 <= v.size and v.offset + v.size <= len(data)
                    try:
                        walk_guest(g, f"d/{v.name}")
                    except GuestError:
                        pass
            except GuestError:
                pass
    case()


# --- LVM2 metadata ----------------------------------------------------------------------------

LVM_TEXT = """fuzzvg {
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
seqno = 1
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 2048
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = "hhhhhh-hhhh-hhhh-hhhh-hhhh-hhhh-hhhhhh"
device = "/dev/fuzz"
status = ["ALLOCATABLE"]
flags = []
dev_size = 16384
pe_start = 2048
pe_count = 7
}
}

logical_volumes {

data {
id = "oooooo-pppp-qqqq-rrrr-ssss-tttt-uuuuuu"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1

segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = [
"pv0", 0
]
}
}
}

}
contents = "Text Format Volume Group"
version = 1
"""


def lvm_pv(text: str, size: int = 8 << 20) -> bytes:
    """A PV as LVM2 lays it out: label in sector 1, one metadata area at 4 KiB holding ``text``
    at 512 bytes into it, data from 1 MiB."""
    pv = bytearray(size)
    body = text.encode() + b"\0"
    header = struct.pack("<Q", 1) + b"\0" * 4 + struct.pack("<I", 32) + b"LVM2 001"
    pvh = b"h" * 32 + struct.pack("<Q", size) + struct.pack("<QQ", 1 << 20, 0) + bytes(16) \
        + struct.pack("<QQ", 4096, (1 << 20) - 4096) + bytes(16)
    label = b"LABELONE" + header + pvh
    pv[512:512 + len(label)] = label
    pv[512 + 16:512 + 20] = struct.pack("<I", lvm_crc(bytes(pv[512 + 20:1024])))
    mda = bytearray(512)
    mda[4:40] = b" LVM2 x[5A%r0N*>" + struct.pack("<IQQ", 1, 4096, (1 << 20) - 4096)
    mda[40:64] = struct.pack("<QQII", 512, len(body), lvm_crc(body), 0)
    mda[0:4] = struct.pack("<I", lvm_crc(bytes(mda[4:])))
    pv[4096:4608] = mda
    pv[4608:4608 + len(body)] = body
    return bytes(pv)


TOKENS = st.sampled_from(["{", "}", "[", "]", "=", "\"", "\n", ",", " ", "0", "-1", "99999999999999999999",
                          "../", "/", "..", "\x1b[2J", "pv0", "pv1", "segment1", "stripes", "extent_count",
                          "type", "\"striped\"", "\"thin\"", "logical_volumes", "physical_volumes", "\\", "#"])


@given(st.lists(st.tuples(st.integers(0, len(LVM_TEXT)), st.integers(0, 16), st.lists(TOKENS, max_size=6)),
                min_size=1, max_size=6))
@settings(max_examples=EXAMPLES)
def test_fuzz_lvm_metadata_text(edits):
    from repofs.guest.guestfs import GuestError, GuestGeneration
    text = LVM_TEXT
    for at, drop, insert in edits:
        at = min(at, len(text))
        text = text[:at] + "".join(insert) + text[at + drop:]
    g = GuestGeneration(BytesGeneration([BytesDisk(lvm_pv(text))]))
    with bounded():
        try:
            for v in g.volumes("d"):
                for part in v.name.split("/"):
                    assert part and part not in (".", "..") and "\0" not in part
                assert v.offset is None or 0 <= v.offset and v.offset + v.size <= 8 << 20
                try:
                    walk_guest(g, f"d/{v.name}")
                except GuestError:
                    pass
        except GuestError:
            pass


def test_the_lvm_seed_reads():
    from repofs.guest.guestfs import GuestGeneration
    g = GuestGeneration(BytesGeneration([BytesDisk(lvm_pv(LVM_TEXT))]))
    assert [(v.name, v.size) for v in g.volumes("d") if "/" in v.name] == [("fuzzvg/data", 2 * 2048 * 512)]


# --- sparse VMDK ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vmdk_seeds(tmp_path_factory) -> dict[str, Seed]:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    d = tmp_path_factory.mktemp("fuzz-vmdk")
    raw = d / "raw.img"
    with open(raw, "wb") as f:
        f.write(os.urandom(0) + bytes(range(256)) * 256)
        f.seek(3 << 20)
        f.write(b"grain" * 4000)
        f.truncate(4 << 20)
    seeds = {}
    for sub in ("monolithicSparse", "streamOptimized"):
        out = d / f"{sub}.vmdk"
        subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", f"subformat={sub}", str(raw), str(out)],
                       check=True, capture_output=True)
        data = out.read_bytes()
        regions = [(0, 512), (len(data) - 1536, 1536)]
        hdr = struct.unpack_from("<4sIIQQQQIQQQ", data)
        gd = hdr[10] if hdr[10] != 0xFFFFFFFFFFFFFFFF else struct.unpack_from("<Q", data, len(data) - 1024 + 56)[0]
        regions += [(gd * 512, 4096)]
        seeds[sub] = Seed(data, [(o, n) for o, n in regions if 0 <= o < len(data)])
    return seeds


@pytest.mark.parametrize("sub", ["monolithicSparse", "streamOptimized"])
def test_fuzz_sparse_vmdk(vmdk_seeds, sub, tmp_path):
    from repofs.vmdk.sparse import SparseVmdk, SparseVmdkError
    seed = vmdk_seeds[sub]
    path = tmp_path / "fuzz.vmdk"
    path.write_bytes(seed.data)
    v = SparseVmdk(str(path))
    assert v.capacity == 4 << 20 and v.allocated()
    v.close()

    @settings(max_examples=EXAMPLES)
    @given(mutations(seed))
    def case(patch):
        path.write_bytes(apply(seed, patch))
        with bounded():
            try:
                v = SparseVmdk(str(path))
            except SparseVmdkError:
                return
            try:
                runs = v.allocated()
                assert len(runs) <= len(seed.data)
                for start, length in runs[:8]:
                    assert len(v.read(start, min(length, 1 << 16))) <= 1 << 16
            except SparseVmdkError:
                pass
            finally:
                v.close()
    case()


# --- names ------------------------------------------------------------------------------------

@given(st.text())
@settings(max_examples=EXAMPLES * 10)
def test_fuzz_names(name):
    """Any guest name becomes one path component (itself when it already is one), and its
    shown form holds nothing a terminal acts on."""
    from repofs.guest.names import component, is_component, shown
    c = component(name)
    assert is_component(c) and os.path.basename(os.path.join("/top", c)) == c
    assert os.path.normpath(os.path.join("/top", c)).startswith("/top/")
    if is_component(name):
        assert c == name
    text = shown(name)
    assert text.isprintable() and all(not 0xD800 <= ord(ch) <= 0xDFFF for ch in text)


@pytest.mark.parametrize("size", [0, 1 << 40, (1 << 20) - 4096 + 1])
def test_lvm_metadata_that_does_not_fit_its_area_is_not_read(size):
    """A raw location of 0 bytes (dissect would read the whole PV), 1 TiB, or one byte past
    the area: the PV is listed as damaged, nothing is read for it."""
    from repofs.guest.guestfs import GuestGeneration
    pv = bytearray(lvm_pv(LVM_TEXT))
    pv[4096 + 48:4096 + 56] = struct.pack("<Q", size)
    g = GuestGeneration(BytesGeneration([BytesDisk(bytes(pv))]))
    with bounded():
        (whole,) = g.volumes("d")
    assert whole.fstype == "lvm2-damaged" and "does not fit" in whole.description
