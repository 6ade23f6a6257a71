"""A VM's disk that fails to read, beside others that read well: the backup gives up on every
disk at once — not after the others have been read to their end — and reports that disk's
error, not the "stopped because another disk failed" of the others (repofs/ingest/backup.py
``_all``). The failing disk is a file whose reads fail in the kernel with EIO: the flat extent
of a generation in a real repofs mount whose repository has a damaged chunk (this machine's
kernel has no device-mapper for an ``error`` target)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures_mount import CHUNK, DISK, PART_OFFSET, VM, MountSource, mounted
from fixtures_repo import CLI

from format.repository import Repository, chunk_name
from repofs.view.tree import RepositoryView

MiB = 1 << 20


@pytest.fixture
def failing_disk(mount_source: MountSource, tmp_path: Path):
    """A disk image whose reads fail with EIO from its fifth partition chunk on."""
    source = mount_source.copy(tmp_path / "damaged")
    view = RepositoryView(Repository.open(source.repo, b"mount test passphrase"))
    cid = view.generation(VM).disk(DISK).index.get((PART_OFFSET + 4 * CHUNK) // CHUNK)
    assert cid is not None
    path = source.repo.joinpath(*chunk_name(cid).split("/"))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    with mounted(source, tmp_path / "mnt") as m:
        yield m.gen_dir / f"{DISK}-flat.vmdk"


def test_a_disk_that_fails_stops_the_others_at_once_and_is_the_error_reported(
        cli: CLI, tmp_path: Path, failing_disk: Path):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:                  # 768 chunks of random data: seconds to read
        for _ in range(48):
            f.write(os.urandom(16 * MiB))
    # the good disk first: before, the backup read it to its end before reporting the other
    proc = cli.run("backup", f"file:{big}", f"file:{failing_disk}", "--vm", "vm", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Input/output error" in lines[0], proc.stderr
    assert "stopped because another disk failed" not in proc.stderr
    stored = sum(len(files) for _d, _s, files in os.walk(cli.repo / "chunks"))
    assert stored < 768 // 2, f"{stored} chunks of the good disk were stored before it stopped"
    assert not cli.run("generations", "--json", check=False).stdout.strip().strip("[]")
