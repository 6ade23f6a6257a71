"""A VM with several disks: its disks backed up in one run (read in parallel, sharing the
workers) beside the same disks backed up one run each — wall time, CPU seconds (user +
system, wait4) and CPU seconds per GB of data, in the same run, the order alternated.

    flock /tmp/repofs-bench.lock nice -n -10 .venv/bin/python bench/bench_multidisk.py \\
        --disks 4 --size 512M --rounds 2 --workdir /var/tmp [--tree TREE]

Each disk is a data set image of its own (``bench/dataset.py``, seeds 1..N: no chunk shared
between them), made once in the work folder (``--keep`` keeps them for the next run). The
target (the performance issue): a VM with 4 disks backs up its disks in parallel within the
CPU budget, i.e. its CPU per GB no more than that of the disks backed up alone.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataset import make_image, parse_size  # noqa: E402
from measure import PY, run, warm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--disks", type=int, default=4)
    ap.add_argument("--size", default="512M", help="each disk's size")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--tree", default=os.path.dirname(HERE), help="the checkout whose repofs runs")
    ap.add_argument("--keep", action="store_true", help="keep the images (a second run reuses them)")
    a = ap.parse_args()
    work = a.workdir or tempfile.gettempdir()
    images = []
    for i in range(1, a.disks + 1):
        img = os.path.join(work, f"multidisk-{a.size}-{i}.img")
        if not os.path.exists(img):
            make_image(img, parse_size(a.size), seed=i)
        images.append(img)
    tree = os.path.abspath(a.tree)
    env = dict(os.environ, REPOFS_PASSWORD="bench", PYTHONPATH=tree)
    env.pop("REPOFS_REPOSITORY", None)
    env.pop("REPOFS_PASSWORD_FILE", None)
    repo = os.path.join(work, "multidisk-repo")

    def cli(*args: str):
        return run([PY, "-m", "repofs.cli", *args], env=env, cwd=tree)

    def fresh() -> None:
        shutil.rmtree(repo, ignore_errors=True)
        cli("init", "-r", repo)

    def together() -> tuple[float, float, int]:
        fresh()
        for img in images:
            warm(img)
        r = cli("backup", *(f"file:{img}" for img in images), "--vm", "multi", "-r", repo, "--json")
        data = sum(d["data_bytes"] for d in json.loads(r.out)["disks"])
        return r.wall, r.cpu, data

    def alone() -> tuple[float, float, int]:
        fresh()
        wall = cpu = 0.0
        data = 0
        for i, img in enumerate(images):
            warm(img)
            r = cli("backup", f"file:{img}", "--vm", f"single{i}", "-r", repo, "--json")
            wall, cpu = wall + r.wall, cpu + r.cpu
            data += json.loads(r.out)["disks"][0]["data_bytes"]
        return wall, cpu, data

    try:
        for rnd in range(1, a.rounds + 1):
            order = [("one run, disks in parallel", together), ("one run per disk", alone)]
            if rnd % 2 == 0:
                order.reverse()
            for name, fn in order:
                wall, cpu, data = fn()
                print(f"round {rnd} {a.disks} disks of {a.size}, {name}: {wall:.2f} s, {cpu:.2f} CPU s, "
                      f"{cpu / data * 1e9:.2f} CPU s per GB of data ({data / 1e9:.2f} GB)", flush=True)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        if not a.keep:
            for img in images:
                os.unlink(img)


if __name__ == "__main__":
    main()
