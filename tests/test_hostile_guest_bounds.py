"""A hostile guest cannot exhaust the backup host's memory or time.

Each structure is crafted on a real ``mkfs.ext4`` image with ``debugfs -w`` or by patching
bytes at offsets ``debugfs`` reports, or is a hand-made sparse VMDK header; the image is
backed up, and the command that reads it runs in a child process under an address-space
limit (``RLIMIT_AS``) and a timeout: it ends with one ``repofs: error:`` line and the
documented exit code, or with the bounded answer.
"""
from __future__ import annotations

import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_images import PASSPHRASE, ROOT, _run, _tool

MEMORY = 1 << 30            # address space of the reading process
TIMEOUT = 60

EXTENT_MAGIC = 0xF30A
PER_BLOCK = (4096 - 12) // 12      # 340 entries in a 4 KiB extent node


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def debugfs(image: Path, *commands: str, write: bool = False) -> str:
    args = ["debugfs"] + (["-w"] if write else [])
    out = []
    for c in commands:
        out.append(_run(*args, "-R", c, str(image)).stdout.decode())
    return "".join(out)


def inode_at(image: Path, path: str) -> int:
    """Byte offset of ``path``'s inode in the image."""
    text = debugfs(image, f"imap {path}")
    block, offset = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", text).groups()
    return int(block) * 4096 + int(offset, 16)


def block_of(image: Path, path: str) -> int:
    return int(debugfs(image, f"bmap {path} 0").strip())


def extent_node(depth: int, entries: list[bytes], room: int) -> bytes:
    return struct.pack("<HHHH4x", EXTENT_MAGIC, len(entries), room, depth) + b"".join(entries)


def index(logical: int, block: int) -> bytes:
    return struct.pack("<IIH2x", logical, block & 0xFFFFFFFF, block >> 32)


def leaf(logical: int, block: int) -> bytes:
    return struct.pack("<IHHI", logical, 1, block >> 32, block & 0xFFFFFFFF)


def build_bombs(image: Path, work: Path) -> None:
    """ext4 (4 KiB blocks) straight on the disk, holding:
    ``/bomb``: an extent tree of depth 5 whose every index node has 340 entries pointing at
    the one node of the next level (five data blocks of ``/c1``..``/c5`` rewritten) — 4 x
    340^5 = 1.8 * 10^13 extents if walked; ``/huge``: a file claiming 1 PiB; ``/bigdir``: a
    directory of one block claiming 1.5 GiB; ``/loopdir/sub/back``: a hard link to
    ``/loopdir`` (a directory cycle)."""
    src = work / "src"
    (src / "bigdir").mkdir(parents=True)
    (src / "loopdir" / "sub").mkdir(parents=True)
    for i in range(1, 6):
        (src / f"c{i}").write_bytes(bytes([i]) * 4096)
    (src / "bomb").write_bytes(b"bomb\n")
    (src / "huge").write_bytes(b"huge\n")
    for n in ("a", "b", "c"):
        (src / "bigdir" / n).write_bytes(n.encode())
    (src / "loopdir" / "sub" / "y").write_bytes(b"y\n")
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    _run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "hash_seed=5e1f0c2a-7d3b-4e59-9a61-0c2b3d4e5f60",
         "-U", "5e1f0c2a-7d3b-4e59-9a61-0c2b3d4e5f60", "-d", str(src), str(image))
    # debugfs first: once the inode is patched its checksum no longer matches, and debugfs
    # refuses it (repofs does not need checksums to read)
    debugfs(image, "sif /bomb size 0x10000000000", "sif /huge size 0x4000000000000",
            "sif /bigdir size 0x60000000", "ln /loopdir /loopdir/sub/back", write=True)
    levels = [block_of(image, f"/c{i}") for i in range(1, 6)]
    bomb = inode_at(image, "/bomb")
    with open(image, "r+b") as f:
        for depth, (block, below) in enumerate(zip(levels, levels[1:] + [None], strict=True), start=0):
            level = 4 - depth           # c1 is depth 4, ..., c5 is the leaf (depth 0)
            if below is None:
                node = extent_node(0, [leaf(i, levels[0]) for i in range(PER_BLOCK)], PER_BLOCK)
            else:
                node = extent_node(level, [index(i, below) for i in range(PER_BLOCK)], PER_BLOCK)
            f.seek(block * 4096)
            f.write(node.ljust(4096, b"\0"))
        f.seek(bomb + 40)           # i_block: the root, depth 5, four entries
        f.write(extent_node(5, [index(i, levels[0]) for i in range(4)], 4))


def sparse_header(capacity: int, grain: int = 128, gtes: int = 512, gd: int = 1, flags: int = 3) -> bytes:
    head = struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", 1, flags, capacity, grain, 0, 0, gtes, 0, gd, 0, 0,
                       b"\n \r\n", 0)
    return head.ljust(512, b"\0")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    _tool("debugfs")
    from format.repository import Repository
    from repofs.ingest.backup import backup
    from repofs.ingest.sources import LocalImage

    d = tmp_path_factory.mktemp("bombs")
    image = d / "bombs.img"
    work = d / "work"
    work.mkdir()
    build_bombs(image, work)
    repo, pw = d / "repo", d / "pw"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)                 # a password file readable by others is warned about
    r = Repository.init(repo, PASSPHRASE.encode(), kdf={"name": "argon2id", "time_cost": 1,
                                                      "memory_kib": 8 * 1024, "parallelism": 1})
    source = LocalImage.open(str(image), label="disk0")
    try:
        backup(r, "bombs", [source])
    finally:
        source.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOFS_")}
    env.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(pw), PYTHONPATH=str(ROOT),
               PYTHONWARNINGS="error", LANG="C.UTF-8", TZ="UTC")
    return env


def limited(env, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``repofs ARGS`` under the memory limit and the timeout."""
    return subprocess.run([sys.executable, "-m", "repofs.cli", *args], env=env, capture_output=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, preexec_fn=_limited, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, err
    assert err.startswith("repofs: error: ") and err.count("\n") == 1, err
    assert "MemoryError" not in err and "Traceback" not in err and "RecursionError" not in err
    for w in words:
        assert w in err, err
    return err


def test_the_limit_leaves_room_for_an_honest_listing(hostile):
    proc = limited(hostile, "files", "ls", "vm:bombs:disk0/whole")
    assert proc.returncode == 0, proc.stderr.decode()
    assert {"bomb", "huge", "bigdir", "loopdir"} <= set(proc.stdout.decode().split())


@pytest.mark.slow
def test_extent_tree_fan_out_is_refused(hostile, tmp_path):
    proc = limited(hostile, "files", "cat", "vm:bombs:disk0/whole/bomb")
    one_line_error(proc, 1, "extent tree")
    proc = limited(hostile, "files", "get", "vm:bombs:disk0/whole/bomb", str(tmp_path / "out"))
    one_line_error(proc, 1, "extent tree")
    assert not (tmp_path / "out").exists()                 # nothing half-written


def test_a_file_claiming_a_pebibyte_is_refused(hostile, tmp_path):
    proc = limited(hostile, "files", "get", "vm:bombs:disk0/whole/huge", str(tmp_path / "out"))
    one_line_error(proc, 1, "1125899906842624 bytes")
    assert not (tmp_path / "out").exists()


def test_a_directory_claiming_gibibytes_lists_in_bounded_memory(hostile):
    proc = limited(hostile, "files", "ls", "vm:bombs:disk0/whole/bigdir")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["a", "b", "c"]


def test_a_directory_cycle_is_extracted_once(hostile, tmp_path):
    proc = limited(hostile, "files", "get", "vm:bombs:disk0/whole/loopdir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "out" / "sub" / "y").read_bytes() == b"y\n"
    assert not (tmp_path / "out" / "sub" / "back").exists()
    assert "skipped 1" in proc.stderr.decode()


@pytest.mark.parametrize("name, content, words", [
    # 1 KiB: a header claiming 2^40 sectors (before: a grain list of 24 GiB)
    ("capacity", sparse_header(1 << 40, grain=8, gtes=512).ljust(1024, b"\0"), ["capacity"]),
    # within the capacity bound, but the grain directory it implies is not in the file
    ("directory", sparse_header(1 << 36, grain=8).ljust(1024, b"\0"), ["grain directory"]),
    # every grain directory entry names the same grain table
    ("shared", sparse_header(4 << 20, grain=8).ljust(1024, b"\0")[:512] + struct.pack("<1024I", *[2] * 1024)
     + bytes(4096), ["overlap"]),
    # a grain table entry past the end of the file
    ("past-end", sparse_header(8 * 512, grain=8) + struct.pack("<I", 2) + bytes(508)
     + struct.pack("<512I", *[10 ** 6] * 512), ["past the end"]),
    # streamOptimized, grain directory at the end, in a file too short for a footer
    ("footer", sparse_header(1 << 20, gd=0xFFFFFFFFFFFFFFFF)[:600], ["footer"]),
    ("grain", sparse_header(1 << 20, grain=0), ["malformed"]),
])
def test_malformed_sparse_vmdk_is_a_bad_source(hostile, tmp_path, name, content, words):
    vmdk = tmp_path / f"{name}.vmdk"
    vmdk.write_bytes(content)
    proc = limited(hostile, "backup", f"file:{vmdk}", "--vm", f"sp-{name}")
    one_line_error(proc, 9, *words)


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f
                if prefix in re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])]


@pytest.mark.slow
def test_the_mount_files_folder_answers_errnos_and_stays_up(hostile, tmp_path):
    """The same image through the repository mount's files/ folder: the bomb and the huge
    file fail with EIO, the big directory lists, the cycle is just a path; the mount lives on."""
    if os.geteuid() != 0:
        pytest.skip("FUSE mounts need root here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run([sys.executable, "-m", "repofs.cli", "mount", str(mnt)], env=hostile, check=True,
                   capture_output=True, timeout=TIMEOUT)
    try:
        vol = mnt / "bombs" / "latest" / "files" / "disk0" / "whole"
        for name in ("bomb", "huge"):
            with pytest.raises(OSError) as e:
                (vol / name).read_bytes()
            assert e.value.errno == 5
        assert sorted(os.listdir(vol / "bigdir")) == ["a", "b", "c"]
        assert (vol / "loopdir" / "sub" / "back" / "sub" / "y").read_bytes() == b"y\n"
        assert "bomb" in os.listdir(vol)                       # still serving
    finally:
        subprocess.run([sys.executable, "-m", "repofs.cli", "umount", str(mnt)], env=hostile,
                       capture_output=True, timeout=TIMEOUT)
    assert _mounts_under(str(tmp_path)) == []


@pytest.mark.slow
def test_files_mount_of_the_image_leaves_the_host_untouched(hostile, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    target = tmp_path / "host" / "mnt"
    target.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "repofs.cli", "files", "mount", "vm:bombs", str(target)],
                          env=hostile, capture_output=True, timeout=TIMEOUT)
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        assert os.listdir(tmp_path / "host") == ["mnt"]
        mounted = _mounts_under(str(tmp_path))
        assert mounted and all(m.startswith(str(target)) for m in mounted)
        with pytest.raises(OSError):                          # the kernel refuses the bomb too
            (target / "disk0" / "whole" / "bomb").read_bytes()
    finally:
        subprocess.run([sys.executable, "-m", "repofs.cli", "files", "umount", str(target)], env=hostile,
                       capture_output=True, timeout=TIMEOUT)
    assert _mounts_under(str(tmp_path)) == []
