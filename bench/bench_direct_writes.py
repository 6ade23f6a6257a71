"""How fast this machine writes a new file past the page cache, by write size and writes at
once, beside ``dd conv=fsync`` through the cache: the limit a restore to a file (which writes
with ``O_DIRECT``, one piece at a time: repofs/view/imagefile.py) is held against.

    python bench/bench_direct_writes.py [--dir /var/tmp] [--size 2G]

Each run writes ``--size`` bytes of random data into a new file (``O_DIRECT``, then one
fsync) with the given write size and number of threads, each writing its own blocks; then
dd copies a file of the same size (written and synced first) with ``conv=fsync``. Prints
seconds and MB/s of each.
"""
from __future__ import annotations

import argparse
import mmap
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataset import parse_size  # noqa: E402

MiB = 1 << 20
RUNS = [(1 * MiB, 1), (1 * MiB, 4), (4 * MiB, 1), (4 * MiB, 4), (1 * MiB, 1), (1 * MiB, 2)]


def direct(path: str, size: int, block: int, threads: int) -> float:
    """Seconds to write ``size`` bytes in ``block``-sized O_DIRECT writes from ``threads``
    threads, and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        os.ftruncate(fd, size)
        count, lock, taken = size // block, threading.Lock(), [0]

        def writer() -> None:
            buf = mmap.mmap(-1, block)          # page-aligned, as O_DIRECT wants
            buf[:] = os.urandom(block)
            while True:
                with lock:
                    i, taken[0] = taken[0], taken[0] + 1
                if i >= count:
                    return
                os.pwrite(fd, buf, i * block)
        start = time.monotonic()
        workers = [threading.Thread(target=writer) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        os.fsync(fd)
        return time.monotonic() - start
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--size", default="2G")
    a = ap.parse_args()
    size = parse_size(a.size)
    target = os.path.join(a.dir, f"bench-writes-{os.getpid()}.raw")
    for block, threads in RUNS:
        s = direct(target, size, block, threads)
        print(f"O_DIRECT, {block // MiB} MiB writes, {threads} at once: {s:.2f} s, {size / s / 1e6:.0f} MB/s",
              flush=True)
    source = target + ".src"
    subprocess.run(["dd", "if=/dev/urandom", f"of={source}", "bs=4M", f"count={size // (4 * MiB)}",
                    "status=none"], check=True)
    os.sync()
    try:
        start = time.monotonic()
        subprocess.run(["dd", f"if={source}", f"of={target}", "bs=4M", "conv=fsync", "status=none"], check=True)
        s = time.monotonic() - start
        print(f"dd conv=fsync: {s:.2f} s, {size / s / 1e6:.0f} MB/s")
    finally:
        for p in (source, target):
            if os.path.exists(p):
                os.unlink(p)


if __name__ == "__main__":
    main()
