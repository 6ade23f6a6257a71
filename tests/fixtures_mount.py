"""Fixtures for the mount tests: a small partitioned ext4 image made rootlessly and
deterministically, a repository holding it, and real mounts through the CLI that are always
ended — and loop devices always detached — even when a test fails.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PASSPHRASE = b"mount test passphrase"
CHEAP_KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 8 * 1024, "parallelism": 1}
CHUNK = 64 << 10              # small chunks: many of them in a small image
IMAGE_MIB = 40
PART_OFFSET = 1 * MiB
VM = "vm1"
DISK = "disk0"


def _tag(repo: object) -> str:
    """A short name for a repository location (a path or an s3:// URL) usable in a folder name."""
    return hashlib.sha256(str(repo).encode()).hexdigest()[:12]


def needs_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("real mounts need root here")
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed")


def seeded_tree(root: Path, seed: int) -> dict[str, bytes]:
    """Text, compressible and random files in nested folders."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(24):
        kind = i % 3
        if kind == 0:
            data = "".join(f"{j} line of text in file {i}\n" for j in range(rng.randint(50, 4000))).encode()
        elif kind == 1:
            data = bytes(rng.choice(b"ACGT") for _ in range(rng.randint(1000, 300_000)))
        else:
            data = rng.randbytes(rng.randint(1000, 900_000))
        rel = f"d{i % 4}/s{i % 3}/f{i}.dat"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def build_image(path: Path, tree: Path, seed: int) -> None:
    """A dos-partitioned image: ext4 at 1 MiB holding ``tree``, random bytes in the gap
    before the partition's end, and free space that stays a hole."""
    with open(path, "wb") as f:
        f.truncate(IMAGE_MIB * MiB)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: dos\n2048,,L\n", text=True,
                   check=True, capture_output=True)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000", "TZ": "UTC"}
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={PART_OFFSET}", "-U",
                    "5e1f0c2a-7d3b-4e59-9a61-0c2b3d4e5f61", "-d", str(tree), str(path),
                    f"{(IMAGE_MIB - 1) * 1024}k"], check=True, capture_output=True, env=env)
    # some random data in the first MiB after the partition table (like a boot loader)
    with open(path, "r+b") as f:
        f.seek(64 << 10)
        f.write(random.Random(seed).randbytes(200 << 10))


def make_repo(path: Path, chunk_size: int = CHUNK):
    from format.repository import Repository
    return Repository.init(path, PASSPHRASE, kdf=CHEAP_KDF, chunk_size=chunk_size)


def backup_image(repo_path: Path, image: Path, vm: str = VM, label: str = DISK) -> str:
    """Back ``image`` up in-process; returns the generation name."""
    from format.repository import Repository
    from repofs.ingest.backup import backup
    from repofs.ingest.sources import LocalImage

    repo = Repository.open(repo_path, PASSPHRASE)
    src = LocalImage.open(str(image), label=label)
    try:
        return backup(repo, vm, [src]).generation
    finally:
        src.close()


@dataclass
class MountSource:
    image: Path
    tree: dict[str, bytes]
    repo: Path
    generation: str
    password_file: Path
    work: Path

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPOFS_")}
        env.update(REPOFS_PASSWORD_FILE=str(self.password_file), PYTHONPATH=str(ROOT),
                   PYTHONWARNINGS="error", TZ="UTC",
                   # copies share the repository id: each gets its own client record, or the
                   # original would look rolled back next to an extended copy
                   REPOFS_SECURITY_DIR=str(self.work / f"client-{_tag(self.repo)}"))
        return env

    def copy(self, dest: Path) -> "MountSource":
        """A private copy of the repository (for tests that damage or extend it)."""
        shutil.copytree(self.repo, dest)
        return MountSource(self.image, self.tree, dest, self.generation, self.password_file, self.work)


@pytest.fixture(scope="session")
def mount_source(tmp_path_factory: pytest.TempPathFactory) -> MountSource:
    if shutil.which("sfdisk") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("sfdisk and mkfs.ext4 are needed")
    work = tmp_path_factory.mktemp("mount-src")
    tree_dir = work / "tree"
    tree = seeded_tree(tree_dir, seed=3)
    image = work / "disk0.img"
    build_image(image, tree_dir, seed=3)
    repo = work / "repo"
    make_repo(repo)
    gen = backup_image(repo, image)
    pw = work / "passphrase"
    pw.write_bytes(PASSPHRASE + b"\n")
    pw.chmod(0o600)  # a password file others can read draws a warning
    return MountSource(image, tree, repo, gen, pw, work)


def repofs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "repofs.cli", *args]


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


@dataclass
class Mount:
    """A running ``repofs mount -f``; ``log()`` is what it wrote on stderr."""
    path: Path
    proc: subprocess.Popen
    log_path: Path
    source: MountSource

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def gen_dir(self) -> Path:
        return self.path / VM / self.source.generation


def end_mount(path: Path, proc: subprocess.Popen | None) -> None:
    """Unmount (lazily if busy) and reap the process; never raises."""
    for args in (["-u"], ["-u", "-z"]):
        if not is_mounted(path):
            break
        subprocess.run(["fusermount3", *args, str(path)], capture_output=True)
    if proc is not None:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def mounted(source: MountSource, mnt: Path, *options: str) -> Iterator[Mount]:
    """``repofs mount -f REPO MNT OPTIONS`` in a subprocess, ended whatever happens."""
    needs_root_tools("fusermount3")
    mnt.mkdir(parents=True, exist_ok=True)
    log_path = mnt.parent / f"{mnt.name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(repofs_cmd("mount", "-f", str(source.repo), str(mnt), *options),
                                env=source.env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None:
                raise AssertionError(f"repofs mount exited {proc.returncode}: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"repofs mount did not come up: {log_path.read_text()}")
            time.sleep(0.02)
        yield Mount(mnt, proc, log_path, source)
    finally:
        end_mount(mnt, proc)


@pytest.fixture(scope="session")
def shared_mount(mount_source: MountSource, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One read-only mount of the shared repository for the tests that only read."""
    with mounted(mount_source, tmp_path_factory.mktemp("shared-mnt") / "mnt") as m:
        yield m


@dataclass
class LoopDevices:
    """Loop devices, partition nodes and mounts made by a test; ``close()`` undoes all."""
    loops: list[str] = field(default_factory=list)
    partx: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)

    def attach(self, path: Path, offset: int = 0, size: int | None = None) -> str:
        cmd = ["losetup", "-r", "-f", "--show"]
        if offset:
            cmd += ["-o", str(offset)]
        if size:
            cmd += ["--sizelimit", str(size)]
        dev = subprocess.run(cmd + [str(path)], check=True, capture_output=True, text=True).stdout.strip()
        self.loops.append(dev)
        return dev

    def add_partitions(self, dev: str) -> None:
        subprocess.run(["partx", "-a", dev], check=True, capture_output=True)
        self.partx.append(dev)

    def mount(self, dev: str, where: Path, options: str = "ro,noload") -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", options, dev, str(where)], check=True, capture_output=True)
        self.mounts.append(where)

    def close(self) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", str(m)], capture_output=True)
            if is_mounted(m):
                subprocess.run(["umount", "-l", str(m)], capture_output=True)
        for dev in self.partx:
            subprocess.run(["partx", "-d", dev], capture_output=True)
        for dev in reversed(self.loops):
            subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
def loop_devices() -> Iterator[LoopDevices]:
    needs_root_tools("losetup", "partx")
    ld = LoopDevices()
    try:
        yield ld
    finally:
        ld.close()


def send_signal(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


def resident(fd: int, size: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether every page of ``ranges`` of the file open as ``fd`` is in the page cache
    (mincore on a private mapping: it reads nothing)."""
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    try:
        base = ctypes.c_char.from_buffer(mm)
        pages = -(-size // page)
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(base)), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        del base
        return all(vec[p] & 1 for off, n in ranges for p in range(off // page, -(-(off + n) // page)))
    finally:
        mm.close()
