"""Our own readers beside the libraries that could replace them: the sparse VMDK reader
(``repofs.vmdk.sparse``) beside ``dissect.hypervisor``'s VMDK, the ext4 reader
(``repofs.guest.ext4``) beside ``dissect.extfs``. What decided to keep ours is written in each
module's docstring; this prints the figures again.

VMDK: a 1 GiB raw image with 1 MiB of random data every 4 MiB (256 MiB of data), converted by
``qemu-img convert -O vmdk`` (monolithicSparse) and ``-o subformat=streamOptimized``; each
reader reads the whole disk in 4 MiB reads; the bytes are compared with the raw image. Then
each reader opens headers made hostile (capacity 2^60 sectors, 2^31 entries per grain table,
the grain directory past the end of the file) under a 2 GiB address-space limit, and what it
does is printed. ext4: a 20,000-file tree (40 x 25 directories of 20 files) made by
``mkfs.ext4 -d``; each reader walks it, listing every directory and reading each entry's size,
mode and mtime. Best of the rounds. No asserts.

The dissect packages are not dependencies of repofs; put them beside it for the run:

    .venv/bin/pip install -q --no-deps --target /tmp/dissect dissect.hypervisor dissect.extfs defusedxml
    PYTHONPATH=$PWD:/tmp/dissect .venv/bin/python bench/bench_libraries.py [--dir /tmp/bench-libs]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import stat
import struct
import subprocess
import sys
import time

from repofs.guest.ext4 import Ext4
from repofs.vmdk.sparse import SparseVmdk

STEP = 4 << 20


def make_vmdks(work: str) -> str:
    raw = os.path.join(work, "raw.img")
    if not os.path.exists(raw):
        rng = random.Random(5)
        with open(raw, "wb") as f:
            f.truncate(1 << 30)
            for mib in range(0, 1024, 4):
                f.seek(mib << 20)
                f.write(rng.randbytes(1 << 20))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw,
                        os.path.join(work, "sparse.vmdk")], check=True)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                        raw, os.path.join(work, "stream.vmdk")], check=True)
    return raw


def read_ours(path: str, h) -> int:
    d = SparseVmdk(path)
    try:
        for off in range(0, d.capacity, STEP):
            h.update(d.read(off, STEP))
        return d.capacity
    finally:
        d.close()


def read_dissect(path: str, h) -> int:
    from dissect.hypervisor.disk.vmdk import VMDK
    with open(path, "rb") as f:
        d = VMDK(f)
        for off in range(0, d.size, STEP):
            d.seek(off)
            h.update(d.read(STEP))
        return d.size


def vmdk_speed(work: str, rounds: int) -> None:
    raw = make_vmdks(work)
    with open(raw, "rb") as f:
        want = hashlib.file_digest(f, "sha256").hexdigest()
    for name in ("sparse.vmdk", "stream.vmdk"):
        for who, fn in (("repofs.vmdk.sparse", read_ours), ("dissect.hypervisor", read_dissect)):
            best, same = None, True
            for _ in range(rounds):
                h = hashlib.sha256()
                t = time.perf_counter()
                size = fn(os.path.join(work, name), h)
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
                same = same and h.hexdigest() == want
            print(f"{name:12s} {who:20s} {best:6.2f} s {size / best / 2**20:6.0f} MiB/s  "
                  f"{'same bytes' if same else 'DIFFERENT BYTES'}")


HOSTILE = {"capacity 2^60 sectors": (12, "<Q", 1 << 60),
           "2^31 entries per grain table": (44, "<I", 1 << 31),
           "grain directory past the end": (56, "<Q", 1 << 40)}


def vmdk_hostile(work: str) -> None:
    """Each case in a child process under an address-space limit: a runaway allocation fails
    there instead of taking the machine's memory."""
    for case in HOSTILE:
        for who in ("ours", "dissect"):
            out = subprocess.run([sys.executable, __file__, "--hostile", who, case, "--dir", work],
                                 capture_output=True, text=True)
            print(f"{case:30s} {who:8s} {(out.stdout or out.stderr).strip().splitlines()[-1][:90]}")


def hostile_child(who: str, case: str, work: str) -> None:
    off, fmt, value = HOSTILE[case]
    path = os.path.join(work, "hostile.vmdk")
    shutil.copy(os.path.join(work, "sparse.vmdk"), path)
    with open(path, "r+b") as f:
        head = bytearray(f.read(512))
        struct.pack_into(fmt, head, off, value)
        f.seek(0)
        f.write(head)
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    try:
        if who == "ours":
            SparseVmdk(path).read(0, 1 << 20)
        else:
            read_dissect(path, hashlib.sha256())
        print("opened and read")
    except Exception as e:  # noqa: BLE001 (what each reader raises is the result)
        print(f"{type(e).__module__}.{type(e).__name__}: {str(e)[:60]}")


def make_ext4(work: str) -> str:
    image, tree = os.path.join(work, "ext4.img"), os.path.join(work, "tree")
    if not os.path.exists(image):
        rng = random.Random(3)
        for a in range(40):
            for b in range(25):
                d = os.path.join(tree, f"d{a}", f"e{b}")
                os.makedirs(d, exist_ok=True)
                for c in range(20):
                    with open(os.path.join(d, f"f{c}.txt"), "wb") as f:
                        f.write(rng.randbytes(rng.choice([0, 100, 3000])))
        with open(image, "wb") as f:
            f.truncate(600 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, image], check=True)
    return image


def walk_ours(image: str) -> int:
    with open(image, "rb") as f:
        fs, n = Ext4(f), 0
        stack = [fs.inode(2)]
        while stack:
            for name, ino in fs.listdir(stack.pop()):
                if name in (".", ".."):
                    continue
                n += 1
                _ = (ino.size, ino.mode, ino.mtime_ns)
                if stat.S_ISDIR(ino.mode):
                    stack.append(ino)
        return n


def walk_dissect(image: str) -> int:
    from dissect.extfs import ExtFS
    with open(image, "rb") as f:
        fs, n = ExtFS(f), 0
        stack = [fs.root]
        while stack:
            for name, ino in stack.pop().listdir().items():
                if name in (".", ".."):
                    continue
                n += 1
                _ = (ino.size, ino.inode.i_mode, ino.mtime)
                if ino.filetype == stat.S_IFDIR:
                    stack.append(ino)
        return n


def ext4_walk(work: str, rounds: int) -> None:
    image = make_ext4(work)
    for who, fn in (("repofs.guest.ext4", walk_ours), ("dissect.extfs", walk_dissect)):
        best, n = None, 0
        for _ in range(rounds):
            t = time.perf_counter()
            n = fn(image)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        print(f"ext4 walk    {who:20s} {best:6.2f} s {n / best:8.0f} entries/s ({n} entries)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/bench-libs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hostile", nargs=2, metavar=("WHO", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    if args.hostile:
        hostile_child(*args.hostile, args.dir)
        return
    vmdk_speed(args.dir, args.rounds)
    vmdk_hostile(args.dir)
    ext4_walk(args.dir, args.rounds)


if __name__ == "__main__":
    main()
