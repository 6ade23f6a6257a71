"""Prune at scale: time and peak RSS of ``repofs prune`` on repositories of N synthetic chunks,
and the memory of prune's marks (format/idset.py) for 10 million ids measured directly.

    .venv/bin/python bench/bench_prune.py --sizes 100k,1M [--work DIR] [--idset 10M]

Each repository is written directly through format/ (tiny chunks: the work of prune is per
object, not per byte): one generation whose disks (at most ``DISK_SLOTS`` = 1 M chunks each: a
1 TiB disk at 1 MiB chunks) name 90% of the chunks, the other 10% left unreferenced, so prune
marks 0.9 N ids, walks N objects, and moves and deletes 0.1 N. The
prune runs as a child process (the real CLI) and is measured with wait4 (bench/measure.py).
Prints one line per size and an extrapolation to 10 M chunks.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import PY, repofs, run  # noqa: E402

from format.fixedindex import FixedIndex  # noqa: E402
from format.manifest import DiskEntry, Manifest  # noqa: E402
from format.repository import Repository  # noqa: E402

CHUNK = 64 << 10
DISK_SLOTS = 1_000_000


def parse_count(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * mult)


def build(path: Path, n: int) -> None:
    repo = Repository.init(path, None, encrypted=False, chunk_size=CHUNK)
    referenced = n * 9 // 10
    disks = []
    index = None
    for k in range(n):
        data = k.to_bytes(8, "little") * 2          # tiny, distinct plaintexts
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data, sync=False)
        if k < referenced:
            slot = k % DISK_SLOTS
            if slot == 0:
                index = FixedIndex.empty(min(DISK_SLOTS, referenced - k) * CHUNK, CHUNK)
                disks.append(index)
            index.set(slot, cid)
    repo.sync()
    entries = [DiskEntry(f"disk{d}", ix.capacity, CHUNK, repo.put_index(ix)) for d, ix in enumerate(disks)]
    repo.put_manifest(Manifest("bench", "g", "2026-01-01T00:00:00.000000Z", time.time_ns(), None, entries))


def bench_idset(n: int) -> None:
    code = ("import os,resource,sys,time\n"
            "sys.path.insert(0, %r)\n"
            "from format.idset import IdSet\n"
            "s=IdSet(); t=time.monotonic()\n"
            "for k in range(%d): s.add(os.urandom(8) if k %% 4096 else os.urandom(32))\n"
            "s.freeze(); print(len(s), round(time.monotonic()-t,1))\n"
            % (str(Path(__file__).resolve().parent.parent), n))
    r = run([PY, "-c", code])
    print(f"idset {n:>11,} ids: {r.wall:7.1f} s, peak RSS {r.rss_mib:7.1f} MiB  ({r.out.strip()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,1M")
    ap.add_argument("--work", default=None, help="where to build the repositories (default: a temp dir)")
    ap.add_argument("--idset", default="10M", help="also measure the marks alone for this many ids ('' to skip)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prune-"))
    results = []
    for n in [parse_count(s) for s in args.sizes.split(",") if s]:
        path = work / f"repo-{n}"
        shutil.rmtree(path, ignore_errors=True)
        t = time.monotonic()
        build(path, n)
        built = time.monotonic() - t
        env = {**os.environ, "REPOFS_REPOSITORY": str(path), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        r = run(repofs("prune", "--json"), env=env)
        results.append((n, r))
        print(f"prune {n:>11,} chunks: {r.wall:7.1f} s, cpu {r.cpu:7.1f} s, peak RSS {r.rss_mib:7.1f} MiB "
              f"(built in {built:.0f} s)", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    if len(results) >= 2:
        (n1, r1), (n2, r2) = results[0], results[-1]
        per = (r2.rss_mib - r1.rss_mib) / (n2 - n1)
        slope_t = (r2.wall - r1.wall) / (n2 - n1)
        ten = 10_000_000
        print(f"extrapolated to {ten:,} chunks: peak RSS {r2.rss_mib + per * (ten - n2):.0f} MiB, "
              f"{r2.wall + slope_t * (ten - n2):.0f} s")
    if args.idset:
        bench_idset(parse_count(args.idset))


if __name__ == "__main__":
    main()
