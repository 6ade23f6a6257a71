"""What progress output costs a backup: the same backup on a pseudo-terminal with the
progress line, and with ``--quiet``, alternated, each into a fresh repository.

    .venv/bin/python bench/bench_progress.py --size 1G --runs 3 --workdir /var/tmp

Prints each run's wall time and CPU time (user + system, of the backup process and its
threads) and the best of each side; the overhead is best(progress) / best(quiet) - 1. On a
shared machine the CPU time is the steadier figure: wall time moves with other jobs' load. The image is
random data (every chunk new, compressed and written), so the
backup runs as fast as this machine writes chunks and the progress line is drawn most often
per byte.
"""
from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repofs.cli.units import parse_size  # noqa: E402


def run(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the backup process) for one run on a pty."""
    master, slave = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "repofs.cli", *argv], env=env,
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break
        elif proc.poll() is not None:
            break
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    os.close(master)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"backup failed: {status}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-progress-", dir=args.workdir))
    try:
        image = work / "disk.img"
        with open(image, "wb") as f:
            for _ in range(parse_size(args.size) >> 20):
                f.write(os.urandom(1 << 20))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm", "REPOFS_PASSWORD": "bench",
               "REPOFS_LOG_FILE": ""}
        times: dict[str, list[tuple[float, float]]] = {"progress": [], "quiet": []}
        for i in range(args.runs):
            for side in ("progress", "quiet"):
                repo = work / f"repo-{side}-{i}"
                subprocess.run([sys.executable, "-m", "repofs.cli", "init", str(repo)], env=env, check=True,
                               capture_output=True)
                extra = ["--quiet"] if side == "quiet" else []
                subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)   # page cache
                wall, cpu = run(["backup", f"file:{image}", "--vm", "bench", "-r", str(repo), *extra], env)
                times[side].append((wall, cpu))
                print(f"run {i} {side:8} wall {wall:7.2f}s  cpu {cpu:7.2f}s", flush=True)
                shutil.rmtree(repo)
        for i, label in ((0, "wall"), (1, "cpu")):
            best = {k: min(t[i] for t in v) for k, v in times.items()}
            print(f"best {label}: progress {best['progress']:.2f}s, quiet {best['quiet']:.2f}s, "
                  f"overhead {100 * (best['progress'] / best['quiet'] - 1):+.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
