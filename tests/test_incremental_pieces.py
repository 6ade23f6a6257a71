"""Incrementals with a change list store only the changed pieces of a chunk, laid over the
previous generation's chunk; every generation still reads back byte for byte — restored to a
file, through the mount — and damage to a piece is found and named."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from fixtures_mount import MountSource, mounted
from fixtures_repo import CLI

MiB = 1 << 20
SIZE = 8 * MiB + 5000          # the last chunk is short


def stored_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def chunk_files(repo: Path) -> set[Path]:
    return {p for p in (repo / "chunks").rglob("*") if p.is_file()}


class Disk:
    """An image, its change lists and backups, and a copy of every version backed up."""

    def __init__(self, cli: CLI, tmp: Path):
        self.cli, self.tmp = cli, tmp
        self.rng = random.Random(21)
        self.img = tmp / "disk.img"
        data = bytearray(self.rng.randbytes(SIZE))
        data[6 * MiB:8 * MiB] = bytes(2 * MiB)  # chunks 6 and 7 are holes
        self.img.write_bytes(bytes(data))
        self.versions: dict[str, Path] = {}

    def backup(self, changes: list[tuple[int, bytes]] | None = None) -> dict:
        args = ["backup", f"file:{self.img}", "--vm", "pc", "--json"]
        if changes is not None:
            with open(self.img, "r+b") as f:
                for off, data in changes:
                    f.seek(off)
                    f.write(data)
            cl = self.tmp / "changes.json"
            cl.write_text(json.dumps([[off, len(data)] for off, data in changes]))
            args += ["--changed-extents", str(cl)]
        report = json.loads(self.cli.run(*args).stdout)
        keep = self.tmp / f"v{len(self.versions)}.img"
        shutil.copyfile(self.img, keep)
        self.versions[report["generation"]] = keep
        return report["disks"][0]

    def restores_exactly(self) -> None:
        for gen, want in self.versions.items():
            out = self.tmp / f"out-{gen}"
            self.cli.run("restore", "vm:pc", "--to-dir", str(out), "--generation", gen)
            assert (out / "disk.raw").read_bytes() == want.read_bytes(), gen
            shutil.rmtree(out)


@pytest.mark.slow
def test_change_list_stores_pieces_and_every_generation_reads_back(cli: CLI, tmp_path: Path) -> None:
    disk = Disk(cli, tmp_path)
    rnd = disk.rng.randbytes
    first = disk.backup()
    assert first["new_chunks"] == 7 and first["patched_slots"] == 0

    before = stored_bytes(cli.repo)
    second = disk.backup([
        (MiB + 8192, rnd(12000)),          # inside chunk 1: read as 12 KiB (4 KiB-aligned)
        (3 * MiB - 4096, rnd(8192)),       # across chunks 2 and 3: two pieces of 4 KiB
        (6 * MiB + 65536, rnd(4096)),      # into the hole: a piece over zeros
        (4 * MiB, bytes(16384)),           # zeros over data: a zero piece, nothing stored
        (8 * MiB, rnd(5000)),              # all of the short last chunk: stored whole
        (7 * MiB + 8192, bytes(4096)),     # zeros over the zeros of a hole: it stays a hole
    ])
    assert second["mode"] == "changed"
    assert second["read_bytes"] == 12288 + 8192 + 4096 + 16384 + 5000 + 4096
    assert second["patched_slots"] == 5 and second["new_chunks"] == 5
    assert second["data_bytes"] == first["data_bytes"] + MiB == 7 * MiB + 5000  # chunk 7: a hole
    # what the generation costs: the changed bytes (random, so incompressible), an index and a
    # manifest — not the 6 MiB of chunks around them
    assert stored_bytes(cli.repo) - before < 46000 + 24 * 1024

    before = stored_bytes(cli.repo)
    third = disk.backup([
        (MiB, rnd(65536)),                 # covers chunk 1's earlier piece: that one is dropped
        (MiB + 100000, rnd(4096)),         # unaligned: read as [98304, 106496)
        (5 * MiB + 4096, rnd(600 * 1024)),  # most of chunk 5: still a piece, not the whole chunk
    ])
    assert third["read_bytes"] == 65536 + 8192 + 600 * 1024
    assert third["patched_slots"] == 2 and third["new_chunks"] == 3
    # the changed bytes and no others: the 420 KiB of chunk 5 around its piece are not stored again
    assert stored_bytes(cli.repo) - before < 65536 + 8192 + 600 * 1024 + 24 * 1024

    fourth = disk.backup([
        (5 * MiB, rnd(500 * 1024)),        # with the 600 KiB piece it keeps: more than chunk 5
        (2 * MiB, rnd(MiB)),               # all of chunk 2: its own new base
    ])
    assert fourth["read_bytes"] == 2 * MiB
    assert fourth["patched_slots"] == 0 and fourth["new_chunks"] == 2

    fifth = disk.backup()                  # no change list: every chunk read, whole again
    assert fifth["patched_slots"] == 0 and fifth["mode"] == "full"

    disk.restores_exactly()
    assert cli.run("check", "--read-data").returncode == 0
    # the restored file keeps the zeros around a piece over a hole as a hole
    cli.run("restore", "vm:pc", "--to-dir", str(tmp_path / "sparse"), "--generation", list(disk.versions)[1])
    fd = os.open(tmp_path / "sparse" / "disk.raw", os.O_RDONLY)
    try:
        assert os.lseek(fd, 6 * MiB, os.SEEK_DATA) == 6 * MiB + 65536
        assert os.lseek(fd, 6 * MiB + 65536, os.SEEK_HOLE) == 6 * MiB + 65536 + 4096
    finally:
        os.close(fd)

    # the mount assembles the same bytes, at any offset
    gens = list(disk.versions)
    source = MountSource(disk.img, {}, cli.repo, gens[2], tmp_path / "passphrase", tmp_path)
    with mounted(source, tmp_path / "mnt") as m:
        for gen in gens[1:3]:
            want = disk.versions[gen].read_bytes()
            flat = m.path / "pc" / gen / "disk-flat.vmdk"
            assert flat.read_bytes() == want
            with open(flat, "rb") as f:
                for off, n in [(MiB + 8000, 20000), (3 * MiB - 10, 20), (6 * MiB + 65530, 100),
                               (SIZE - 7000, 9000)]:
                    f.seek(off)
                    assert f.read(n) == want[off:off + n], (gen, off)


@pytest.mark.slow
def test_a_damaged_piece_is_named_and_refused(cli: CLI, tmp_path: Path) -> None:
    disk = Disk(cli, tmp_path)
    disk.backup()
    had = chunk_files(cli.repo)
    disk.backup([(2 * MiB + 12288, disk.rng.randbytes(4096))])
    (piece,) = chunk_files(cli.repo) - had
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0x40
    piece.write_bytes(bytes(data))

    p = cli.run("check", "--read-data", "--json", check=False)
    assert p.returncode == 1
    (problem,) = json.loads(p.stdout)["problems"]
    assert problem["offset"] == 2 * MiB + 12288 and problem["object"].endswith(piece.name)
    gens = list(disk.versions)
    assert problem["generation"] == gens[1]
    p = cli.run("restore", "vm:pc", "--to-dir", str(tmp_path / "bad"), check=False)
    assert p.returncode == 7 and "offset 2097152" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad" / "disk.raw").exists()
    # the generation before it does not use the piece
    cli.run("restore", "vm:pc", "--to-dir", str(tmp_path / "ok"), "--generation", gens[0])
    assert (tmp_path / "ok" / "disk.raw").read_bytes() == disk.versions[gens[0]].read_bytes()
