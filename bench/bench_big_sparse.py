"""Peak memory of a backup, a restore and a mount against the size of a sparse disk, for two
or more versions of repofs side by side: does memory grow with the disk or with its data?

For each size: a sparse image (``truncate -s SIZE``, then ``--extents`` random 4 MiB extents
of random bytes written at random 4 MiB-aligned offsets, the same for every size with one
seed), and for each tree, interleaved:
  - ``repofs backup file:IMAGE`` into a new repository: peak RSS (GNU time %M);
  - ``repofs restore --to-dir``: peak RSS, and the restored file compared with the image over
    both files' data runs (``SEEK_DATA``/``SEEK_HOLE``; the rest of both is holes) and in size;
  - ``repofs mount -f``: every extent read through the flat disk file and compared, and reads
    in the holes checked for zeros; peak RSS of the daemon (GNU time %M, after unmounting).

    flock /tmp/repofs-bench.lock .venv/bin/python bench/bench_big_sparse.py \\
        --sizes 1G,64G,2T --workdir /var/tmp OLD_TREE NEW_TREE

Each tree is a checkout of this repository run with this venv's packages (PYTHONPATH=tree;
``git worktree add --detach ../base main`` gives the "before" tree). Needs root (FUSE) and
GNU time (Debian package ``time``); about 0.4 GB of disk per tree and size, removed as it goes.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ab import cli, env_for  # noqa: E402
from bench_mount import unmount  # noqa: E402
from dataset import parse_size  # noqa: E402
from measure import GNU_TIME, PY, wait_for  # noqa: E402

MiB = 1 << 20
EXTENT = 4 * MiB
VM = "big"


def make_sparse(path: str, size: int, extents: int, seed: int) -> list[int]:
    """A sparse image of ``size`` bytes with ``extents`` random 4 MiB extents; their offsets."""
    rng = random.Random(seed)
    slots = size // EXTENT
    offsets = sorted(rng.sample(range(slots), min(extents, slots)))
    with open(path, "wb") as f:
        f.truncate(size)
        for k in offsets:
            f.seek(k * EXTENT)
            f.write(rng.randbytes(EXTENT))
    return [k * EXTENT for k in offsets]


def data_runs(path: str) -> list[tuple[int, int]]:
    """(offset, end) of the file's data, as the file system reports it."""
    runs = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return runs


def same_sparse(a: str, b: str) -> bool:
    """Whether two sparse files hold the same bytes: same size, and equal over the union of
    their data runs (outside those both read as zeros)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in sorted(data_runs(a) + data_runs(b)):
            pos = start
            while pos < end:
                n = min(8 * MiB, end - pos)
                if os.pread(fa.fileno(), n, pos) != os.pread(fb.fileno(), n, pos):
                    return False
                pos += n
    return True


def mount_peak(tree: str, repo: str, mnt: Path, image: str, offsets: list[int], size: int,
               stem: str) -> tuple[float, bool]:
    """(peak RSS MiB of the mount daemon, every read matched): the extents read through the
    mount and compared, 64 reads in the holes checked for zeros."""
    fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    proc = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", rss_file, PY, "-m", "repofs.cli", "mount", "-f",
                             repo, str(mnt)], env=env_for(tree), cwd=tree,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = True
    try:
        flat = mnt / VM / "latest" / f"{stem}-flat.vmdk"
        wait_for(flat)
        taken = set(offsets)
        rng = random.Random(2)
        holes = [k * EXTENT for k in (rng.randrange(size // EXTENT) for _ in range(64)) if k * EXTENT not in taken]
        with open(image, "rb") as src, open(flat, "rb") as got:
            if os.fstat(got.fileno()).st_size != size:
                ok = False
            for off in offsets:
                ok &= os.pread(got.fileno(), EXTENT, off) == os.pread(src.fileno(), EXTENT, off)
            for off in holes:
                ok &= os.pread(got.fileno(), 4096, off) == bytes(4096)
    finally:
        unmount(mnt)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with open(rss_file) as f:
        words = f.read().split()
    os.unlink(rss_file)
    return (int(words[-1]) / 1024 if words and words[-1].isdigit() else 0.0), ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="checkouts of repofs to compare")
    ap.add_argument("--sizes", default="1G,64G,2T")
    ap.add_argument("--extents", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default="/var/tmp")
    a = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists(GNU_TIME):
        sys.exit("bench_big_sparse: needs root (FUSE) and GNU time (/usr/bin/time)")
    trees = [os.path.abspath(t) for t in a.trees]
    work = tempfile.mkdtemp(prefix="bench-big-sparse-", dir=a.workdir)
    mnt = Path(work) / "mnt"
    mnt.mkdir()
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        for label in a.sizes.split(","):
            size = parse_size(label)
            image = os.path.join(work, "disk.img")
            offsets = make_sparse(image, size, a.extents, a.seed)
            for tree in trees:
                repo = os.path.join(work, "repo")
                out = os.path.join(work, "restored")
                shutil.rmtree(repo, ignore_errors=True)
                cli(tree, "init", "-r", repo)
                t0 = time.monotonic()
                b = cli(tree, "backup", f"file:{image}", "--vm", VM, "-r", repo)
                r = cli(tree, "restore", f"vm:{VM}", "--to-dir", out, "-r", repo)
                restored = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".raw")]
                same = len(restored) == 1 and same_sparse(image, restored[0])
                shutil.rmtree(out, ignore_errors=True)
                m, read_ok = mount_peak(tree, repo, mnt, image, offsets, size, Path(image).stem)
                print(f"{label} {tree}: peak RSS backup {b.rss_mib:.0f} MiB ({b.wall:.1f} s, {b.cpu:.1f} CPU s), "
                      f"restore {r.rss_mib:.0f} MiB ({r.wall:.1f} s, {r.cpu:.1f} CPU s), mount {m:.0f} MiB; "
                      f"restored = source: {'yes' if same else 'NO'}; mount reads = source: "
                      f"{'yes' if read_ok else 'NO'} ({time.monotonic() - t0:.0f} s)", flush=True)
                shutil.rmtree(repo, ignore_errors=True)
            os.unlink(image)
    finally:
        unmount(mnt)
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
