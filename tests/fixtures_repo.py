"""Fixtures that build real repositories and real disk images on temporary storage.

Images are made without root and deterministically: ``sfdisk`` on an image file, then
``mkfs.ext4 -d TREE -E offset=…`` into the partition, with seeded file contents.
"""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPOFS = [sys.executable, "-m", "repofs.cli"]
PASSPHRASE = "correct horse battery staple"


@contextlib.contextmanager
def small_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``) mounted at the new folder ``mnt``: storage that
    fills up for real. Skips the test where mounting is not allowed (not root)."""
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@dataclass
class CLI:
    """Runs the real ``repofs`` command in a subprocess against one repository."""
    repo: Path
    env: dict

    def run(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([*REPOFS, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input, stdin=None if input else subprocess.DEVNULL,
                              cwd=kw.get("cwd"))
        if check and proc.returncode != 0:
            raise AssertionError(f"repofs {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


def cli_env(tmp: Path, repo: Path) -> dict:
    pw = tmp / "passphrase"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)  # a password file others can read draws a warning
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOFS_")}
    env.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(pw),
               REPOFS_SECURITY_DIR=str(tmp / "security"),
               PYTHONPATH=str(ROOT), PYTHONWARNINGS="error",
               REPOFS_LOG_FILE=str(tmp / "operations.jsonl"))   # the log of operations stays here
    return env


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    """A fresh encrypted repository and a runner for the CLI against it."""
    repo = tmp_path / "repo"
    c = CLI(repo, cli_env(tmp_path, repo))
    c.run("init")
    return c


def write_tree(root: Path, seed: int, files: int = 40) -> dict[str, bytes]:
    """A small seeded tree: text, compressible and random files, nested dirs."""
    rng = random.Random(seed)
    out = {}
    for i in range(files):
        sub = root / f"dir{i % 5}" / f"sub{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        kind = i % 3
        if kind == 0:
            data = "\n".join(f"line {j} of file {i} seed {seed}" for j in range(rng.randint(10, 3000))).encode()
        elif kind == 1:
            data = bytes(rng.choice(b"ACGT") for _ in range(rng.randint(1000, 200_000)))
        else:
            data = rng.randbytes(rng.randint(1000, 400_000))
        path = sub / f"file{i}.bin"
        path.write_bytes(data)
        out[str(path.relative_to(root))] = data
    return out


def make_ext4_image(path: Path, size_mib: int, tree: Path, table: str = "gpt") -> int:
    """A ``size_mib`` image with one partition at 1 MiB holding ext4 made from ``tree``.
    Returns the partition's byte offset."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["sfdisk", "-q", str(path)], input=f"label: {table}\n2048,,L\n", text=True, check=True)
    part_kib = (size_mib - 2) * 1024
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", str(tree),
                    str(path), f"{part_kib}k"], check=True, capture_output=True)
    return 1 << 20


def images_equal(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def diff_extents(a: Path, b: Path, block: int = 4096) -> list[tuple[int, int]]:
    """Where two images of one size differ, in ``block`` units, joined where they touch:
    what changed-block tracking would report."""
    out: list[tuple[int, int]] = []
    step = max(block, 1 << 20) // block * block
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(step), fb.read(step)
            if not x and not y:
                return out
            if x != y:
                for o in range(0, max(len(x), len(y)), block):
                    if x[o:o + block] != y[o:o + block]:
                        if out and sum(out[-1]) == off + o:
                            out[-1] = (out[-1][0], out[-1][1] + block)
                        else:
                            out.append((off + o, block))
            off += step
