"""Two versions of repofs side by side: full backup, then an incremental with a change list,
on one data set, the versions interleaved — to measure what a change costs a backup.

    flock /tmp/repofs-bench.lock .venv/bin/python bench/bench_ab_backup.py --size 8G \\
        --workdir /var/tmp OLD_TREE NEW_TREE        # e.g. a `git worktree` of an older commit

``--image IMG`` copies an existing data set image (``bench/dataset.py``) instead of making one.

Each tree is a checkout of this repository; its code runs with this venv's packages. Prints,
per round and tree: wall seconds of the full and the incremental backup, the incremental as a
share of the full, and the bytes each stored.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataset import change_list, make_image, parse_size  # noqa: E402
from measure import warm  # noqa: E402


def timed_backup(tree: str, repo: str, img: str, extra: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "repofs.cli", "backup", f"file:{img}", "--vm", "bench", "-r", repo,
           "--json", *extra]
    env = dict(os.environ, REPOFS_PASSWORD="bench", PYTHONPATH=tree)
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - t, json.loads(out)["disks"][0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+", help="repository checkouts to compare")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--image", default=None, help="an existing data set image (bench/dataset.py), copied")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="repofs-ab-", dir=a.workdir)
    try:
        img, gen1, gen2 = (os.path.join(work, n) for n in ("disk.img", "gen1.img", "gen2.img"))
        if a.image:
            subprocess.run(["cp", "--sparse=always", a.image, img], check=True)  # holes stay holes
        else:
            make_image(img, parse_size(a.size))
        shutil.copyfile(img, gen1)
        shutil.copyfile(img, gen2)
        changes = os.path.join(work, "changes.json")
        with open(changes, "w") as f:
            json.dump(change_list(gen2, 0.03), f)
        for rnd in range(1, a.rounds + 1):
            for tree in a.trees:
                repo = os.path.join(work, "repo")
                shutil.rmtree(repo, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "repofs.cli", "init", "-r", repo], cwd=tree, check=True,
                               env=dict(os.environ, REPOFS_PASSWORD="bench", PYTHONPATH=tree), capture_output=True)
                shutil.copyfile(gen1, img)
                warm(img)
                full, d1 = timed_backup(tree, repo, img, [])
                shutil.copyfile(gen2, img)
                warm(img)
                inc, d2 = timed_backup(tree, repo, img, ["--changed-extents", changes])
                print(f"round {rnd} {tree}: full {full:.2f} s, incremental {inc:.2f} s ({inc / full:.1%}); "
                      f"stored {d1['new_bytes']} + {d2['new_bytes']} bytes", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
