"""The restore's parts without vCenter: the disk writer through the VDDK stand-in (local mode),
the piece arithmetic, and the .vmx rewrite of an import. Fakes, not mocks: an in-memory disk
reader with the protocol of restore/vm/generation.py."""
from __future__ import annotations

import random

import pytest

import vddk
from fixtures_vddk import Standin, make_flat_disk
from restore.vm.diskwriter import DiskJob, _interleave, pieces, write_disks
from restore.vm.errors import DiskWriteFailed
from restore.vm.vmximport import prepare_vmx

MiB = 1 << 20


class MemoryDisk:
    """A disk reader over bytes; ``extents`` as given (everything else reads as zeros)."""

    def __init__(self, label: str, data: bytes, extents: list[tuple[int, int]], chunk_size: int = MiB):
        self.label = label
        self.capacity = len(data)
        self.chunk_size = chunk_size
        self._data = data
        self._extents = extents
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return self._data[offset:offset + size]

    def extents(self) -> list[tuple[int, int]]:
        return list(self._extents)


def test_zero_blocks_inside_a_piece_are_not_written(vddk_lib: vddk.Library, standin: Standin) -> None:
    block = 64 << 10
    data = bytearray(4 * MiB)
    data[0:block] = b"a" * block              # block 0
    data[3 * block:5 * block] = b"b" * 2 * block   # blocks 3-4: one run
    reader = MemoryDisk("scsi0-0", bytes(data), [(0, 4 * MiB)], chunk_size=block)
    target = make_flat_disk(standin.datastore / "z.vmdk", 4 * MiB)
    with vddk_lib.connect(None, read_only=False) as conn:
        [done] = write_disks(conn, [DiskJob("scsi0-0", str(target), reader)])
    assert target.with_name("z-flat.vmdk").read_bytes() == bytes(data)
    assert sorted((int(w[2]), int(w[3])) for w in standin.stat_lines("write")) == [(0, block), (3 * block, 2 * block)]
    assert done.written_bytes == 3 * block and done.skipped_zero_bytes == 4 * MiB - 3 * block


def test_pieces_are_aligned_whole_sectors_within_the_disk() -> None:
    got = list(pieces([(100, 3 * MiB), (5 * MiB, 10)], MiB, 6 * MiB))
    assert got == [(0, MiB), (MiB, MiB), (2 * MiB, MiB), (3 * MiB, 512), (5 * MiB, 512)]
    # A tail that is not whole sectors is widened, never past the next sector.
    assert list(pieces([(0, 1000)], MiB, 1000)) == [(0, 1024)]


def test_writer_skips_holes_and_zero_pieces_and_writes_the_rest(vddk_lib: vddk.Library, standin: Standin) -> None:
    rng = random.Random(3)
    size = 8 * MiB
    data = bytearray(size)
    data[MiB:MiB + 300_000] = rng.randbytes(300_000)
    data[6 * MiB:7 * MiB] = rng.randbytes(MiB)
    # Extents cover a zero megabyte too (as from a folder that cannot tell holes apart).
    reader = MemoryDisk("scsi0-0", bytes(data), [(0, 2 * MiB), (4 * MiB, 3 * MiB)])
    target = make_flat_disk(standin.datastore / "t.vmdk", size)
    with vddk_lib.connect(None, read_only=False) as conn:
        [done] = write_disks(conn, [DiskJob("scsi0-0", str(target), reader)], threads=3)
    flat = target.with_name("t-flat.vmdk").read_bytes()
    assert flat == bytes(data)
    assert done.data_bytes == 5 * MiB and done.written_bytes == 2 * MiB  # MiB 1 and 6
    assert done.skipped_zero_bytes == 3 * MiB
    assert all(o < 2 * MiB or 4 * MiB <= o < 7 * MiB for o, _ in reader.reads)  # holes not read
    writes = standin.stat_lines("write")
    assert sorted(int(w[2]) for w in writes) == [MiB, 6 * MiB]


def test_writer_failure_names_the_disk_and_offset(vddk_libdir, standin: Standin) -> None:
    standin.configure(fail_write_after=1)
    data = random.Random(4).randbytes(8 * MiB)
    reader = MemoryDisk("scsi0-1", data, [(0, 8 * MiB)])
    target = make_flat_disk(standin.datastore / "f.vmdk", 8 * MiB)
    with vddk.open_library(vddk_libdir) as lib, lib.connect(None, read_only=False) as conn:
        with pytest.raises(DiskWriteFailed) as info:
            write_disks(conn, [DiskJob("scsi0-1", str(target), reader)], threads=1)
    e = info.value
    # Pieces of 4 MiB (the 1 MiB blocks of a piece go in one request): the second one fails.
    assert e.step == "write the disks" and e.label == "scsi0-1" and e.offset == 4 * MiB
    assert "scsi0-1" in str(e) and "offset 4194304" in str(e)


def test_writer_runs_disks_side_by_side(vddk_lib: vddk.Library, standin: Standin) -> None:
    rng = random.Random(5)
    jobs, expected = [], {}
    with vddk_lib.connect(None, read_only=False) as conn:
        for i in range(3):
            data = rng.randbytes(12 * MiB)
            target = make_flat_disk(standin.datastore / f"d{i}.vmdk", 12 * MiB)
            jobs.append(DiskJob(f"scsi0-{i}", str(target), MemoryDisk(f"scsi0-{i}", data, [(0, 12 * MiB)])))
            expected[target] = data
        progress: list[tuple[str, int, int]] = []
        write_disks(conn, jobs, threads=4, progress=lambda *a: progress.append(a))
    for target, data in expected.items():
        assert target.with_name(target.name[:-5] + "-flat.vmdk").read_bytes() == data
    assert {(label, done) for label, done, total in progress if done == total} == \
        {(f"scsi0-{i}", 12 * MiB) for i in range(3)}
    # The pieces of all disks are handed out round-robin (whatever the threads then do).
    assert list(_interleave([[1, 2, 3], [4, 5], [6]])) == [1, 4, 6, 2, 5, 3]


def test_import_vmx_loses_disks_nics_and_identity() -> None:
    saved = "\n".join([
        '# written by someone', '.encoding = "UTF-8"', 'displayName = "web01"', 'memSize = "4096"',
        'nvram = "web01.nvram"', 'scsi0.present = "TRUE"', 'scsi0.virtualDev = "pvscsi"',
        'scsi0:0.fileName = "web01.vmdk"', 'scsi0:0.present = "TRUE"', 'scsi0:0.mode = "persistent"',
        'sata0:1.fileName = "/dev/cdrom"', 'sata0:1.deviceType = "cdrom-raw"',
        'ethernet0.networkName = "VM Network"', 'ethernet0.generatedAddress = "00:50:56:01:02:03"',
        'uuid.bios = "42 01"', 'vc.uuid = "52 02"', 'sched.swap.derivedName = "/vmfs/x.vswp"'])
    out = prepare_vmx(saved, "web01-copy", recover_identity=False)
    assert 'displayName = "web01-copy"' in out and 'nvram = "web01-copy.nvram"' in out
    assert 'scsi0.virtualDev = "pvscsi"' in out and 'memSize = "4096"' in out
    assert "scsi0:0" not in out and "ethernet0" not in out and "uuid.bios" not in out
    assert "vc.uuid" not in out and "sched.swap" not in out
    assert 'sata0:1.deviceType = "cdrom-raw"' in out  # not a disk: kept
    kept = prepare_vmx(saved, "web01", recover_identity=True)
    assert 'uuid.bios = "42 01"' in kept and 'vc.uuid = "52 02"' in kept
