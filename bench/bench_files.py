"""Guest files out of a backed-up disk image: repofs's three ways beside borg and restic, in one
run on one image.

    sudo .venv/bin/python bench/bench_files.py --size 1G

Builds a GPT disk image whose ext4 partition holds a 100 MB file, a tree of many small files
(seeded text and binaries) and filler, backs it up into a repofs, a borg and a restic
repository, then measures for each way of reaching the guest files, with the page cache
dropped before each step (caches inside the FUSE servers stay warm, as they would for a user):

  setup  from the command to the partition being browsable (mount, loop device, kernel mount;
         for the rootless reader: open the repository, read the partition table, open ext4)
  setup+walk  from the command to the end of a first walk of the tree; for the ways through a
         loop device (whose servers may keep working after setup) a walk started right after
         setup, before the steps below; for the others (nothing runs after setup) setup + walk
  list   listing the root directory of the ext4 partition
  walk   walking the whole tree (readdir + lstat of every entry)
  read   reading the 100 MB file

``--cold-walk``: the issue's cold walk instead — a plain `repofs mount` (default settings), a
read-only loop device on the partition's range of its flat file (`losetup -r -o`), the ext4
mounted `ro,noload`, the page cache dropped, then `find MOUNT | wc -l` timed: on a fresh
mount (*first*: the mount's own cache cold too) and again after dropping the page cache
(*again*: only the kernel's caches cold). Several checkouts side by side, interleaved per
round (``--trees OLD NEW``; each backs up the image with its own code); ``--image`` keeps
the image between runs (building 80,000 files takes minutes). With ``--change`` the walks are
of an incremental: after the full backup, the guest's files change through the kernel's ext4
(files added in new folders, rewritten, deleted, moved: ``guest_change``), and each tree
backs the changed image up with the blocks that differ as its change list, printing what it
stored and how much guest metadata its index keeps copied:

    flock /tmp/repofs-bench.lock nice -n -10 .venv/bin/python bench/bench_files.py --cold-walk \
        --size 2G --files 80000 --image /var/tmp/walk80k.img --trees OLD_TREE NEW_TREE

Ways: `repofs files` rootless (in-process, the code behind `repofs files ls/get`),
`repofs mount` + its `files/` folder (when the mount has one), `repofs files mount` (loop device +
kernel ext4 over the repofs mount), `borg mount` + loop device + kernel ext4, `restic mount`
+ loop device + kernel ext4. Needs root; cleans up on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from dataset import parse_size  # noqa: E402
from fixtures_repo import diff_extents  # noqa: E402
from measure import PY, REPOFS, drop_caches, mounted, wait_for  # noqa: E402
MiB = 1 << 20
PASS = "bench passphrase"
VM = "bench"
BIG = "data/file100M.bin"
BIG_SIZE = 100 * 1000 * 1000
PART_OFFSET = MiB




def build_image(path: Path, size: int, seed: int, files: int) -> int:
    """The image; returns the number of entries in the tree."""
    rng = random.Random(seed)
    words = "kernel nginx request session error info debug user the of and to in".split()
    with tempfile.TemporaryDirectory(dir=path.parent) as tree:
        t = Path(tree)
        (t / "data").mkdir()
        with open(t / BIG, "wb") as f:                    # 100 MB, half random, half text
            left = BIG_SIZE
            while left:
                n = min(MiB, left)
                f.write(rng.randbytes(n) if left % (2 * MiB) < MiB else
                        (" ".join(rng.choice(words) for _ in range(n // 5)) + "\n").encode()[:n])
                left -= n
        entries = 2
        for i in range(files):                            # many small files, nested 3 deep
            d = t / "tree" / f"a{i % 20:02}" / f"b{i % 7}" / f"c{i % 5}"
            if not d.exists():
                d.mkdir(parents=True)
                entries += 1
            n = rng.randrange(512, 24 * 1024)
            body = rng.randbytes(n) if i % 4 == 0 else \
                (" ".join(rng.choice(words) for _ in range(n // 5)) + "\n").encode()[:n]
            (d / f"file {i:06}.txt").write_bytes(body)
            entries += 1
        filler = int(size * 0.5) - BIG_SIZE - files * 12 * 1024
        k = 0
        while filler > 0:                                 # incompressible filler
            n = min(64 * MiB, filler)
            with open(t / "data" / f"filler{k}.bin", "wb") as f:
                for _ in range(n // MiB):
                    f.write(rng.randbytes(MiB))
            filler -= n
            k += 1
            entries += 1
        with open(path, "wb") as f:
            f.truncate(size)
        subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\n2048,,L\n", text=True, check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={PART_OFFSET}", "-d", tree, str(path),
                        f"{(size - 2 * MiB) // 1024}k"], check=True)
    return entries








def fuse_unmount(path: Path) -> None:
    for args in (["-u"], ["-u", "-z"]):
        for _ in range(20):
            if not mounted(path):
                return
            if subprocess.run(["fusermount3", *args, str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


@dataclass
class Row:
    name: str
    setup: float = float("nan")
    first: float = float("nan")       # setup + walk, see the module's docstring
    list: float = float("nan")
    walk: float = float("nan")
    read: float = float("nan")
    entries: int = 0
    note: str = ""


def walk_local(root: Path) -> int:
    n = 0
    stack = [str(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n


def read_local(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            total += len(chunk)
    return total


def first_walk(row: Row, root: Path, start: float) -> None:
    """A walk right after setup, without a pause; ``start`` is when setup began."""
    walk_local(root)
    row.first = time.monotonic() - start


def measure_local(row: Row, root: Path) -> None:
    drop_caches()
    t = time.monotonic()
    os.listdir(root)
    row.list = time.monotonic() - t
    drop_caches()
    t = time.monotonic()
    row.entries = walk_local(root)
    row.walk = time.monotonic() - t
    drop_caches()
    t = time.monotonic()
    assert read_local(root / BIG) == BIG_SIZE
    row.read = time.monotonic() - t


def rootless(repo: Path) -> Row:
    from format.repository import Repository
    from repofs.guest.guestfs import GuestGeneration
    from repofs.view.tree import RepositoryView
    row = Row("repofs files (rootless)")
    drop_caches()
    t = time.monotonic()
    gen = GuestGeneration(RepositoryView(Repository.open(repo, PASS.encode())).generation(VM))
    part = f"{gen.disk_labels()[0]}/p1"
    gen.tree(gen.disk_labels()[0], "p1")
    row.setup = time.monotonic() - t
    t = time.monotonic()
    gen.listdir(part)
    row.list = time.monotonic() - t
    drop_caches()
    t = time.monotonic()
    n, stack = 0, [part]
    while stack:
        d = stack.pop()
        for name, s in gen.listdir(d):
            n += 1
            if s.is_dir:
                stack.append(f"{d}/{name}")
    row.walk, row.entries = time.monotonic() - t, n
    drop_caches()
    t = time.monotonic()
    f, off = gen.open(f"{part}/{BIG}"), 0
    while data := f.read(off, MiB):
        off += len(data)
    assert off == BIG_SIZE
    row.read = time.monotonic() - t
    row.first = row.setup + row.walk
    return row


def loop_over(row: Row, flat: Path, where: Path, start: float) -> None:
    """A read-only loop device on the partition's range of ``flat``, mounted ro,noload;
    ``start``: when the peer's mount command started."""
    where.mkdir(parents=True, exist_ok=True)
    size = os.path.getsize(flat) - PART_OFFSET - 33 * 512
    loop = subprocess.run(["losetup", "-r", "-f", "--show", "-o", str(PART_OFFSET), "--sizelimit", str(size),
                           str(flat)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", "-o", "ro,noload", loop, str(where)], check=True)
        try:
            first_walk(row, where, start)
            measure_local(row, where)
        finally:
            subprocess.run(["umount", str(where)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def tree_env(tree: str, work: Path) -> dict:
    env = {**os.environ, "REPOFS_PASSWORD_FILE": str(work / "pw"), "PYTHONPATH": tree}
    env.pop("REPOFS_REPOSITORY", None)
    return env


def timed_find(where: Path) -> tuple[float, int]:
    """``find WHERE | wc -l``: seconds and lines."""
    t = time.monotonic()
    out = subprocess.run(["find", str(where)], stdout=subprocess.PIPE, check=True).stdout
    return time.monotonic() - t, out.count(b"\n")


def guest_change(image: Path, changed: Path, seed: int) -> list[tuple[int, int]]:
    """A day's work of the guest, on a copy of ``image`` made at ``changed``: through the
    kernel's ext4 (a read-write loop mount), 2,000 new files in 40 new folders, 400 files
    rewritten, 200 deleted, 100 moved to other folders. Returns where the two images differ,
    in 4 KiB blocks (what changed-block tracking would report)."""
    subprocess.run(["cp", "--sparse=always", str(image), str(changed)], check=True)
    where = changed.parent / "rw"
    where.mkdir(exist_ok=True)
    size = os.path.getsize(changed) - PART_OFFSET - 33 * 512
    loop = subprocess.run(["losetup", "-f", "--show", "-o", str(PART_OFFSET), "--sizelimit", str(size),
                           str(changed)], capture_output=True, text=True, check=True).stdout.strip()
    rng = random.Random(seed)
    try:
        subprocess.run(["mount", "-t", "ext4", loop, str(where)], check=True)
        try:
            files = sorted(p for p in (where / "tree").rglob("*.txt"))
            for i in range(2000):
                d = where / "tree" / f"new{i % 40:02}"
                d.mkdir(exist_ok=True)
                (d / f"added {i:05}.txt").write_bytes(rng.randbytes(rng.randrange(512, 16 * 1024)))
            picked = rng.sample(files, 700)
            for p in picked[:400]:
                p.write_bytes(rng.randbytes(rng.randrange(512, 24 * 1024)))
            for p in picked[400:600]:
                p.unlink()
            for k, p in enumerate(picked[600:]):
                p.rename(where / "tree" / f"new{k % 40:02}" / f"moved {p.name}")
        finally:
            subprocess.run(["umount", str(where)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    return diff_extents(image, changed)


def cold_walk(trees: list[str], work: Path, image: Path, rounds: int, keep: Path | None = None,
              change: bool = False) -> None:
    """The issue's cold walk of a loop-mounted guest through a plain mount, per tree and round.
    ``keep``: each tree's repository is kept there (and reused when present: backed up
    beforehand, the measured part is only mounts and walks). ``change``: the walks are of an
    incremental made after ``guest_change`` (its change list given), not of the full backup."""
    repos = {}
    for i, tree in enumerate(trees):
        repo = repos[tree] = (keep or work) / f"repo{i}"
        env = tree_env(tree, work)
        if keep is not None and (repo / "config").exists():
            continue
        subprocess.run([PY, "-m", "repofs.cli", "init", "-r", str(repo)], env=env, cwd=tree, check=True,
                       capture_output=True)
        subprocess.run([PY, "-m", "repofs.cli", "backup", f"file:{image}", "--vm", VM, "-r", str(repo)],
                       env=env, cwd=tree, check=True, capture_output=True)
    if change:
        (work / "changed").mkdir(exist_ok=True)
        changed = work / "changed" / image.name
        extents = guest_change(image, changed, seed=5)
        (work / "changes.json").write_text(json.dumps([list(e) for e in extents]))
        print(f"guest change: {len(extents)} extents, {sum(n for _, n in extents)} bytes", flush=True)
        for tree in trees:
            out = subprocess.run([PY, "-m", "repofs.cli", "backup", f"file:{changed}", "--vm", VM, "-r",
                                  str(repos[tree]), "--changed-extents", str(work / "changes.json"), "--json"],
                                 env=tree_env(tree, work), cwd=tree, check=True, capture_output=True).stdout
            d = json.loads(out)["disks"][0]
            print(f"incremental {tree}: stored {d['new_bytes']} bytes in {d['new_chunks']} chunks, "
                  f"guest metadata copied {d['copied_bytes']} bytes", flush=True)
    mnt, where = work / "mnt", work / "guest"
    mnt.mkdir(exist_ok=True)
    where.mkdir(exist_ok=True)
    figures: dict[str, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for rnd in range(1, rounds + 1):
        for tree in trees:
            drop_caches()
            subprocess.run([PY, "-m", "repofs.cli", "mount", str(repos[tree]), str(mnt)],
                           env=tree_env(tree, work), cwd=tree, check=True)
            loop = None
            try:
                flat = mnt / VM / "latest" / f"{image.stem}-flat.vmdk"
                wait_for(flat)
                size = os.path.getsize(flat) - PART_OFFSET - 33 * 512
                loop = subprocess.run(["losetup", "-r", "-f", "--show", "-o", str(PART_OFFSET), "--sizelimit",
                                       str(size), str(flat)], capture_output=True, text=True,
                                      check=True).stdout.strip()
                subprocess.run(["mount", "-t", "ext4", "-o", "ro,noload", loop, str(where)], check=True)
                try:
                    drop_caches()
                    first, n1 = timed_find(where)
                    drop_caches()
                    again, n2 = timed_find(where)
                finally:
                    subprocess.run(["umount", str(where)], check=True)
            finally:
                if loop:
                    subprocess.run(["losetup", "-d", loop], capture_output=True)
                fuse_unmount(mnt)
            figures[tree].append((first, again))
            print(f"round {rnd} {tree}: find | wc -l = {n1} / {n2} entries; first walk (fresh mount) "
                  f"{first:.3f} s, again (page cache dropped) {again:.3f} s", flush=True)
    for tree, rows in figures.items():
        if not rows:
            continue
        print(f"median of {rounds} rounds {tree}: first {statistics.median(r[0] for r in rows):.3f} s, "
              f"again {statistics.median(r[1] for r in rows):.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="disk image size (default 1G)")
    ap.add_argument("--files", type=int, default=20000, help="small files in the tree (default 20000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where the run's own temporary folder is made (default /var/tmp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--cold-walk", action="store_true",
                    help="only the cold walk through a plain mount + loop device (see above)")
    ap.add_argument("--trees", nargs="+", default=[str(ROOT)], help="--cold-walk: checkouts to compare")
    ap.add_argument("--rounds", type=int, default=2, help="--cold-walk: rounds (default 2)")
    ap.add_argument("--image", default=None, help="--cold-walk: the image, built there if missing, kept")
    ap.add_argument("--repos", default=None, help="--cold-walk: keep the trees' repositories there, reuse them")
    ap.add_argument("--change", action="store_true",
                    help="--cold-walk: walk an incremental made after a day's change of the guest's files")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_files: needs root (loop devices, mounts, drop_caches)")
    size = parse_size(args.size)
    os.makedirs(args.workdir or "/var/tmp", exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.workdir or "/var/tmp"))
    (work / "pw").write_text(PASS + "\n")
    (work / "pw").chmod(0o600)
    if args.cold_walk:
        image = Path(args.image) if args.image else work / "disk.img"
        try:
            if not image.exists():
                t = time.monotonic()
                entries = build_image(image, size, args.seed, args.files)
                print(f"image {size / 2**30:.1f} GiB, {entries} entries, built in {time.monotonic() - t:.0f}s",
                      flush=True)
            cold_walk([str(Path(t).resolve()) for t in args.trees], work, image, args.rounds,
                      Path(args.repos) if args.repos else None, args.change)
        finally:
            fuse_unmount(work / "mnt")
            shutil.rmtree(work, ignore_errors=True)
        return
    env = {**os.environ, "REPOFS_PASSWORD_FILE": str(work / "pw"), "BORG_PASSPHRASE": PASS,
           "RESTIC_PASSWORD": PASS, "PYTHONPATH": str(ROOT), "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    env.pop("REPOFS_REPOSITORY", None)
    image, repo, mnt = work / "disk.img", work / "repofs", work / "mnt"
    rows: list[Row] = []
    try:
        t = time.monotonic()
        entries = build_image(image, size, args.seed, args.files)
        print(f"image {size / 2**30:.1f} GiB, {entries} entries, built in {time.monotonic() - t:.0f}s", flush=True)
        subprocess.run([*REPOFS, "init", "-r", str(repo)], env=env, check=True, capture_output=True)
        subprocess.run([*REPOFS, "backup", f"file:{image}", "--vm", VM, "-r", str(repo)], env=env, check=True,
                       capture_output=True)
        if not args.skip_peers:
            subprocess.run(["borg", "init", "-e", "repokey-blake2", str(work / "borg")], env=env, check=True,
                           capture_output=True)
            subprocess.run(["borg", "create", "--compression", "zstd,3", f"{work / 'borg'}::a", str(image)],
                           env=env, check=True, capture_output=True)
            subprocess.run(["restic", "init", "-r", str(work / "restic")], env=env, check=True, capture_output=True)
            subprocess.run(["restic", "-r", str(work / "restic"), "backup", "-q", str(image)], env=env, check=True,
                           capture_output=True)
        print("backed up", flush=True)
        label = image.stem

        # 1. rootless, in-process; plus the CLI's wall time to a first listing
        rows.append(rootless(repo))
        drop_caches()
        t = time.monotonic()
        subprocess.run([*REPOFS, "files", "ls", f"vm:{VM}:{label}/p1", "-r", str(repo)], env=env, check=True,
                       capture_output=True)
        rows[-1].note = f"`repofs files ls` from command start: {time.monotonic() - t:.2f}s"

        # 2. repofs mount + files/
        mnt.mkdir(exist_ok=True)
        drop_caches()
        t = time.monotonic()
        subprocess.run([*REPOFS, "mount", str(repo), str(mnt)], env=env, check=True)
        # through the generation's own name: every path through the `latest` symlink costs a
        # READLINK (FUSE does not cache symlinks here), which a path-based walk pays per entry
        files_root = Path(os.path.realpath(mnt / VM / "latest")) / "files" / label / "p1"
        try:
            if (mnt / VM / "latest" / "files").exists():
                os.listdir(files_root)
                row = Row("repofs mount, files/", setup=time.monotonic() - t)
                measure_local(row, files_root)
                row.first = row.setup + row.walk
                rows.append(row)
            else:
                rows.append(Row("repofs mount, files/", note="this mount has no files/ folder"))
        finally:
            fuse_unmount(mnt)

        # 3. repofs files mount (loop + kernel ext4 over a private repofs mount)
        target = work / "loop"
        target.mkdir()
        drop_caches()
        t = time.monotonic()
        subprocess.run([*REPOFS, "files", "mount", f"vm:{VM}", str(target), "-r", str(repo)], env=env,
                       check=True, capture_output=True)
        row = Row("repofs files mount (loop)", setup=time.monotonic() - t)
        try:
            first_walk(row, target / label / "p1", t)
            measure_local(row, target / label / "p1")
        finally:
            subprocess.run([*REPOFS, "files", "umount", str(target)], env=env, check=True)
        rows.append(row)

        # 4./5. peers: FUSE mount of the backed-up image file + loop device + kernel ext4
        if not args.skip_peers:
            inner = str(image).lstrip("/")
            for name, start, flat in [
                ("borg mount + loop", lambda: subprocess.run(["borg", "mount", f"{work / 'borg'}::a", str(mnt)],
                                                              env=env, check=True),
                 lambda: mnt / inner),
                ("restic mount + loop", lambda: subprocess.Popen(["restic", "-r", str(work / "restic"), "mount",
                                                                  str(mnt)], env=env, stdout=subprocess.DEVNULL,
                                                                 stderr=subprocess.DEVNULL),
                 lambda: mnt / "snapshots" / "latest" / inner)]:
                drop_caches()
                t = time.monotonic()
                proc = start()
                try:
                    wait_for(flat(), 120)
                    row = Row(name)
                    where = work / "peer"
                    t_setup = time.monotonic() - t
                    loop_over(row, flat(), where, t)
                    row.setup = t_setup
                    rows.append(row)
                finally:
                    fuse_unmount(mnt)
                    if isinstance(proc, subprocess.Popen):
                        proc.wait(timeout=60)
                print(f"{name}: done", flush=True)
    finally:
        fuse_unmount(mnt)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, size, args.files)


def report(rows: list[Row], size: int, files: int) -> None:
    print()
    print(f"ext4 partition of a {size / 2**30:.1f} GiB GPT disk, {files} small files + a 100 MB file; "
          f"seconds, page cache dropped before each step")
    print(f"{'':28} {'setup':>7} {'setup+walk':>10} {'list /':>7} {'walk':>7} {'read 100MB':>10} {'entries':>8}")
    for r in rows:
        print(f"{r.name:28} {r.setup:7.2f} {r.first:10.2f} {r.list:7.3f} {r.walk:7.2f} {r.read:10.2f} {r.entries:8}"
              f"  {r.note}")
    peers = [r for r in rows if not r.name.startswith("repofs") and r.walk == r.walk]
    if peers:
        print()
        print("ratios: peer time / repofs time (higher = repofs faster)")
        print(f"{'':28} " + " ".join(f"{'walk vs ' + p.name.split()[0]:>16} {'read vs ' + p.name.split()[0]:>16}"
                                     f" {'setup+walk vs ' + p.name.split()[0]:>22}" for p in peers))
        for r in rows:
            if not r.name.startswith("repofs") or r.walk != r.walk:
                continue
            print(f"{r.name:28} " + " ".join(
                f"{p.walk / r.walk:16.1f} {p.read / r.read:16.1f} {p.first / r.first:22.1f}" for p in peers))


if __name__ == "__main__":
    main()
