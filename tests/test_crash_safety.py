"""A repository is always the old state or the new one: kill -9, full disks, shrinking
images and concurrent writers."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess

import pytest

from fixtures_repo import CLI, REPOFS, cli_env, images_equal, small_tmpfs
from format.repository import Repository
from repofs.ingest.backup import backup
from repofs.ingest.sources import LocalImage, SourceError

# slow: twenty backups killed with SIGKILL, a filled file system, concurrent backups
pytestmark = pytest.mark.slow

# Where a backup is killed: (system call, its n-th call in one thread). Every backup makes
# these calls (chunk files renamed by the workers; index, manifest and this client's record
# renamed by the main thread, each put fsynced; one syncfs; the VM lock; the writeback hint
# of a chunk), so each point is certain to be reached: the kill does not depend on timing.
# strace delivers SIGKILL as the call is entered.
KILL_POINTS = [("rename", 1), ("rename", 2), ("rename", 3), ("fsync", 1), ("fsync", 2),
               ("syncfs", 1), ("write", 1), ("flock", 1), ("sync_file_range", 1), ("fsync", 3)]


def killed_at(point: tuple[str, int], argv: list[str], env: dict) -> int:
    """Run ``argv`` and SIGKILL it when one of its threads enters the point's system call for
    the n-th time; the exit status."""
    call, nth = point
    return subprocess.run(["strace", "-f", "-o", "/dev/null", "-e", f"inject={call}:signal=KILL:when={nth}",
                           *argv], env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def test_kill_9_at_20_moments_leaves_earlier_generations_intact(cli, tmp_path):
    rng = random.Random(20)
    img = tmp_path / "disk.img"
    img.write_bytes(rng.randbytes(48 << 20))
    cli.run("backup", f"file:{img}", "--vm", "crash")
    good = tmp_path / "good.img"
    good.write_bytes(img.read_bytes())
    killed = 0
    for moment in range(20):
        # a new version of the disk each round, so the backup has real work to do
        with open(img, "r+b") as f:
            for _ in range(8):
                f.seek(rng.randrange(0, 47 << 20))
                f.write(rng.randbytes(1 << 20))
        rc = killed_at(KILL_POINTS[moment % len(KILL_POINTS)], [*REPOFS, "backup", f"file:{img}", "--vm", "crash"],
                       cli.env)
        killed += rc == -signal.SIGKILL
    assert killed == 20, "every backup is killed at its chosen system call"
    assert cli.run("check", "--read-data").returncode == 0
    gens = json.loads(cli.run("generations", "crash", "--json").stdout)
    cli.run("restore", "vm:crash", "--generation", gens[0]["generation"], "--to-dir", str(tmp_path / "o"))
    assert images_equal(good, tmp_path / "o" / "disk.raw")
    # every generation that exists is complete and restorable
    for g in gens[1:]:
        cli.run("restore", "vm:crash", "--generation", g["generation"], "--to-dir", str(tmp_path / g["generation"]))
    # leftovers of killed writers are at worst temporary files, never visible objects
    cli.run("backup", f"file:{img}", "--vm", "crash")
    cli.run("restore", "vm:crash", "--to-dir", str(tmp_path / "last"))
    assert images_equal(img, tmp_path / "last" / "disk.raw")


def test_image_shrinking_mid_read_writes_no_generation(tmp_path):
    repo = Repository.init(tmp_path / "r", b"pw")
    img = tmp_path / "shrinks.img"
    img.write_bytes(random.Random(1).randbytes(8 << 20))
    source = LocalImage.open(str(img))
    os.truncate(img, 3 << 20)
    with pytest.raises(SourceError, match="shrank"):
        backup(repo, "s", [source])
    source.close()
    assert repo.manifest_names() == []


@pytest.fixture
def small_fs(tmp_path):
    with small_tmpfs(tmp_path / "small", "6m") as mnt:
        yield mnt


def test_full_disk_is_a_clear_error_and_no_half_generation(small_fs, tmp_path):
    repo = small_fs / "repo"
    c = CLI(repo, cli_env(tmp_path, repo))
    c.run("init")
    small = tmp_path / "small.img"
    small.write_bytes(random.Random(2).randbytes(1 << 20))
    c.run("backup", f"file:{small}", "--vm", "a")
    big = tmp_path / "big.img"
    big.write_bytes(random.Random(3).randbytes(16 << 20))
    p = c.run("backup", f"file:{big}", "--vm", "a", check=False)
    assert p.returncode == 10 and "no space" in p.stderr and "Traceback" not in p.stderr
    gens = json.loads(c.run("generations", "--json").stdout)
    assert len(gens) == 1
    c.run("check", "--read-data")
    c.run("restore", "vm:a", "--to-dir", str(tmp_path / "o"))
    assert images_equal(small, tmp_path / "o" / "small.raw")


def test_concurrent_backups_of_different_vms(cli, tmp_path):
    procs, images = [], {}
    for i in range(3):
        img = tmp_path / f"vm{i}.img"
        # shared content across VMs exercises concurrent writes of the same chunk
        img.write_bytes(random.Random(99).randbytes(8 << 20) + random.Random(i).randbytes(8 << 20))
        images[f"vm{i}"] = img
        procs.append(subprocess.Popen([*REPOFS, "backup", f"file:{img}", "--vm", f"vm{i}"], env=cli.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    cli.run("check", "--read-data")
    for vm, img in images.items():
        cli.run("restore", f"vm:{vm}", "--to-dir", str(tmp_path / vm))
        assert images_equal(img, tmp_path / vm / f"{vm}.raw")
