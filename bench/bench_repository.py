"""Repository benchmark: full backup, incremental backup with a change list, restore to a
file — repofs beside borg and restic (Debian's packages) on the same image, same run.

    python bench/bench_repository.py --size 1G [--workdir /var/tmp/bench] [--chunk-sizes 256K,1M,4M]
    python bench/bench_repository.py --image IMG     # reuse an image made by bench/dataset.py

Prints wall time, CPU time, peak RSS and bytes stored, and the ratios the targets use. The
machine's limit for the restore is measured in the same run, just after repofs's restore: ``dd``
writing the same image to the same file system, fsync'd, its zero blocks skipped as holes.
repofs runs from compiled bytecode, as an installed copy does (``measure.as_installed``; an
unmeasured warm-up on a small image compiles it), unless ``--no-bytecode-cache``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataset import change_list, make_image, parse_size  # noqa: E402
from measure import Run, add_bytecode_option, as_installed, du, repofs, run, warm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PASS = "bench-passphrase"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--chunk-sizes", default="1M", help="repofs chunk sizes to compare")
    ap.add_argument("--no-peers", action="store_true")
    add_bytecode_option(ap)
    ap.add_argument("--image", default=None, help="an existing data set image (bench/dataset.py), copied")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="repofs-bench-", dir=a.workdir)
    try:
        img = os.path.join(work, "disk.img")
        if a.image:
            subprocess.run(["cp", "--sparse=always", a.image, img], check=True)  # holes stay holes
            a.size = str(os.path.getsize(img))
            print(f"# data set: a copy of {a.image} in {work}", flush=True)
        else:
            print(f"# data set: {a.size} image in {work}", flush=True)
            make_image(img, parse_size(a.size))
        gen1 = img + ".gen1"
        shutil.copyfile(img, gen1)  # keep the first version for the peers' second run
        env = dict(os.environ, REPOFS_PASSWORD=PASS, BORG_PASSPHRASE=PASS, RESTIC_PASSWORD=PASS,
                   PYTHONPATH=os.path.dirname(HERE))
        if not a.no_bytecode_cache:
            env = as_installed(env, os.path.join(work, "pycache"))
            warm_up(work, env)
        allocated = os.stat(img).st_blocks * 512
        rows = []
        changes = None
        # the change list is applied to a copy, so every tool sees identical versions
        img2 = img + ".gen2"
        shutil.copyfile(img, img2)
        changes = change_list(img2, 0.03)
        changed_bytes = sum(n for _, n in changes)
        with open(os.path.join(work, "changes.json"), "w") as f:
            json.dump(changes, f)
        print(f"# image {parse_size(a.size)} bytes, {allocated} allocated, change list {changed_bytes} bytes "
              f"in {len(changes)} extents", flush=True)
        limit: Run | None = None
        growth: dict[str, int] = {}     # per chunk size: the incremental's growth in bytes stored
        for cs in a.chunk_sizes.split(","):
            r = os.path.join(work, f"repofs-{cs}")
            run(repofs("init", "-r", r, "--chunk-size", str(parse_size(cs))), env=env)
            warm(img)
            full = run(repofs("backup", f"file:{img}", "--vm", "bench", "-r", r), env=env)
            stored_full = du(r)
            bytes_full = du(r, apparent=True)
            shutil.copyfile(img2, img)  # the disk moves on to version 2
            warm(img)
            inc = run(repofs("backup", f"file:{img}", "--vm", "bench", "-r", r, "--changed-extents",
                             os.path.join(work, "changes.json")), env=env)
            out = os.path.join(work, "restore-repofs")
            res = run(repofs("restore", "vm:bench", "--to-dir", out, "-r", r), env=env)
            ok = run(["cmp", img2, os.path.join(out, "disk.raw")], check=False).rc == 0
            shutil.rmtree(out)
            if limit is None:   # the machine's limit beside the restore: the same image written
                copy = os.path.join(work, "dd.raw")     # by dd, fsync'd, zeros skipped as holes
                limit = run(["dd", f"if={img2}", f"of={copy}", "bs=4M", "conv=fsync,sparse"])
                os.unlink(copy)
            shutil.copyfile(gen1, img)
            rows.append((f"repofs {cs}", full, inc, res, stored_full, du(r), ok))
            growth.setdefault(cs, du(r, apparent=True) - bytes_full)
        if not a.no_peers:
            rows += peers(work, img, img2, gen1, env)
        report(rows, parse_size(a.size), allocated, changed_bytes, limit)
        union = len(set().union(*(range(o // 4096, -(-(o + n) // 4096)) for o, n in changes))) * 4096
        for cs, grown in growth.items():
            print(f"repofs {cs}: the incremental's stored bytes grew by {grown / 1e6:.2f} MB (disk blocks: "
                  f"the table's columns) for a change list of {changed_bytes / 1e6:.2f} MB, "
                  f"{union / 1e6:.2f} MB once overlapping extents count once (target: no more)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def warm_up(work: str, env: dict) -> None:
    """Unmeasured: a backup with a change list and a restore of a small image in a scratch
    repository, so that the measured commands run from compiled bytecode."""
    d = os.path.join(work, "warm-up")
    os.makedirs(d)
    img = os.path.join(d, "small.img")
    with open(img, "wb") as f:
        f.write(os.urandom(4 << 20) + bytes(4 << 20))
    changes = os.path.join(d, "changes.json")
    with open(changes, "w") as f:
        json.dump([[0, 4096]], f)
    r = os.path.join(d, "repo")
    run(repofs("init", "-r", r), env=env)
    run(repofs("backup", f"file:{img}", "--vm", "w", "-r", r), env=env)
    run(repofs("backup", f"file:{img}", "--vm", "w", "-r", r, "--changed-extents", changes), env=env)
    run(repofs("restore", "vm:w", "--to-dir", os.path.join(d, "out"), "-r", r), env=env)
    shutil.rmtree(d)


def peers(work: str, img: str, img2: str, gen1: str, env: dict) -> list:
    rows = []
    b = os.path.join(work, "borg")
    run(["borg", "init", "--encryption=repokey-blake2", b], env=env)
    warm(img)
    full = run(["borg", "create", f"{b}::g1", img], env=env)
    stored_full = du(b)
    shutil.copyfile(img2, img)
    warm(img)
    inc = run(["borg", "create", f"{b}::g2", img], env=env)
    out = os.path.join(work, "restore-borg")
    os.makedirs(out)
    res = run(["sh", "-c", f"cd {out} && borg extract --sparse {b}::g2"], env=env)
    restored = os.path.join(out, img.lstrip("/"))
    ok = run(["cmp", img2, restored], check=False).rc == 0
    shutil.rmtree(out)
    rows.append(("borg", full, inc, res, stored_full, du(b), ok))
    shutil.copyfile(gen1, img)

    r = os.path.join(work, "restic")
    run(["restic", "init", "-r", r], env=env)
    warm(img)
    full = run(["restic", "backup", "-q", "-r", r, img], env=env)
    stored_full = du(r)
    shutil.copyfile(img2, img)
    warm(img)
    inc = run(["restic", "backup", "-q", "-r", r, img], env=env)
    out = os.path.join(work, "restore-restic")
    res = run(["restic", "restore", "-q", "-r", r, "latest", "--target", out], env=env)
    ok = run(["cmp", img2, os.path.join(out, img.lstrip("/"))], check=False).rc == 0
    shutil.rmtree(out)
    rows.append(("restic", full, inc, res, stored_full, du(r), ok))
    shutil.copyfile(gen1, img)
    return rows


def report(rows: list, size: int, allocated: int, changed: int, limit: Run | None) -> None:
    mb = size / 1e6
    print(f"\n{'tool':14} {'full s':>7} {'MB/s':>7} {'cpu s':>6} {'rss MiB':>7} | {'incr s':>7} {'%full':>6} | "
          f"{'restore s':>9} {'MB/s':>7} {'rss MiB':>7} | {'stored MB':>9} {'after incr':>10} ok")
    for name, full, inc, res, stored, stored2, ok in rows:
        print(f"{name:14} {full.wall:7.2f} {mb / full.wall:7.0f} {full.cpu:6.2f} {full.rss_mib:7.0f} | "
              f"{inc.wall:7.2f} {100 * inc.wall / full.wall:5.1f}% | {res.wall:9.2f} {mb / res.wall:7.0f} "
              f"{res.rss_mib:7.0f} | {stored / 1e6:9.1f} {stored2 / 1e6:10.1f} {'yes' if ok else 'NO'}")
    ours = rows[0]
    if limit is not None:
        print(f"\nrestore against dd writing the same image just after it (conv=fsync,sparse): "
              f"{limit.wall / ours[3].wall:.0%} of dd's speed, dd {limit.wall:.2f} s (target >= 85%)")
    peers = {r[0]: r for r in rows if r[0] in ("borg", "restic")}
    if peers:
        fastest_full = min(p[1].wall for p in peers.values())
        print(f"\nfull backup speed-up vs the faster peer: {fastest_full / ours[1].wall:.2f}x (target >= 3.5x)")
        print(f"incremental / full: {ours[2].wall / ours[1].wall:.1%} (target <= 8%)")
        if "restic" in peers:
            print(f"restore speed-up vs restic: {peers['restic'][3].wall / ours[3].wall:.2f}x (target >= 2x)")
        print(f"stored growth by the incremental: {(ours[5] - ours[4]) / 1e6:.1f} MB for a change list "
              f"of {changed / 1e6:.1f} MB (target: no more)")
        smallest = min(p[4] for p in peers.values())
        print(f"bytes stored vs the smaller peer: {ours[4] / smallest:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
