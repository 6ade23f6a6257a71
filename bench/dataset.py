"""The benchmark data set: a disk image with a partition table and an ext4 filesystem that
looks like a VM's system disk — text (logs, sources, configs), semi-compressible binaries,
incompressible media, duplicated files, and free space — made rootlessly and
deterministically from a seed. Also a change list that touches a given share of the data.

    python bench/dataset.py IMAGE --size 8G [--seed 1]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from repofs.holes import data_extents  # noqa: E402

MiB = 1 << 20
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her all she there would their we him been has when who "
         "will more no if out so said what up its about into than them can only other new some "
         "could time these two may then do first any my now such like our over man me even most "
         "error warning info debug kernel systemd nginx request response status user session").split()


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b").rstrip("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _text_block(rng: random.Random, size: int) -> bytes:
    lines, n = [], 0
    while n < size:
        line = f"{rng.randrange(1_700_000_000, 1_800_000_000)} host{rng.randrange(64)} " + \
            " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 16))) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def _binary_block(rng: random.Random, size: int) -> bytes:
    # executable-like: runs of structure with random fields, compresses ~2x
    base = rng.randbytes(4096)
    out = bytearray()
    while len(out) < size:
        chunk = bytearray(base)
        for _ in range(256):
            i = rng.randrange(len(chunk) - 8)
            chunk[i:i + 8] = rng.randbytes(8)
        out += chunk + rng.randbytes(1024)
    return bytes(out[:size])


def make_tree(root: str, data_bytes: int, seed: int) -> None:
    rng = random.Random(seed)
    written = 0
    n = 0
    originals: list[str] = []
    while written < data_bytes:
        kind = rng.random()
        d = os.path.join(root, f"d{n % 37}", f"s{n % 11}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"f{n}")
        if kind < 0.35:
            size = rng.randrange(4 << 10, 8 * MiB)
            with open(path + ".log", "wb") as f:
                f.write(_text_block(rng, size))
            originals.append(path + ".log")
        elif kind < 0.65:
            size = rng.randrange(64 << 10, 24 * MiB)
            with open(path + ".so", "wb") as f:
                f.write(_binary_block(rng, size))
            originals.append(path + ".so")
        elif kind < 0.90:
            size = rng.randrange(256 << 10, 48 * MiB)
            with open(path + ".jpg", "wb") as f:
                left = size
                while left:
                    k = min(left, 8 * MiB)
                    f.write(rng.randbytes(k))
                    left -= k
        elif originals:
            src = rng.choice(originals)
            shutil.copyfile(src, path + ".copy")
            size = os.path.getsize(src)
        else:
            continue
        written += size
        n += 1


def make_image(path: str, size: int, seed: int = 1, fill: float = 0.6) -> int:
    """Write the image; returns the ext4 partition's byte offset."""
    size -= size % MiB
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
        make_tree(tmp, int(size * fill), seed)
        with open(path, "wb") as f:
            f.truncate(size)
        subprocess.run(["sfdisk", "-q", path], input="label: gpt\n2048,,L\n", text=True, check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", tmp, path,
                        f"{(size - 2 * MiB) // 1024}k"], check=True)
    return MiB


def change_list(path: str, share: float, seed: int = 2, granularity: int = 64 << 10) -> list[list[int]]:
    """Overwrite ``share`` of the image's allocated data with new bytes at scattered,
    ``granularity``-aligned places; return the [offset, length] list a CBT query would give."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        runs = data_extents(fd, 0, os.fstat(fd).st_size)
        allocated = sum(n for _, n in runs)
        target = int(allocated * share)
        changes, done = [], 0
        while done < target:
            off, n = rng.choice(runs)
            if n < granularity:
                continue
            start = off + rng.randrange(0, n - granularity + 1)
            start -= start % granularity
            length = min(granularity * rng.randrange(1, 16), off + n - start)
            os.pwrite(fd, rng.randbytes(length), start)
            changes.append([start, length])
            done += length
        os.fsync(fd)
        return changes
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    make_image(a.image, parse_size(a.size), a.seed)
    print(a.image, file=sys.stderr)


if __name__ == "__main__":
    main()
