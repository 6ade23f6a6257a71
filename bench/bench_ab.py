"""Two or more versions of repofs side by side on one data set, the versions interleaved in
each round — to measure what a change costs or gains. One of:

- ``--what backup``: a full backup, then an incremental with a change list (3% of the data;
  ``--cold-parent``: the full backup's chunks dropped from the page cache before it;
  ``--cold-image``: the image dropped from the page cache before each backup, not warmed);
  wall and CPU seconds (user + system, wait4) and peak RSS of each, bytes stored. Also the
  floor of the same run: the CPU seconds that keyed BLAKE3, zstd (the repository's level) and
  AES-256-GCM alone take on the image's non-zero 1 MiB chunks, in this process, one core;
  beside it the "decided floor": the same with zstd only on the chunks the backup's
  compression decision (format/sealed.py, its sample test included) compresses.
- ``--what restore``: ``repofs restore --to-dir`` of a generation each tree backed up
  itself (page cache dropped first when root), restored file compared with ``cmp``; and the
  machine's fsync'd write speed of the same file size (``dd conv=fsync``) right before each
  restore. The restore's speed is quoted over the disk's size (as dd's) and over its data.
  ``--restic``: restic's restore of the same image in every round too (page cache dropped).
- ``--what mount``: ``repofs mount`` of that generation, page cache dropped: 4 KiB random
  reads of the flat file (p50/p99/p99.9, and how many took over 2 ms), a cold sequential
  read and the daemon's CPU seconds during it, the daemon's RSS and peak RSS.

    flock /tmp/repofs-bench.lock .venv/bin/python bench/bench_ab.py --what backup --size 2G \\
        --workdir /var/tmp OLD_TREE NEW_TREE     # OLD_TREE e.g. `git worktree add ../base COMMIT`

The trees take turns going first: in the given order in odd rounds, reversed in even ones
(the command measured second in a round can be ~20% slower for that alone), so give an even
``--rounds``.

Each tree is a checkout of this repository; its code runs with this venv's packages
(PYTHONPATH=tree). ``--image`` reuses an image made by ``bench/dataset.py``.

Bytecode: an installed repofs runs from compiled bytecode, so the trees do here too — cached
in the work folder (PYTHONPYCACHEPREFIX; the trees are not written to), filled by an
unmeasured warm-up round. Without it (``--no-bytecode-cache``, or PYTHONDONTWRITEBYTECODE in
the environment with no cache) every command compiles the tree's sources first: ~0.1 CPU s
that grows with the code base and is not what a user pays. ``--what backup`` ends with the
median of each tree's figures over the rounds, and each tree's ratio to the first tree's.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mount import random_latencies, sequential, unmount  # noqa: E402
from dataset import change_list, make_image, parse_size  # noqa: E402
from measure import PY, add_bytecode_option, as_installed, drop_caches, in_turn, run, wait_for, warm  # noqa: E402

MiB = 1 << 20
VM = "bench"


PYCACHE: str | None = None   # where the trees' bytecode is cached (main() sets it)


def env_for(tree: str) -> dict:
    env = dict(os.environ, REPOFS_PASSWORD="bench", PYTHONPATH=tree)
    env.pop("REPOFS_REPOSITORY", None)
    env.pop("REPOFS_PASSWORD_FILE", None)
    return as_installed(env, PYCACHE)


def cli(tree: str, *args: str, check: bool = True):
    # "-m" puts the working directory first on the path: run from the tree, or every tree
    # would run the code of the directory the benchmark was started from
    return run([PY, "-m", "repofs.cli", *args], env=env_for(tree), check=check, cwd=tree)


def root() -> bool:
    return os.geteuid() == 0


def floor_cpu(img: str, level: int = 2) -> tuple[float, float, int]:
    """CPU seconds of keyed BLAKE3 + zstd + AES-256-GCM alone over the image's non-zero
    chunks (the issue's floor: zstd on every chunk), the same with zstd only on the chunks
    the backup's compression decision compresses (its sample test included: the work the
    backup itself chose to do), and the chunks' bytes."""
    import blake3
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from format.sealed import worth_compressing
    key, aead = secrets.token_bytes(32), AESGCM(secrets.token_bytes(32))
    z = zstandard.ZstdCompressor(level=level, write_content_size=True)
    def floor(chunk: bytes) -> float:
        t = time.process_time()
        blake3.blake3(chunk, key=key).digest()
        aead.encrypt(bytes(12), z.compress(chunk), b"")
        return time.process_time() - t

    def decided_floor(chunk: bytes) -> float:
        t = time.process_time()
        blake3.blake3(chunk, key=key).digest()
        aead.encrypt(bytes(12), z.compress(chunk) if worth_compressing(chunk) else chunk, b"")
        return time.process_time() - t

    zero, cpu, decided, total = bytes(MiB), 0.0, 0.0, 0
    with open(img, "rb") as f:
        while chunk := f.read(MiB):
            if chunk == zero[:len(chunk)]:
                continue
            # the second pass over a chunk finds it in the CPU's caches: each goes first in
            # turn, or the first would pay for fetching every chunk (measured: ~0.9 CPU s of 3.9)
            if total // MiB % 2:
                decided += decided_floor(chunk)
                cpu += floor(chunk)
            else:
                cpu += floor(chunk)
                decided += decided_floor(chunk)
            total += len(chunk)
    return cpu, decided, total


def fsync_write_mbs(work: str, size: int) -> float:
    """The machine's fsync'd sequential write speed for ``size`` bytes, MB/s."""
    out = os.path.join(work, "dd.out")
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={out}", "bs=4M", f"count={max(1, size // (4 * MiB))}",
                    "conv=fsync"], check=True, capture_output=True)
    mbs = size / (time.monotonic() - t) / 1e6
    os.unlink(out)
    return mbs


def copy(src: str, dst: str) -> None:
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)  # holes stay holes


def fresh_repo(tree: str, repo: str) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    cli(tree, "init", "-r", repo)


def backed_up(trees: list[str], work: str, img: str) -> dict[str, str]:
    """Each tree's fresh repository holding one backup of ``img`` (made by that tree)."""
    repos = {}
    for i, tree in enumerate(trees):
        repos[tree] = os.path.join(work, f"repo{i}")
        fresh_repo(tree, repos[tree])
        cli(tree, "backup", f"file:{img}", "--vm", VM, "-r", repos[tree])
    return repos


def evict_chunks(repo: str) -> None:
    """Drop the repository's chunk files from the page cache (theirs only; other users' pages
    stay): a parent generation written days before the incremental that follows it."""
    os.sync()
    for folder, _dirs, files in os.walk(os.path.join(repo, "chunks")):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def evict_file(path: str) -> None:
    """Drop ``path`` from the page cache (written out first): a disk image the backup host
    has not read before."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ab_backup(trees: list[str], work: str, img: str, rounds: int, cold_parent: bool = False,
              cold_image: bool = False) -> None:
    gen1, gen2 = os.path.join(work, "gen1.img"), os.path.join(work, "gen2.img")
    copy(img, gen1)
    copy(img, gen2)
    changes = os.path.join(work, "changes.json")
    with open(changes, "w") as f:
        json.dump(change_list(gen2, 0.03), f)
    repo = os.path.join(work, "repo")
    figures: dict[str, list[tuple[float, float, float, float]]] = {tree: [] for tree in trees}
    first = 0 if PYCACHE is None else -1     # round 0: the warm-up that compiles the bytecode
    for rnd in range(first + 1, rounds + 1):
        warm(gen1)
        fcpu, fdecided, fbytes = floor_cpu(gen1)
        if rnd > 0:
            print(f"round {rnd} floor: BLAKE3+zstd+AES-GCM {fcpu:.2f} CPU s on {fbytes / 1e9:.2f} GB "
                  f"({fcpu / fbytes * 1e9:.2f} CPU s/GB); with zstd only where the backup's decision "
                  f"compresses {fdecided:.2f} CPU s ({fdecided / fbytes * 1e9:.2f} CPU s/GB)", flush=True)
        for tree in in_turn(trees, rnd):
            fresh_repo(tree, repo)
            copy(gen1, img)
            if cold_image:
                evict_file(img)
            else:
                warm(img)
            full = cli(tree, "backup", f"file:{img}", "--vm", VM, "-r", repo, "--json")
            d1 = json.loads(full.out)["disks"][0]
            copy(gen2, img)
            if cold_image:
                evict_file(img)
            else:
                warm(img)
            if cold_parent:
                evict_chunks(repo)
            inc = cli(tree, "backup", f"file:{img}", "--vm", VM, "-r", repo, "--json",
                      "--changed-extents", changes)
            d2 = json.loads(inc.out)["disks"][0]
            if rnd <= 0:
                continue
            figures[tree].append((full.wall, full.cpu, inc.wall, inc.cpu))
            print(f"round {rnd} {tree}: full {full.wall:.2f} s, {full.cpu:.2f} CPU s "
                  f"({full.cpu / fbytes * 1e9:.2f} CPU s/GB = {full.cpu / fcpu:.2f}x floor, "
                  f"{full.cpu / fdecided:.2f}x the decided floor), "
                  f"{full.rss_mib:.0f} MiB; incremental {inc.wall:.2f} s ({inc.wall / full.wall:.1%}), "
                  f"{inc.cpu:.2f} CPU s; stored {d1['new_bytes']} + {d2['new_bytes']} bytes", flush=True)
    medians = {tree: [statistics.median(col) for col in zip(*rows, strict=True)]
               for tree, rows in figures.items() if rows}
    ref = medians.get(trees[0])
    for tree, (fw, fc, iw, ic) in medians.items():
        ratio = (f" = {fw / ref[0]:.2f}x / {fc / ref[1]:.2f}x / {iw / ref[2]:.2f}x / {ic / ref[3]:.2f}x "
                 f"the first tree") if ref and tree != trees[0] else ""
        print(f"median of {rounds} rounds {tree}: full {fw:.2f} s, {fc:.2f} CPU s; incremental "
              f"{iw:.2f} s, {ic:.3f} CPU s{ratio}", flush=True)


def restic_restore(work: str, img: str) -> None:
    """``restic restore`` of ``img`` (backed up once, encrypted as ours), page cache dropped
    first, in the same round as the trees' restores: the peer of the restore target."""
    env = dict(os.environ, RESTIC_PASSWORD="bench")
    repo, out = os.path.join(work, "restic"), os.path.join(work, "restic-out")
    if not os.path.isdir(repo):
        subprocess.run(["restic", "init", "-q", "-r", repo], env=env, check=True, capture_output=True)
        subprocess.run(["restic", "backup", "-q", "-r", repo, img], env=env, check=True, capture_output=True)
    shutil.rmtree(out, ignore_errors=True)
    if root():
        drop_caches()
    r = run(["restic", "restore", "-q", "-r", repo, "latest", "--target", out], env=env)
    restored = os.path.join(out, img.lstrip("/"))
    same = subprocess.run(["cmp", img, restored], capture_output=True).returncode == 0
    print(f"  restic restore {r.wall:.2f} s = {os.path.getsize(img) / r.wall / 1e6:.0f} MB/s of disk, "
          f"{r.cpu:.2f} CPU s, {r.rss_mib:.0f} MiB; restored = source: {'yes' if same else 'NO'}", flush=True)
    shutil.rmtree(out, ignore_errors=True)


def ab_restore(trees: list[str], work: str, img: str, rounds: int, restic: bool = False) -> None:
    repos = backed_up(trees, work, img)
    size = os.path.getsize(img)
    for rnd in range(1, rounds + 1):
        if restic:
            restic_restore(work, img)
        for tree in in_turn(trees, rnd):
            # the machine's speed right before each restore: on a shared machine it moves by
            # 2x within a minute, and a figure from another moment would judge the noise
            limit = fsync_write_mbs(work, size)
            out = os.path.join(work, "restored")
            shutil.rmtree(out, ignore_errors=True)
            if root():
                drop_caches()
            r = cli(tree, "restore", f"vm:{VM}", "--to-dir", out, "-r", repos[tree], "--json")
            data = json.loads(r.out)["written_bytes"]
            restored = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".raw")]
            same = bool(restored) and subprocess.run(["cmp", img, restored[0]], capture_output=True).returncode == 0
            print(f"round {rnd} {tree}: fsync'd write {limit:.0f} MB/s; restore {r.wall:.2f} s = "
                  f"{size / r.wall / 1e6:.0f} MB/s of disk ({size / r.wall / 1e6 / limit:.0%} of fsync'd write), "
                  f"{data / r.wall / 1e6:.0f} MB/s of data ({data / 1e9:.2f} GB), {r.cpu:.2f} CPU s, "
                  f"{r.rss_mib:.0f} MiB; restored = source: {'yes' if same else 'NO'}", flush=True)
            shutil.rmtree(out, ignore_errors=True)


def daemon_pid(mnt: Path) -> int | None:
    """The process id of the mount daemon serving ``mnt``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mnt).encode() in cmd and b"mount" in cmd:
            return int(pid)
    return None


def daemon_rss(pid: int | None) -> tuple[float, float]:
    """(current, peak) resident MiB of process ``pid``."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


def daemon_cpu(pid: int | None) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ab_mount(trees: list[str], work: str, img: str, rounds: int, extra: list[str]) -> None:
    if not root():
        sys.exit("bench_ab --what mount: needs root (FUSE, drop_caches)")
    repos = backed_up(trees, work, img)
    size = os.path.getsize(img)
    rng = random.Random(1)
    base = min(MiB + size // 4, size - 64 * MiB)
    offsets = [base + rng.randrange(64 * MiB // 4096) * 4096 for _ in range(2000)]
    mnt = Path(work) / "mnt"
    mnt.mkdir(exist_ok=True)
    stem = Path(img).stem
    for rnd in range(1, rounds + 1):
        for tree in in_turn(trees, rnd):
            try:
                drop_caches()
                cli(tree, "mount", *extra, repos[tree], str(mnt))
                flat = mnt / VM / "latest" / f"{stem}-flat.vmdk"
                wait_for(flat)
                _wall, lat = random_latencies(flat, offsets)
                q = statistics.quantiles(lat, n=1000)
                p50, p99, p999 = q[499] * 1e3, q[989] * 1e3, q[998] * 1e3
                slow = sum(t > 0.002 for t in lat)
                unmount(mnt)
                drop_caches()
                cli(tree, "mount", *extra, repos[tree], str(mnt))
                wait_for(flat)
                pid = daemon_pid(mnt)
                cpu0 = daemon_cpu(pid)
                mbs = sequential(flat)
                cpu = daemon_cpu(pid) - cpu0
                rss, peak = daemon_rss(pid)
            finally:
                unmount(mnt)
            print(f"round {rnd} {tree}: cold random 4 KiB p50 {p50:.2f} ms p99 {p99:.2f} ms p99.9 {p999:.2f} ms "
                  f"({slow} of {len(lat)} reads over 2 ms); cold sequential "
                  f"{mbs:.0f} MB/s, daemon CPU {cpu:.2f} s; daemon RSS {rss:.0f} MiB (peak {peak:.0f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="repository checkouts to compare")
    ap.add_argument("--what", choices=("backup", "restore", "mount"), default="backup")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--image", default=None, help="an existing data set image (bench/dataset.py)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--mount-option", action="append", default=[], help="extra `repofs mount` option")
    ap.add_argument("--restic", action="store_true",
                    help="restore: also restic's restore of the same image in every round (the peer)")
    ap.add_argument("--cold-image", action="store_true",
                    help="backup: the image dropped from the page cache before each backup (not warmed)")
    ap.add_argument("--cold-parent", action="store_true",
                    help="backup: the full backup's chunks out of the page cache before the incremental")
    add_bytecode_option(ap)
    a = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in a.trees]
    work = tempfile.mkdtemp(prefix="repofs-ab-", dir=a.workdir)
    global PYCACHE
    if not a.no_bytecode_cache:
        PYCACHE = os.path.join(work, "pycache")
    try:
        img = os.path.join(work, "disk.img")
        if a.image:
            copy(a.image, img)
        else:
            make_image(img, parse_size(a.size))
        if a.what == "backup":
            ab_backup(trees, work, img, a.rounds, a.cold_parent, a.cold_image)
        elif a.what == "restore":
            ab_restore(trees, work, img, a.rounds, a.restic)
        else:
            ab_mount(trees, work, img, a.rounds, a.mount_option)
    finally:
        unmount(Path(work) / "mnt")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
