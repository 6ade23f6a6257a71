"""The mount daemon's memory with default settings: streaming a disk several times the chunk
cache's size through a real FUSE mount keeps its peak resident memory (VmHWM) under 256 MiB,
and every byte read equals the image.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from fixtures_mount import (DISK, PASSPHRASE, MountSource, backup_image, make_repo, mounted,
                            needs_root_tools)

MiB = 1 << 20
LIMIT = 256 * MiB


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> MountSource:
    """448 MiB of data that does not compress (chunks of 1 MiB, full size in the cache), with
    a few holes, in an encrypted repository."""
    needs_root_tools("fusermount3")
    work = tmp_path_factory.mktemp("mount-memory")
    image = work / "big.img"
    rnd = random.Random(20)
    block = rnd.randbytes(4 * MiB)
    with open(image, "wb") as f:
        for i in range(112):
            if i % 29 == 7:
                f.seek(4 * MiB, os.SEEK_CUR)          # a hole
                continue
            # each 4 MiB differs from the others (no dedup) and stays incompressible
            f.write(hashlib.blake2b(i.to_bytes(4, "little")).digest()[:32] + block[32:])
        f.truncate(112 * 4 * MiB)
    repo = work / "repo"
    make_repo(repo, chunk_size=MiB)
    gen = backup_image(repo, image)
    pw = work / "passphrase"
    pw.write_bytes(PASSPHRASE + b"\n")
    pw.chmod(0o600)
    return MountSource(image, {}, repo, gen, pw, work)


def test_streaming_a_disk_larger_than_the_cache_stays_under_256_mib(big_source: MountSource,
                                                                      tmp_path: Path) -> None:
    with mounted(big_source, tmp_path / "mnt") as m:
        flat = m.gen_dir / f"{DISK}-flat.vmdk"
        assert flat.exists(), sorted(p.name for p in m.gen_dir.iterdir())
        with open(flat, "rb", buffering=0) as got, open(big_source.image, "rb") as want:
            for pass_ in range(2):              # twice: the second pass evicts all of the first
                got.seek(0)
                want.seek(0)
                while True:
                    a = got.read(4 * MiB)
                    b = want.read(4 * MiB)
                    assert a == b, f"pass {pass_}: data differs near offset {want.tell()}"
                    if not a:
                        break
        peak = _peak_rss(m.proc.pid)
    assert peak <= LIMIT, f"the mount daemon peaked at {peak / MiB:.0f} MiB (limit 256)"
