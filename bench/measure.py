"""Running a command and measuring it: wall time, CPU time and peak RSS of the child (wait4)."""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# The project's own interpreter and CLI, for every benchmark.
PY = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python")
REPOFS = [PY, "-m", "repofs.cli"]


def add_bytecode_option(ap: argparse.ArgumentParser) -> None:
    """``--no-bytecode-cache``: run repofs as the environment says (``as_installed`` not used)."""
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run repofs as the environment says (PYTHONDONTWRITEBYTECODE: compiled anew each time)")


def as_installed(env: dict, cache: str | os.PathLike | None) -> dict:
    """``env`` for running repofs as an installed copy runs: from compiled bytecode, cached
    under ``cache`` (PYTHONPYCACHEPREFIX: no checkout is written to), even where the
    environment says PYTHONDONTWRITEBYTECODE — with it, every command would first compile the
    sources it imports (~0.1–0.2 CPU s, growing with the code base), which no user pays. The
    first command that imports a module compiles it: give each code path an unmeasured run
    first where that matters. ``cache`` None: ``env`` as it is."""
    if cache is None:
        return env
    env = dict(env, PYTHONPYCACHEPREFIX=os.fspath(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def repofs(*args: str) -> list[str]:
    return [*REPOFS, *args]


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mib: float
    rc: int
    out: str = ""
    tree_pss_mib: float | None = None   # with ``tree_memory``: the peak of the summed PSS


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def tree_pss_kib(pid: int) -> int:
    """The proportional set size of process ``pid`` and all its descendants, summed: memory
    that several of them share (a fork's copy-on-write pages) counts once in all."""
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


# wait4's ru_maxrss of a child counts the RSS its process had when it exec'd, i.e. the
# benchmark's own (the fork copies it): a benchmark holding 300 MiB would report 300 MiB for
# /bin/true. GNU time's %M is its own child's, forked from a small process, so the peak RSS
# is taken from it when it is installed (Debian package ``time``).
GNU_TIME = "/usr/bin/time"


def run(cmd: list[str], env: dict | None = None, stdin: str | None = None, check: bool = True,
        cwd: str | os.PathLike | None = None, tree_memory: bool = False) -> Run:
    """``tree_memory``: also sample, every 20 ms, the summed PSS of the command and every process
    it forks (``Run.tree_pss_mib``: the peak seen), for commands whose work is split among
    processes (the peak RSS is only the largest one's)."""
    os.sync()  # no writeback of earlier steps' dirty pages inside this measurement
    rss_file = None
    if os.path.exists(GNU_TIME):
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_file, *cmd]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
    if stdin is not None:
        assert p.stdin
        p.stdin.write(stdin.encode())
        p.stdin.close()
    peak_pss = 0
    sampler = None
    if tree_memory:
        import threading
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_pss
            while not done.wait(0.02):
                peak_pss = max(peak_pss, tree_pss_kib(p.pid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    out = p.stdout.read().decode() if p.stdout else ""
    err = p.stderr.read().decode() if p.stderr else ""
    if sampler is not None:
        done.set()
        sampler.join()
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err.strip()[-500:]}")
    rss_kib = ru.ru_maxrss
    if rss_file is not None:
        with open(rss_file) as f:
            lines = f.read().split()
        os.unlink(rss_file)
        if lines and lines[-1].isdigit():
            rss_kib = int(lines[-1])
    return Run(wall, ru.ru_utime + ru.ru_stime, rss_kib / 1024, p.returncode, out,
               peak_pss / 1024 if tree_memory else None)


def drop_caches() -> None:
    """Empty the page cache (root only). Fails loudly: a failed drop would make "cold" figures warm."""
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mounted(path: str | os.PathLike) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def wait_for(path: Path, timeout: float = 60) -> None:
    """Wait until ``path`` exists (a mount coming up)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def du(path: str, *, apparent: bool = False) -> int:
    """The disk blocks the files below ``path`` take, or with ``apparent`` their sizes (the
    bytes stored, without the file system's rounding up to whole blocks)."""
    total = 0
    for dirpath, _d, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size if apparent else st.st_blocks * 512
    return total


Item = TypeVar("Item")


def in_turn(items: list[Item], rnd: int) -> list[Item]:
    """The versions compared in a round, in the order of round ``rnd``: as given in odd rounds,
    reversed in even ones. The same code measured second in every round of ``bench_ab.py
    --what backup`` ran ~1.2x slower than measured first (2 GiB, three rounds each way, 1 Dec
    2026): an order fixed for all rounds makes that a difference between the versions."""
    return items if rnd % 2 else items[::-1]
