"""Reading a backed-up disk image through `repofs mount`, beside `borg mount`, `restic mount`
and `repofs restore --to-dir`, in one run on one data set.

    sudo .venv/bin/python bench/bench_mount.py --size 1G      # 8G for the full run

Builds a disk image (partition table + ext4 holding text, compressible and random files, and
free space: `bench/dataset.py`, the repository benchmark's data set),
backs it up into a repofs, a borg and a restic repository in a temporary folder, then for
each mount measures:
  - cold sequential read of the whole disk file (mounted afresh, page cache dropped);
  - warm sequential read (the same again, right after);
  - random 4 KiB reads at seeded offsets in a 64 MiB window of the filesystem's data: a cold
    pass, then a warm pass over the same offsets (IOPS, p50, p99);
and the throughput of `repofs restore --to-dir` (page cache dropped before). Prints a table
and the ratios against the targets. Needs root (FUSE, drop_caches); cleans up on exit.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dataset import make_image, parse_size  # noqa: E402
from measure import REPOFS, drop_caches, mounted, wait_for  # noqa: E402

MiB = 1 << 20
PASS = "bench passphrase"
VM = "bench"
WINDOW = 64 * MiB
RANDOM_READS = 2000








def timed(cmd: list[str], env: dict) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.monotonic() - t0






def unmount(path: Path) -> None:
    for args in (["-u"], ["-u", "-z"]):
        if mounted(path):
            subprocess.run(["fusermount3", *args, str(path)], capture_output=True)
            time.sleep(0.2)


def sequential(path: Path) -> float:
    """MB/s reading the whole file with 1 MiB reads."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    t0 = time.monotonic()
    try:
        while True:
            n = os.readv(fd, [view])
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    return total / (time.monotonic() - t0) / 1e6


def random_latencies(path: Path, offsets: list[int]) -> tuple[float, list[float]]:
    """(wall seconds, each read's seconds) of 4 KiB preads at ``offsets``, one after another."""
    lat = []
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.monotonic()
        for off in offsets:
            s = time.perf_counter()
            os.pread(fd, 4096, off)
            lat.append(time.perf_counter() - s)
        wall = time.monotonic() - t0
    finally:
        os.close(fd)
    return wall, lat


def random_reads(path: Path, offsets: list[int]) -> tuple[float, float, float]:
    """(IOPS, p50 ms, p99 ms) of 4 KiB preads at ``offsets``."""
    wall, lat = random_latencies(path, offsets)
    q = statistics.quantiles(lat, n=100)
    return len(offsets) / wall, q[49] * 1e3, q[98] * 1e3


@dataclass
class Result:
    name: str
    cold: float = 0.0
    warm: float = 0.0
    rand_cold: tuple[float, float, float] = (0, 0, 0)
    rand_warm: tuple[float, float, float] = (0, 0, 0)
    rss_mib: float = 0.0
    notes: list[str] = field(default_factory=list)


def pid_of(mnt: Path) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mnt).encode() in cmd and b"mount" in cmd:
            return int(pid)
    return None


def peak_rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(name: str, start, file_in_mount, mnt: Path, offsets: list[int]) -> Result:
    """Mount with ``start()``, then the cold/warm/random runs on ``file_in_mount``."""
    r = Result(name)
    mnt.mkdir(parents=True, exist_ok=True)
    drop_caches()
    proc = start()
    try:
        target = file_in_mount()
        wait_for(target)
        r.cold = sequential(target)
        r.warm = sequential(target)
        r.rss_mib = peak_rss_mib(proc.pid if proc is not None else pid_of(mnt))
        unmount(mnt)
        if proc is not None:
            proc.wait(timeout=60)
        drop_caches()
        proc = start()
        target = file_in_mount()
        wait_for(target)
        r.rand_cold = random_reads(target, offsets)
        r.rand_warm = random_reads(target, offsets)
        r.rss_mib = max(r.rss_mib, peak_rss_mib(proc.pid if proc is not None else pid_of(mnt)))
    finally:
        unmount(mnt)
        if proc is not None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="disk image size (default 1G; 8G for the full run)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache-size", default="256M", help="repofs mount --cache-size")
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp dir in /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--skip-peers", action="store_true", help="only repofs")
    ap.add_argument("--buffered", action="store_true", help="also measure --no-direct-io")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_mount: needs root (FUSE mounts, drop_caches)")
    size = parse_size(args.size)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-mount-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "pw").write_text(PASS + "\n")
    env = {**os.environ, "REPOFS_PASSWORD_FILE": str(work / "pw"), "BORG_PASSPHRASE": PASS,
           "RESTIC_PASSWORD": PASS, "PYTHONPATH": str(ROOT), "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    for k in ("REPOFS_REPOSITORY", "REPOFS_PASSWORD"):
        env.pop(k, None)
    image = work / "disk.img"
    results: list[Result] = []
    try:
        t0 = time.monotonic()
        make_image(str(image), size, args.seed)
        print(f"image {size / 2**30:.1f} GiB built in {time.monotonic() - t0:.0f}s", flush=True)
        rng = random.Random(args.seed)
        base = MiB + min(256 * MiB, max(0, size // 4))    # inside the filesystem's data
        base = min(base, max(MiB, size - WINDOW))
        offsets = [base + rng.randrange(min(WINDOW, size - base) // 4096) * 4096 for _ in range(RANDOM_READS)]

        backups = {}
        subprocess.run([*REPOFS, "init", "-r", str(work / "repofs")], env=env, check=True, capture_output=True)
        backups["repofs"] = timed([*REPOFS, "backup", f"file:{image}", "--vm", VM, "-r", str(work / "repofs")], env)
        if not args.skip_peers:
            subprocess.run(["borg", "init", "-e", "repokey-blake2", str(work / "borg")], env=env, check=True,
                           capture_output=True)
            backups["borg"] = timed(["borg", "create", "--compression", "zstd,3",
                                     f"{work / 'borg'}::a", str(image)], env)
            subprocess.run(["restic", "init", "-r", str(work / "restic")], env=env, check=True, capture_output=True)
            backups["restic"] = timed(["restic", "-r", str(work / "restic"), "backup", "-q", str(image)], env)
        print("backups: " + ", ".join(f"{k} {size / v / 1e6:.0f} MB/s" for k, v in backups.items()), flush=True)

        # restore to a file, the reference the mount is measured against
        restore_dir = work / "restored"
        drop_caches()
        t = timed([*REPOFS, "restore", f"vm:{VM}", "--to-dir", str(restore_dir), "-r", str(work / "repofs")], env)
        restore_mbs = size / t / 1e6
        shutil.rmtree(restore_dir, ignore_errors=True)
        print(f"repofs restore --to-dir: {restore_mbs:.0f} MB/s", flush=True)

        mnt = work / "mnt"
        flat = lambda: mnt / VM / "latest" / f"{image.stem}-flat.vmdk"  # noqa: E731
        variants = [("repofs mount", ["--cache-size", args.cache_size])]
        if args.buffered:
            variants.append(("repofs mount (buffered)", ["--cache-size", args.cache_size, "--no-direct-io"]))
        for name, extra in variants:
            def start(extra=extra):
                subprocess.run([*REPOFS, "mount", *extra, str(work / "repofs"), str(mnt)], env=env, check=True)
                return None
            results.append(measure(name, start, flat, mnt, offsets))
            print(f"{name}: done", flush=True)
        if not args.skip_peers:
            inner = str(image).lstrip("/")

            def borg_start():
                subprocess.run(["borg", "mount", f"{work / 'borg'}::a", str(mnt)], env=env, check=True)
                return None
            results.append(measure("borg mount", borg_start, lambda: mnt / inner, mnt, offsets))
            print("borg mount: done", flush=True)

            def restic_start():
                return subprocess.Popen(["restic", "-r", str(work / "restic"), "mount", str(mnt)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def restic_file():
                wait_for(mnt / "snapshots" / "latest", 60)
                return mnt / "snapshots" / "latest" / inner
            results.append(measure("restic mount", restic_start, restic_file, mnt, offsets))
            print("restic mount: done", flush=True)
    finally:
        unmount(work / "mnt")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, restore_mbs, size, args.cache_size)


def report(results: list[Result], restore_mbs: float, size: int, cache: str) -> None:
    print()
    print(f"disk {size / 2**30:.1f} GiB, repofs --cache-size {cache}; MB/s = 10^6 bytes/s; "
          f"random: {RANDOM_READS} x 4 KiB in a {WINDOW // MiB} MiB window")
    head = f"{'':24} {'cold seq':>9} {'warm seq':>9} {'rand cold IOPS':>15} {'p50 ms':>7} {'p99 ms':>7} " \
           f"{'rand warm IOPS':>15} {'p50 ms':>7} {'p99 ms':>7} {'peak RSS':>9}"
    print(head)
    for r in results:
        print(f"{r.name:24} {r.cold:9.0f} {r.warm:9.0f} {r.rand_cold[0]:15.0f} {r.rand_cold[1]:7.2f} "
              f"{r.rand_cold[2]:7.2f} {r.rand_warm[0]:15.0f} {r.rand_warm[1]:7.2f} {r.rand_warm[2]:7.2f} "
              f"{(f'{r.rss_mib:.0f} MiB' if r.rss_mib else '-'):>9}")
    print(f"{'repofs restore --to-dir':24} {restore_mbs:9.0f}")
    ours = next((r for r in results if r.name == "repofs mount"), None)
    peers = [r for r in results if not r.name.startswith("repofs")]
    if ours:
        if peers:
            best = max(peers, key=lambda r: r.cold)
            print(f"cold sequential vs the faster peer ({best.name}): {ours.cold / best.cold:.1f}x (target >= 2x)")
        print(f"cold sequential vs restore to a file: {ours.cold / restore_mbs:.0%} (target >= 70%)")
        print(f"warm random 4 KiB p99: {ours.rand_warm[2]:.2f} ms (target <= 2 ms)")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    main()
