"""Two versions of repofs side by side on the incremental alone: one full backup, then many
rounds of the same incremental (a change list over 3% of the disk) into fresh copies of that
repository, the trees in turn — enough rounds for a median on a noisy machine, which
``bench_ab_backup.py`` (a full backup per round) cannot afford.

    flock /tmp/repofs-bench.lock .venv/bin/python bench/bench_ab_incremental.py \\
        --image IMG --workdir /var/tmp [--rounds 10] OLD_TREE NEW_TREE

Each tree is a checkout of this repository; its code runs with this venv's packages. The full
backup is made once, by the first tree. Each round copies that repository (its chunk files
hard-linked: nothing writes a stored chunk in place; the copies are deleted only at the end, so
that no files are freed just before a timed run) and times each tree's incremental on its own
copy: wall and CPU seconds (the command and its children), the bytes it stored. Prints each
round, then the medians and their ratio. The trees run from compiled bytecode, as an installed
copy does (``measure.as_installed``; an unmeasured round 0 compiles it), unless
``--no-bytecode-cache``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataset import change_list, make_image, parse_size  # noqa: E402
from measure import add_bytecode_option, as_installed, run, warm  # noqa: E402

PASS = "bench"
PYCACHE: str | None = None      # the trees' bytecode (main() sets it): see measure.as_installed


def env_for(tree: str) -> dict:
    env = dict(os.environ, REPOFS_PASSWORD=PASS, PYTHONPATH=tree)
    return as_installed(env, PYCACHE)


def backup(tree: str, repo: str, img: str, extra: list[str]) -> tuple[float, float, dict]:
    """Wall and CPU seconds (the command and its children) of one backup, and its disk's report."""
    r = run([sys.executable, "-m", "repofs.cli", "backup", f"file:{img}", "--vm", "bench", "-r", repo,
             "--json", *extra], env=env_for(tree), cwd=tree)
    return r.wall, r.cpu, json.loads(r.out)["disks"][0]


def copy_repo(src: str, dst: str) -> None:
    os.makedirs(dst)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if name == "chunks":
            subprocess.run(["cp", "-al", s, d], check=True)
        elif os.path.isdir(s):
            shutil.copytree(s, d, symlinks=True)
        else:
            shutil.copy2(s, d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs=2, help="two repository checkouts: before, after")
    ap.add_argument("--image", default=None, help="an existing data set image (bench/dataset.py), copied")
    ap.add_argument("--size", default="1G", help="without --image: the data set made")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--workdir", default=None)
    add_bytecode_option(ap)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="repofs-abi-", dir=a.workdir)
    global PYCACHE
    if not a.no_bytecode_cache:
        PYCACHE = os.path.join(work, "pycache")
    try:
        img, gen2 = os.path.join(work, "disk.img"), os.path.join(work, "gen2.img")
        if a.image:
            subprocess.run(["cp", "--sparse=always", a.image, img], check=True)
        else:
            make_image(img, parse_size(a.size))
        shutil.copyfile(img, gen2)      # not sparse: the change list spans the whole disk
        changes = os.path.join(work, "changes.json")
        with open(changes, "w") as f:
            json.dump(change_list(gen2, 0.03), f)
        full = os.path.join(work, "full")
        subprocess.run([sys.executable, "-m", "repofs.cli", "init", "-r", full], cwd=a.trees[0], check=True,
                       env=env_for(a.trees[0]), capture_output=True)
        wall, _cpu, _d = backup(a.trees[0], full, img, [])
        print(f"# full backup by {a.trees[0]}: {wall:.2f} s", flush=True)
        os.replace(gen2, img)           # the disk moves on to version 2
        warm(img)
        times: dict[str, list[tuple[float, float]]] = {t: [] for t in a.trees}
        # round 0, not counted: each tree's incremental once, which compiles its bytecode
        for rnd in range(0 if PYCACHE else 1, a.rounds + 1):
            order = a.trees if rnd % 2 else a.trees[::-1]   # neither tree always goes first
            for tree in order:
                repo = os.path.join(work, f"r{rnd}-{a.trees.index(tree)}")
                copy_repo(full, repo)
                wall, cpu, d = backup(tree, repo, img, ["--changed-extents", changes])
                if rnd == 0:
                    continue
                times[tree].append((wall, cpu))
                print(f"round {rnd} {tree}: incremental {wall:.2f} s, CPU {cpu:.2f} s, "
                      f"stored {d['new_bytes']} bytes", flush=True)
        med = {t: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for t, v in times.items()}
        for t, (w, c) in med.items():
            print(f"median {t}: {w:.2f} s, CPU {c:.2f} s")
        (w0, c0), (w1, c1) = med[a.trees[0]], med[a.trees[1]]
        print(f"after / before: wall {w1 / w0:.2f}x, CPU {c1 / c0:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
