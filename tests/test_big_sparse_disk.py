"""A 2 TiB sparse disk backs up, restores and mounts with the memory of a 1 GiB one.

The fixed index of a 2 TiB disk at 1 MiB chunks is 64 MiB of ids, nearly all holes on a
sparse disk; it is held in pages of written slots (format/idtable.py) and sealed and read in
pieces (format/indexobject.py), so no process holds it whole. Real CLI runs on the same
written extents placed on a 1 GiB and a 2 TiB sparse image: each process's peak resident
memory (VmHWM, read by the process itself as it exits, or from /proc while the mount runs)
may differ by a bound far below what the whole index costs (~150 MiB before: docs/
performance.md, "Big sparse disks"); the restored file and the mount's reads are compared
with the image byte for byte over the data runs, holes read as zeros.

The model below the processes: the id table's pages of holes are never held, an index
decoded from pieces of any size is the index encoded, and a damaged one is refused the same
way whole or in pieces.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from format.errors import CorruptObject
from format.fixedindex import Copies, FixedIndex, IndexDecoder
from format.idtable import HOLE, PAGE_BYTES, PAGE_SLOTS, IdTable
from format.repository import Repository, index_name

from fixtures_index import slot_by_slot_changes
from fixtures_mount import end_mount, is_mounted, needs_root_tools
from fixtures_repo import REPOFS, CLI, cli_env

MiB = 1 << 20
EXTENT = 4 * MiB
EXTENTS = 8
SMALL, BIG = 1 << 30, 2 << 40
# Allowed growth of a process's peak memory from the 1 GiB disk to the 2 TiB one (the same
# data): allocator noise and the 2 TiB restore's larger sparse-file metadata, far below the
# 64 MiB the id table alone would take were it held whole.
GROWTH = 16 * MiB

# Runs the CLI and writes the process's peak resident memory on its last line of stderr.
_PEAK = ("import atexit, runpy, sys\n"
         "def peak():\n"
         "    with open('/proc/self/status') as f:\n"
         "        for line in f:\n"
         "            if line.startswith('VmHWM:'):\n"
         "                sys.stderr.write('peak-rss-kib ' + line.split()[1] + '\\n')\n"
         "atexit.register(peak)\n"
         "sys.argv[0] = 'repofs'\n"
         "runpy.run_module('repofs.cli', run_name='__main__', alter_sys=True)\n")


def _sparse_image(path: Path, size: int, seed: int = 3) -> list[int]:
    """``EXTENTS`` extents of 4 MiB of random bytes at random places; their offsets."""
    rng = random.Random(seed)
    offsets = sorted(k * EXTENT for k in rng.sample(range(size // EXTENT), EXTENTS))
    with open(path, "wb") as f:
        f.truncate(size)
        for off in offsets:
            f.seek(off)
            f.write(rng.randbytes(EXTENT))
    return offsets


def _data_runs(path: Path) -> list[tuple[int, int]]:
    runs = []
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:         # ENXIO: no data past pos
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, pos))
    return runs


def _assert_same_sparse(a: Path, b: Path) -> None:
    """Same size, and the same bytes over the union of both files' data runs (the rest of
    both reads as zeros)."""
    assert a.stat().st_size == b.stat().st_size
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(_data_runs(a) + _data_runs(b)):
            for pos in range(start, end, 8 * MiB):
                n = min(8 * MiB, end - pos)
                assert os.pread(fa.fileno(), n, pos) == os.pread(fb.fileno(), n, pos), f"differ near {pos}"


def _peak_run(cli: CLI, *args: str) -> int:
    """Run ``repofs ARGS``; its peak resident memory in bytes."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, *args], env=cli.env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1].split()
    assert last[0] == "peak-rss-kib", proc.stderr
    return int(last[1]) * 1024


def _peak_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _mount_peak(cli: CLI, mnt: Path, image: Path, offsets: list[int]) -> int:
    """Mount, read every extent and some holes through the flat disk file and compare them;
    the mount process's peak resident memory."""
    mnt.mkdir()
    proc = subprocess.Popen([*REPOFS, "mount", "-f", str(cli.repo), str(mnt)], env=cli.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        flat = mnt / "vm" / "latest" / "disk-flat.vmdk"
        for _ in range(3000):
            if proc.poll() is not None or (is_mounted(mnt) and flat.exists()):
                break
            time.sleep(0.02)
        assert proc.poll() is None and flat.exists(), "the mount did not come up"
        size = image.stat().st_size
        rng = random.Random(5)
        holes = [k * EXTENT for k in (rng.randrange(size // EXTENT) for _ in range(32))
                 if k * EXTENT not in offsets]
        with open(image, "rb") as src, open(flat, "rb") as got:
            assert os.fstat(got.fileno()).st_size == size
            for off in offsets:
                assert os.pread(got.fileno(), EXTENT, off) == os.pread(src.fileno(), EXTENT, off)
            for off in holes:
                assert os.pread(got.fileno(), 65536, off) == bytes(65536)
        return _peak_of(proc.pid)
    finally:
        end_mount(mnt, proc)


def _one_size(tmp: Path, size: int, mount: bool) -> dict[str, int]:
    tmp.mkdir()
    cli = CLI(tmp / "repo", cli_env(tmp, tmp / "repo"))
    cli.run("init")
    image = tmp / "disk.img"
    offsets = _sparse_image(image, size)
    peaks = {"backup": _peak_run(cli, "backup", f"file:{image}", "--vm", "vm")}
    peaks["restore"] = _peak_run(cli, "restore", "vm:vm", "--to-dir", str(tmp / "out"))
    _assert_same_sparse(image, tmp / "out" / "disk.raw")
    (tmp / "out" / "disk.raw").unlink()
    if mount:
        peaks["mount"] = _mount_peak(cli, tmp / "mnt", image, offsets)
    return peaks


def test_a_2_tib_sparse_disk_backs_up_restores_and_mounts_in_the_memory_of_a_1_gib_one(tmp_path: Path) -> None:
    mount = os.geteuid() == 0 and os.path.exists("/dev/fuse")
    if mount:
        needs_root_tools("fusermount3")
    small = _one_size(tmp_path / "small", SMALL, mount)
    big = _one_size(tmp_path / "big", BIG, mount)
    for step in small:
        assert big[step] - small[step] < GROWTH, \
            f"{step}: {small[step] / MiB:.0f} MiB at 1 GiB, {big[step] / MiB:.0f} MiB at 2 TiB"


# -- the model -----------------------------------------------------------------------------

def test_pages_of_holes_are_not_held() -> None:
    table = IdTable((2 << 40) // MiB)
    assert table.held_bytes == 0
    table.set(5, HOLE)
    assert table.held_bytes == 0
    cid = bytes(range(32))
    table.set(table.count - 1, cid)
    table.set(PAGE_SLOTS * 100 + 7, cid)
    assert table.held_bytes == 2 * PAGE_BYTES
    assert list(table.stored()) == [(PAGE_SLOTS * 100 + 7, cid), (table.count - 1, cid)]
    assert table.get(PAGE_SLOTS * 100 + 6) == HOLE and table.get(table.count - 1) == cid
    table.set(table.count - 1, HOLE)
    table.compact()
    assert table.held_bytes == PAGE_BYTES
    with pytest.raises(IndexError):
        table.get(table.count)


def _sample_index(rng: random.Random, count: int, chunk: int = 64 << 10) -> FixedIndex:
    index = FixedIndex.empty(count * chunk - 100, chunk)
    for n in rng.sample(range(count), min(count, 40)):
        index.set(n, rng.randbytes(32))
    for n in sorted(rng.sample(range(count), min(count, 5))):
        index.set_pieces(n, [(4096, 512, rng.randbytes(32)), (0, 100, None)])
    index.copies = Copies([(0, 5000), (chunk * 2, 300)], [rng.randbytes(32)], chunk)
    return index


@pytest.mark.parametrize("seed", range(6))
def test_an_index_decoded_from_pieces_of_any_size_is_the_index_encoded(seed: int) -> None:
    rng = random.Random(seed)
    index = _sample_index(rng, rng.choice([3, PAGE_SLOTS, PAGE_SLOTS + 1, 5 * PAGE_SLOTS - 3]))
    plain = index.encode()
    length, parts = index.encoding()
    assert length == len(plain) and b"".join(parts) == plain
    seen = bytearray()
    decoder = IndexDecoder("i", on_ids=seen.extend)
    pos = 0
    while pos < len(plain):
        step = rng.choice([1, 7, 31, 33, 4096, PAGE_BYTES + 5, 1 << 20])
        decoder.feed(plain[pos:pos + step])
        pos += step
    back = decoder.finish()
    assert back.encode() == plain
    assert (back.ids, back.patches, back.copies.ranges, back.copies.ids) == \
        (index.ids, index.patches, index.copies.ranges, index.copies.ids)
    assert bytes(seen) == plain[24:24 + 32 * index.count]
    assert list(back.occupied()) == sorted({n for n, _ in index.stored()} | set(index.patches))


@pytest.mark.parametrize("cut", ["short header", "short ids", "trailing", "flagless tail"])
def test_a_damaged_index_is_refused_whole_and_in_pieces(cut: str) -> None:
    index = _sample_index(random.Random(1), PAGE_SLOTS + 3)
    plain = index.encode()
    bare = FixedIndex(index.capacity, index.chunk_size, index.ids).encode()
    bad = {"short header": plain[:20], "short ids": plain[:24 + 32 * 10],
           "trailing": plain + b"\0", "flagless tail": bare + b"\0" * 8}[cut]
    with pytest.raises(CorruptObject):
        FixedIndex.decode(bad, "i")
    decoder = IndexDecoder("i")
    with pytest.raises(CorruptObject):
        for pos in range(0, len(bad), 1000):
            decoder.feed(bad[pos:pos + 1000])
        decoder.finish()


@pytest.mark.parametrize("encrypted", [True, False])
def test_the_sealed_index_of_a_2_tib_sparse_disk_is_small_and_reads_back(tmp_path: Path, encrypted: bool) -> None:
    repo = Repository.init(tmp_path / "repo", b"pw" if encrypted else None, encrypted=encrypted)
    index = FixedIndex.empty(BIG, repo.chunk_size)
    rng = random.Random(9)
    written = rng.sample(range(index.count), 300)
    for n in written:
        index.set(n, rng.randbytes(32))
    iid = repo.put_index(index)
    assert repo.backend.size(index_name(iid)) < 300 * 32 + 64 * 1024   # holes compress away
    assert iid == repo.sealer.object_id(index.encode()).hex()          # named by its plaintext
    back = repo.get_index(iid)
    assert back.ids == index.ids and back.ids.held_bytes <= len(written) * PAGE_BYTES
    assert [n for n, _ in back.stored()] == sorted(written)


@pytest.mark.parametrize("seed", range(4))
def test_changed_ranges_skip_equal_pages_and_miss_no_change(seed: int) -> None:
    """``format.diff`` passes over pages equal on both sides: what it reports is what a slot
    by slot comparison of the keys reports, pieces and page edges included."""
    from format.diff import changed_ranges
    rng = random.Random(seed)
    count = rng.choice([PAGE_SLOTS - 1, 3 * PAGE_SLOTS, 7 * PAGE_SLOTS + 5])
    old = _sample_index(rng, count)
    new = old.copy()
    edges = [n for k in range(1, count // PAGE_SLOTS + 1) for n in (k * PAGE_SLOTS - 1, k * PAGE_SLOTS)]
    for n in rng.sample([n for n in edges if n < count] + list(range(count)), 12):
        choice = rng.random()
        if choice < 0.4:
            new.set(n, rng.randbytes(32))
        elif choice < 0.7:
            new.set_pieces(n, [(0, 64, rng.randbytes(32))])
        else:
            new.set(n, None)
    assert changed_ranges(old, new) == slot_by_slot_changes(old, new)
    assert changed_ranges(old, old.copy()) == []


_VALID = _sample_index(random.Random(11), PAGE_SLOTS + 9).encode()


def _outcome(decode) -> object:
    try:
        index = decode()
    except CorruptObject:
        return "corrupt"
    return index.encode()


@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255), st.integers(0, 8),
       st.lists(st.integers(1, 3 * PAGE_BYTES), min_size=1, max_size=8), st.integers(-40, 40))
@settings(max_examples=200)
def test_damaged_bytes_decode_alike_whole_and_in_pieces(where, xor, width, steps, resize) -> None:
    """Any damage (bytes flipped, the plaintext cut or padded): the decoder fed in pieces
    gives what a decoder fed at once gives — the same index, or CorruptObject."""
    data = bytearray(_VALID)
    for i in range(where, min(len(data), where + width + 1)):
        data[i] ^= xor
    data = data[:len(data) + resize] if resize < 0 else data + bytes(resize)

    def in_pieces() -> FixedIndex:
        decoder = IndexDecoder("i")
        pos, k = 0, 0
        while pos < len(data):
            decoder.feed(data[pos:pos + steps[k % len(steps)]])
            pos += steps[k % len(steps)]
            k += 1
        return decoder.finish()
    assert _outcome(in_pieces) == _outcome(lambda: FixedIndex.decode(bytes(data), "i"))


def test_an_id_table_behaves_as_the_bytes_it_encodes_to() -> None:
    a, b = bytes([1]) * 32, bytes([2]) * 32
    table = IdTable.from_bytes(a + HOLE + a)
    assert table == a + HOLE + a and table == bytearray(a + HOLE + a) and table != a + a + HOLE
    assert bytes(table) == a + HOLE + a and len(table) == 96
    assert a in table and HOLE in table and b not in table and a[:31] not in table
    assert HOLE not in IdTable.from_bytes(a + b) and IdTable(2) == bytes(64)
