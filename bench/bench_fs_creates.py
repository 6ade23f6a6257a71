"""What creating a file costs on a file system just after many files were deleted beside it —
what a backup's chunk files meet while a prune deletes, or after one.

    python bench/bench_fs_creates.py DIR [DIR ...] [--files 40000] [--cycles 3]

Under each DIR, ``--cycles`` times, one after the other: a new folder of 16 sub-folders (like a
repository's chunk shards) gets ``--files`` empty files, then 2,000 more (timed: "before"),
then all the first ones are deleted and 2,000 more are created (timed: "after"), and the
folder is deleted. Prints the CPU time per create of each timed batch. A cycle's "before"
batch follows the deletes of the cycle before it, in another folder of the same file system.

Why: ext4 without a journal skips, for every new inode, the free inodes freed in the last
minutes (the kernel's ``recently_deleted``: one buffer-cache lookup each), so right after
mass deletes a create can cost tens of times more CPU; with a journal (the usual set-up) it
does not check. docs/performance.md has the figures of this project's machines.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

CREATES = 2000


def creates(root: str, tag: str) -> float:
    """CPU microseconds per create of ``CREATES`` new empty files spread over the folders."""
    t = time.process_time()
    for i in range(CREATES):
        os.close(os.open(f"{root}/{i % 16:02x}/{tag}{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return (time.process_time() - t) / CREATES * 1e6


def measure(where: str, files: int) -> tuple[float, float]:
    root = tempfile.mkdtemp(prefix="repofs-creates-", dir=where)
    try:
        for s in range(16):
            os.mkdir(f"{root}/{s:02x}")
        for i in range(files):
            os.close(os.open(f"{root}/{i % 16:02x}/old{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        before = creates(root, "a")
        for i in range(files):
            os.unlink(f"{root}/{i % 16:02x}/old{i}")
        return before, creates(root, "b")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--files", type=int, default=40_000, help="files deleted before the second creates")
    ap.add_argument("--cycles", type=int, default=3)
    a = ap.parse_args()
    for where in a.dirs:
        for cycle in range(a.cycles):
            before, after = measure(where, a.files)
            print(f"{where} cycle {cycle}: {before:.0f} us of CPU per create before the deletes, {after:.0f} us "
                  f"just after deleting {a.files:,} files in the same folders", flush=True)


if __name__ == "__main__":
    main()
