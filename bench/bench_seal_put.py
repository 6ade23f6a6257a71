"""The backup's data path alone, one thread: hash, seal (compression decision, zstd,
AES-256-GCM) and store (``put`` without fsync) every non-zero 1 MiB chunk of an image into a
new repository, with the CPU time of that thread (user and system, getrusage) — the figure a
change of the data path moves, without the noise of start-up, threads and scheduling.

    .venv/bin/python bench/bench_seal_put.py IMAGE --trees OLD_TREE NEW_TREE --rounds 3

Each tree's code runs in a child process (PYTHONPATH=tree), the trees interleaved.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import os, resource, sys
from format.repository import Repository
img, repo_dir = sys.argv[1], sys.argv[2]
repo = Repository.init(repo_dir, b"bench")
cs = repo.chunk_size
zero = bytes(cs)
n = total = 0
r0 = resource.getrusage(resource.RUSAGE_THREAD)
with open(img, "rb") as f:
    while chunk := f.read(cs):
        if chunk == zero[:len(chunk)]:
            continue
        total += repo.put_chunk(repo.chunk_id(chunk), chunk, sync=False)
        n += len(chunk)
r1 = resource.getrusage(resource.RUSAGE_THREAD)
print(r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, n, total)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("--trees", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    for rnd in range(1, a.rounds + 1):
        for tree in a.trees:
            work = tempfile.mkdtemp(prefix="repofs-sealput-", dir=a.workdir)
            try:
                out = subprocess.run([sys.executable, "-c", CHILD, a.image, os.path.join(work, "repo")],
                                     env=dict(os.environ, PYTHONPATH=os.path.abspath(tree)), cwd=tree, check=True,
                                     capture_output=True, text=True).stdout.split()
                user, system, n, stored = float(out[0]), float(out[1]), int(out[2]), int(out[3])
                print(f"round {rnd} {tree}: user {user:.2f} s + system {system:.2f} s = "
                      f"{(user + system) / n * 1e9:.2f} CPU s/GB on {n / 1e9:.2f} GB; stored {stored}", flush=True)
            finally:
                os.sync()
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
