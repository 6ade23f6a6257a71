"""Backups beside a prune: how much a running ``repofs prune`` slows a ``repofs backup`` into
the same repository.

    .venv/bin/python bench/bench_prune_beside.py --chunks 100k --image 256M --rounds 4 --prune-nice 0,10,19 [--work DIR]
        [--tree OLD]

The repository (encrypted, 1 MiB chunks) is built through ``format/`` with ``--chunks`` tiny
chunks in ``rounds × (values of --prune-nice) + 1`` generations (bench/bench_prune.py
``build_repofs``), so that every prune has the same work: one generation is forgotten before
it, and it marks the rest, walks every object and moves and deletes a generation's share.
Each round:

1. ``alone``: a full backup of a fresh image of ``--image`` bytes of random data (fresh: no
   chunk of it is in the repository yet), no prune running;
2. ``beside``, once per ``--prune-nice`` value: a prune is started (``repofs prune --nice N``;
   until the option existed, the runs used ``nice -n N repofs prune``); once
   its lease is written (it has begun reading), a full backup of another fresh image runs;
   the backup counts only if the prune was still running when it ended.

With ``--control`` each round also runs the same backup alone a second time (of another
fresh image, no prune): its ratio to the first is the measure's own spread, the yardstick for
the beside/alone ratios.

Prints each backup's wall and CPU time and the ratio beside/alone per round (a round's
backups run back to back, so the machine's other load is alike for them; their order is
reversed every other round, as the later backups of a round ran slower with no prune at all),
and the prunes' times. At the end: the ratios' medians, and the median wall time of all the
backups beside a prune against that of all the backups with none (alone and, with
``--control``, again) — on a shared machine a backup's time moves by up to 1.7x between rounds
with no prune at all, so one round's ratio says little and the pooled medians say what the
prune costs. Each image is fsynced before its backup, so that its writeback is not timed.

The repository's objects are fresh, so the prunes run with ``REPOFS_PRUNE_FRESH_SECONDS=0``
(otherwise they would leave every object of the last five minutes alone); the objects a
running backup writes are still protected by its lease.

``--tree OLD`` runs both commands with another checkout's code (e.g. the code before a change,
``git worktree add --detach``), to set runs of two versions side by side.
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
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_prune import ROOT, build_repofs, compile_tree, parse_count, repofs_env  # noqa: E402
from dataset import parse_size  # noqa: E402
from measure import repofs, run  # noqa: E402

from format.marks import forget  # noqa: E402
from format.repository import Repository  # noqa: E402

MIB = 1 << 20


def fresh_image(path: Path, size: int) -> None:
    """Random bytes, on the disk before the backup starts: without the fsync the image's own
    writeback ran during the timed backup, a cost of the benchmark's, not of the prune's."""
    with open(path, "wb") as f:
        for _ in range(size // (8 * MIB)):
            f.write(os.urandom(8 * MIB))
        f.flush()
        os.fsync(f.fileno())


def backup(path: Path, image: Path, env: dict, vm: str):
    # cwd: ``python -m`` puts the working directory before PYTHONPATH
    return run(repofs("backup", f"file:{image}", "--vm", vm, "--json"), env=env, cwd=env["PYTHONPATH"])


def beside_prune(path: Path, image: Path, env: dict, nice: int, vm: str):
    """A backup of ``image`` while a prune runs: (the backup's Run, whether the prune was
    still running when it ended, the prune's wall time, when the backup started, its report)."""
    cmd = repofs("prune", "--json", "--nice", str(nice))
    t0 = time.monotonic()
    prune = subprocess.Popen(cmd, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    leases = path / "leases"
    while prune.poll() is None and not (leases.is_dir() and any(leases.iterdir())):
        time.sleep(0.05)
    started = time.monotonic() - t0
    beside = backup(path, image, env, vm)
    overlapped = prune.poll() is None
    out, err = prune.communicate()
    prune_wall = time.monotonic() - t0
    if prune.returncode != 0:
        raise RuntimeError(f"prune failed: {err.strip()}")
    return beside, overlapped, prune_wall, started, json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="200k", help="chunks in the repository being pruned")
    ap.add_argument("--image", default="256M", help="size of each backed-up image")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--control", action="store_true", help="also run a second backup alone each round: its "
                    "ratio to the first is what the measure varies by with no prune at all")
    ap.add_argument("--work", default=None, help="where the repository and images live")
    ap.add_argument("--tree", default=None, help="run repofs with this checkout's code (default: this one)")
    ap.add_argument("--prune-nice", default="0,10", help="run the prune with `--nice N` (0: at the "
                    "benchmark's priority); a list runs one prune per value in each round, beside a backup each")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-beside-", dir=args.work))
    n, size = parse_count(args.chunks), parse_size(args.image)
    path = work / "repo"
    env = repofs_env(path, work, Path(args.tree).resolve() if args.tree else ROOT)
    try:
        compile_tree(Path(env["PYTHONPATH"]))
        t = time.monotonic()
        nices = [int(v) for v in args.prune_nice.split(",")]
        names = build_repofs(path, n, chunk=MIB, generations=args.rounds * len(nices) + 1)
        print(f"repository of {n:,} chunks in {len(names)} generations built in "
              f"{time.monotonic() - t:.0f} s", flush=True)
        image = work / "disk.img"
        ratios: dict[int, list[float]] = {nice: [] for nice in nices}
        controls: list[float] = []
        # every counted backup's wall time: with no prune, and beside a prune at each niceness
        alone_walls: list[float] = []
        beside_walls: dict[int, list[float]] = {nice: [] for nice in nices}
        forgotten = 0
        for r in range(args.rounds):
            # the round's backups, in turn: the alone ones first in even rounds, last in odd ones
            # (the later backups of a round were up to 1.25x slower with no prune at all)
            jobs: list[tuple[str, int]] = [("alone", 0)]
            if args.control:    # the same backup again, no prune: the spread of the measure itself
                jobs.append(("again", 0))
            jobs += [("beside", nice) for nice in nices]
            if r % 2:
                jobs = jobs[::-1]
            runs, texts = {}, {}
            for kind, nice in jobs:
                fresh_image(image, size)
                if kind != "beside":
                    runs[kind] = backup(path, image, env, f"{kind}{r}")
                    continue
                repo = Repository.open(path, env["REPOFS_PASSWORD"].encode())
                forget(repo, names[forgotten], "bench", f"g{forgotten}")
                forgotten += 1
                beside, overlapped, prune_wall, started, report = beside_prune(path, image, env, nice,
                                                                               f"beside{r}n{nice}")
                runs[nice] = beside
                texts[nice] = (overlapped,
                               f"{'' if overlapped else ' (prune ended first: not counted)'}, prune "
                               f"{prune_wall:.1f} s (backup from {started:.1f} s), freed {report['freed_chunks']:,}")
            alone = runs["alone"]
            alone_walls += [runs[k].wall for k in ("alone", "again") if k in runs]
            line = f"round {r}: backup alone {alone.wall:6.2f} s (cpu {alone.cpu:5.2f})"
            if args.control:
                again = runs["again"]
                controls.append(again.wall / alone.wall)
                line += f"; alone again {again.wall:6.2f} s (cpu {again.cpu:5.2f}) = {controls[-1]:.2f}x"
            for nice, (overlapped, text) in texts.items():
                beside = runs[nice]
                ratio = beside.wall / alone.wall
                if overlapped:
                    ratios[nice].append(ratio)
                    beside_walls[nice].append(beside.wall)
                line += (f"; beside a prune (nice {nice}) {beside.wall:6.2f} s "
                         f"(cpu {beside.cpu:5.2f}) = {ratio:.2f}x{text}")
            print(f"{line}; load {os.getloadavg()[0]:.1f}{'' if r % 2 == 0 else ' (order reversed)'}", flush=True)
        if controls:
            print(f"control (a second backup alone): again/alone over {len(controls)} rounds: "
                  f"min {min(controls):.2f}x, median {median(controls):.2f}x, "
                  f"max {max(controls):.2f}x")
        for nice, got in ratios.items():
            if got:
                line = (f"prune at nice {nice}: beside/alone over {len(got)} rounds: "
                        f"min {min(got):.2f}x, median {median(got):.2f}x, max {max(got):.2f}x")
                if controls:    # what is left of the median once the measure's own drift is taken out
                    line += f"; median beside / median again {median(got) / median(controls):.2f}x"
                print(line)
                # Pooled: the backups' times themselves move by up to 1.7x between rounds on a
                # shared machine, so a round's ratio is mostly that; the medians of all the
                # backups with and without a prune beside them are what the prune changes.
                walls = beside_walls[nice]
                print(f"prune at nice {nice}: median backup beside a prune {median(walls):.2f} s "
                      f"({len(walls)}) against {median(alone_walls):.2f} s with none "
                      f"({len(alone_walls)}, alone{' and again' if controls else ''}) = "
                      f"{median(walls) / median(alone_walls):.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
