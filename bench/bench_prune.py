"""Prune at scale, beside restic and borg: time and peak RSS of ``repofs prune``, ``restic
prune`` and ``borg compact`` on repositories of the same number of chunks, half of them left
unreferenced by forgetting one of two backups; and the memory of prune's marks alone.

    .venv/bin/python bench/bench_prune.py --sizes 50k,200k [--work DIR] [--tools repofs,restic,borg] [--idset 10M]
        [--tree . --tree OLD]
    .venv/bin/python bench/bench_prune.py --marks 10M --disk-slots 1M,10M [--work DIR] [--tree OLD --tree .] [--fork]

For each size N, in one run:
- repofs: an encrypted repository (default key derivation) written directly through
  ``format/`` with N tiny distinct chunks (the work of prune is per object, not per byte):
  generation ``g0`` names the first N/2 in disks of at most ``DISK_SLOTS`` (1 M) slots,
  generation ``g1`` the other N/2; ``g0`` is forgotten, then the real ``repofs prune --json
  --nice 0`` runs as a child (at the peers' priority). Its objects were all written seconds ago, so the run sets
  ``REPOFS_PRUNE_FRESH_SECONDS=0`` (no backup runs: "older than now" is the rule), else the
  safety margin would leave every fresh object in place.
- restic and borg: N small files of distinct content (each is one blob / chunk of its own) in
  two trees ``a`` and ``b`` of N/2 files, one backup of each (``restic backup``; ``borg
  create`` with default chunker: a file below the minimum chunk is one chunk), the backup of
  ``a`` forgotten (``restic forget ID``; ``borg delete REPO::a``), then ``restic prune`` and
  ``borg compact`` are measured (``borg delete`` is measured too: borg does part of the
  freeing there). Both encrypted (restic always is; borg ``repokey-blake2``).
Every measured command runs as a child measured with wait4 (bench/measure.py: wall, CPU,
peak RSS — what ``/usr/bin/time -v`` reports). With two sizes or more, each tool's time and
peak RSS are extrapolated linearly (from the two largest sizes) to 1 M and 10 M chunks, and the
ratios printed; the extrapolated figures are marked "~".

``--tree`` runs ``repofs prune`` with each checkout's code in turn on copies of the same
repository (the first tree's figure is "repofs prune", the ratios refer to it): before and
after a change, side by side in one run. Every tree is byte-compiled first, as an installed
package is.

``--marks N`` measures, rather than extrapolates, prune's peak memory at N chunks: indexes of
random ids and no chunk objects (``bench_marks``).

Keep the repositories on the same file system for every tool (``--work``; ``/dev/shm`` keeps a
loaded disk out of the comparison). The peers' input trees are written after repofs's
repository is built, in ``--data`` (default: ``--work``): at 1 M chunks they are some 4 GB of
tiny files, which need not take memory in ``/dev/shm`` beside repofs's repository and its copies.

``--lock FILE --priority N``: a run at 1 M chunks builds for many minutes and measures for a
few; on a shared machine it builds every tool's repository of one size first, then takes the
benchmark lock (``flock`` on FILE) only while it measures them all, and runs each measured
command (every tool alike) at niceness N, e.g. ``--lock /tmp/repofs-bench.lock --priority -10``.
``--rounds K`` measures each size K times from one set-up, each round on a copy of it (every
tool's repository, cache and security folder as the set-up left them; repofs's once per tree)
under one hold of the lock, and prints a table per round.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import PY, Run, repofs, run  # noqa: E402

from format.fixedindex import FixedIndex  # noqa: E402
from format.manifest import DiskEntry, Manifest  # noqa: E402
from format.marks import forget  # noqa: E402
from format.repository import Repository  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 64 << 10
MARKS_CHUNK = 1 << 20
DISK_SLOTS = 1_000_000
PASSWORD = "bench-prune-passphrase"
FILES_PER_DIR = 1000


class Measured:
    """How measured commands run: at niceness ``priority`` (None: the script's own), under the
    benchmark lock (``flock`` on ``lock``) taken by ``held`` around all of one size's
    measurements, after all of its set-up."""

    lock: str | None = None
    priority: int | None = None

    @classmethod
    def run(cls, cmd: list[str], **kw) -> Run:
        if cls.priority is not None:
            cmd = ["nice", "-n", str(cls.priority - os.getpriority(os.PRIO_PROCESS, 0)), *cmd]
        return run(cmd, **kw)

    @classmethod
    @contextlib.contextmanager
    def held(cls) -> Iterator[None]:
        if cls.lock is None:
            yield
            return
        with open(cls.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)       # released when the file closes
            yield


# A tool's measurements, ready to run once its repository is set up: (figure, command runner
# given the round's copy of the set-up folder).
Steps = list[tuple[str, Callable[[Path], Run]]]


def parse_count(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * mult)


def payload(k: int) -> bytes:
    """Tiny, distinct plaintexts (the same for every tool)."""
    return b"bench-prune " + k.to_bytes(8, "little") * 2


def repofs_env(path: Path, work: Path, tree: Path = ROOT) -> dict:
    """The environment of the measured ``repofs`` commands; ``tree``: the checkout whose
    code runs (another one to compare versions). Its modules run from bytecode compiled
    beforehand (``compile_tree``), as an installed package's do."""
    return {**os.environ, "REPOFS_REPOSITORY": str(path), "REPOFS_PASSWORD": PASSWORD,
            "REPOFS_SECURITY_DIR": str(work / "repofs-security"), "PYTHONPATH": str(tree),
            "REPOFS_PRUNE_FRESH_SECONDS": "0"}


def compile_tree(tree: Path) -> None:
    """Byte-compile ``tree``'s packages (``__pycache__``, ignored by git), as installing them
    does: in an environment with ``PYTHONDONTWRITEBYTECODE`` every start would otherwise
    compile every module of ours again — some 0.3 s of CPU the peers do not pay."""
    quiet([PY, "-m", "compileall", "-q", *[p for p in ("format", "repofs", "restore", "vddk")
                                          if (tree / p).is_dir()]], dict(os.environ), tree)


def put_generation(repo: Repository, name: str, ids: list[bytes], chunk: int = CHUNK) -> str:
    entries = []
    for d, start in enumerate(range(0, len(ids), DISK_SLOTS)):
        part = ids[start:start + DISK_SLOTS]
        index = FixedIndex.empty(len(part) * chunk, chunk)
        for slot, cid in enumerate(part):
            index.set(slot, cid)
        entries.append(DiskEntry(f"disk{d}", index.capacity, chunk, repo.put_index(index)))
    return repo.put_manifest(Manifest("bench", name, "2026-01-01T00:00:00.000000Z", time.time_ns(), None, entries))


def build_repofs(path: Path, n: int, chunk: int = CHUNK, generations: int = 2) -> list[str]:
    """N chunks in ``generations`` generations of N/generations each (``g0``, ``g1``, …);
    the first forgotten when there are two (the others are returned, oldest first, for the
    caller to forget)."""
    repo = Repository.init(path, PASSWORD.encode(), encrypted=True, chunk_size=chunk)
    ids = []
    for k in range(n):
        data = payload(k)
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data, sync=False)
        ids.append(cid)
    repo.sync()
    per = n // generations
    names = [put_generation(repo, f"g{g}", ids[g * per:(g + 1) * per if g < generations - 1 else n], chunk)
             for g in range(generations)]
    if generations == 2:
        forget(repo, names[0], "bench", "g0")
    return names


def write_tree(root: Path, ks: range) -> None:
    for k in ks:
        d = root / f"d{k // FILES_PER_DIR:05d}"
        if k % FILES_PER_DIR == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{k:08d}").write_bytes(payload(k))


def peer_env(work: Path) -> dict:
    return {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache"),
            "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "borg-base"),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}


def quiet(cmd: list[str], env: dict, cwd: Path) -> str:
    return subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True).stdout


def prepare_restic(work: Path, data: Path | None) -> Steps:
    """restic's repository (and cache) in ``work``: two backups, the first forgotten (``data``
    None: kept from an earlier run, only the steps are made)."""
    repo, env = work / "restic-repo", peer_env(work)
    if data is not None:
        quiet(["restic", "-r", str(repo), "init"], env, data)
        for tree in ("a", "b"):
            quiet(["restic", "-r", str(repo), "backup", "--quiet", "--tag", tree, tree], env, data)
        snaps = json.loads(quiet(["restic", "-r", str(repo), "snapshots", "--json", "--tag", "a"], env, data))
        quiet(["restic", "-r", str(repo), "forget", snaps[0]["id"]], env, data)
    return [("restic prune", lambda root: Measured.run(["restic", "-r", str(root / "restic-repo"), "prune"],
                                                       env=peer_env(root)))]


def prepare_borg(work: Path, data: Path | None) -> Steps:
    """borg's repository (and its base folder) in ``work``: two archives (``data`` None: kept
    from an earlier run, only the steps are made)."""
    repo, env = work / "borg-repo", peer_env(work)
    if data is not None:
        quiet(["borg", "init", "--encryption", "repokey-blake2", str(repo)], env, data)
        for tree in ("a", "b"):
            quiet(["borg", "create", f"{repo}::{tree}", tree], env, data)
    return [("borg delete", lambda root: Measured.run(["borg", "delete", f"{root / 'borg-repo'}::a"],
                                                      env=peer_env(root))),
            ("borg compact", lambda root: Measured.run(["borg", "compact", str(root / "borg-repo")],
                                                       env=peer_env(root)))]


def prepare_repofs(work: Path, n: int, trees: list[Path], build: bool = True) -> Steps:
    """``repofs prune`` of one repository of ``n`` chunks (``repofs_original``), once per tree,
    each on a copy of it (``copy_round``): the figure of the first tree is "repofs prune", the
    others' "repofs prune [tree]". ``build`` False: the repository was kept from an earlier run."""
    if build:
        build_repofs(work / repofs_original(n), n)
    steps: Steps = []
    for k, tree in enumerate(trees):
        def step(root: Path, k: int = k, tree: Path = tree) -> Run:
            # the peers' priority (--nice 0); cwd: ``python -m`` puts it before PYTHONPATH
            r = Measured.run(repofs("prune", "--json", "--nice", "0"),
                             env=repofs_env(root / f"{repofs_original(n)}-{k}", root, tree), cwd=tree)
            report = json.loads(r.out)
            assert report["generations_removed"] == 1 and report["freed_chunks"] == n // 2, report
            return r
        steps.append(("repofs prune" if k == 0 else f"repofs prune [{tree}]", step))
    return steps


def repofs_original(n: int) -> str:
    return f"repofs-repo-{n}"


def copy_round(setup: Path, root: Path, n: int, trees: int, last: bool) -> None:
    """One round's copy of a size's set-up: every tool's state (repositories, caches, security
    folders) as the set-up left it, and repofs's repository once per tree (in the last round
    the original itself is the last tree's, unless the set-up is kept: ``last`` False), so
    that every round measures the same work."""
    original = repofs_original(n)
    shutil.copytree(setup, root, symlinks=True, ignore=lambda d, names: [original] if Path(d) == setup else [])
    if not (setup / original).exists():
        return
    for k in range(trees):
        if last and k == trees - 1:
            (setup / original).rename(root / f"{original}-{k}")
        else:
            shutil.copytree(setup / original, root / f"{original}-{k}", symlinks=True)


def bench_idset(n: int) -> None:
    code = ("import os,resource,sys,time\n"
            "sys.path.insert(0, %r)\n"
            "from format.idset import IdSet\n"
            "s=IdSet(); t=time.monotonic()\n"
            "for k in range(%d): s.add(os.urandom(8) if k %% 4096 else os.urandom(32))\n"
            "s.freeze(); print(len(s), round(time.monotonic()-t,1))\n" % (str(ROOT), n))
    r = run([PY, "-c", code])
    print(f"idset {n:>11,} ids: {r.wall:7.1f} s, peak RSS {r.rss_mib:7.1f} MiB  ({r.out.strip()})")


def bench_marks(work: Path, n: int, disk_slots: int, trees: list[Path], fork: bool = False) -> None:
    """Prune's peak memory at ``n`` chunks, measured: one generation whose disks of at most
    ``disk_slots`` slots name ``n`` random ids, and no chunk objects at all (what the ids name
    does not matter to the mark phase; the walk of ``chunks/`` is streamed). So the run is the
    key derivation, reading every index and marking ``n`` ids. ``fork``: the walk forks its
    worker processes all the same (``REPOFS_PRUNE_FORK_FROM=0``; a repository this size with
    its objects would), and the figure to read is the summed PSS of the prune and its workers."""
    path = work / f"marks-{n}-{disk_slots}"
    repo = Repository.init(path, PASSWORD.encode(), encrypted=True, chunk_size=MARKS_CHUNK)
    entries = []
    for d, start in enumerate(range(0, n, disk_slots)):
        slots = min(disk_slots, n - start)
        index = FixedIndex(slots * MARKS_CHUNK, MARKS_CHUNK, bytearray(os.urandom(slots * 32)))
        entries.append(DiskEntry(f"disk{d}", index.capacity, MARKS_CHUNK, repo.put_index(index)))
        del index
    repo.put_manifest(Manifest("bench", "g0", "2026-01-01T00:00:00.000000Z", time.time_ns(), None, entries))
    del repo
    for k in range(256):    # empty shard folders: the walk compares them with the marks all the same
        (path / "chunks" / f"{k:02x}").mkdir(parents=True, exist_ok=True)
    for tree in trees:
        # cwd too: ``python -m`` puts the working directory before PYTHONPATH
        env = repofs_env(path, work, tree)
        if fork:
            env["REPOFS_PRUNE_FORK_FROM"] = "0"
        with Measured.held():
            r = Measured.run(repofs("prune", "--json"), env=env, cwd=tree, tree_memory=True)
        report = json.loads(r.out)
        print(f"marks {n:>11,} ids in disks of at most {disk_slots:,} slots: {r.wall:7.1f} s, cpu {r.cpu:7.1f} s, "
              f"peak RSS {r.rss_mib:7.1f} MiB, peak PSS of it and its workers {r.tree_pss_mib:7.1f} MiB "
              f"(referenced {report['referenced_chunks']:,}, "
              f"load {os.getloadavg()[0]:.1f}; code of {tree}{'; walk forked' if fork else ''})", flush=True)
    shutil.rmtree(path)


def extrapolate(points: list[tuple[int, float]], n: int) -> float:
    (n1, v1), (n2, v2) = points[-2], points[-1]
    return v2 + (v2 - v1) / (n2 - n1) * (n - n2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50k,200k")
    ap.add_argument("--work", default=None, help="where to build the repositories (default: a temp dir)")
    ap.add_argument("--data", default=None, help="where to write the peers' input trees (default: "
                    "--work; they are only read by the untimed backups, e.g. /var/tmp beside a /dev/shm --work)")
    ap.add_argument("--tools", default="repofs,restic,borg")
    ap.add_argument("--rounds", type=int, default=1, help="measure each size this many times, each round "
                    "on a copy of one set-up (under one hold of --lock each)")
    ap.add_argument("--idset", default="", help="also measure the marks alone for this many ids")
    ap.add_argument("--marks", default="", help="only measure prune's peak memory at this many "
                    "chunks (indexes of random ids, no chunk objects), e.g. 10M")
    ap.add_argument("--disk-slots", default="1M", help="with --marks: slots per disk, e.g. 1M,10M")
    ap.add_argument("--fork", action="store_true", help="with --marks: the walk forks its worker processes "
                    "as it would for a repository of that size with its objects")
    ap.add_argument("--lock", default=None, help="take this flock only around each round of measurements")
    ap.add_argument("--priority", type=int, default=None, help="niceness of the measured commands, e.g. -10")
    ap.add_argument("--keep", default=None, help="keep every size's set-up in this folder (setup-N) "
                    "and use it again when a later run finds it complete: a 1 M set-up takes tens of "
                    "minutes, its measurements seconds")
    ap.add_argument("--tree", action="append", default=[], help="run the prune with this "
                    "checkout's code (repeat to compare versions on the same repository; with "
                    "--sizes the first is the one the ratios refer to)")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="bench-prune-", dir=args.work))
    trees = [Path(t).resolve() for t in args.tree] or [ROOT]
    Measured.lock, Measured.priority = args.lock, args.priority
    for tree in trees:
        compile_tree(tree)
    if args.marks:
        try:
            for slots in args.disk_slots.split(","):
                bench_marks(work, parse_count(args.marks), parse_count(slots), trees, args.fork)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    # per round: (tool, figure) -> [(n, wall, rss)]
    rounds: list[dict[str, list[tuple[int, float, float]]]] = [{} for _ in range(args.rounds)]
    try:
        for n in [parse_count(s) for s in args.sizes.split(",") if s]:
            # every tool's set-up first (untimed, outside the lock); then per round a copy of
            # it, and all the round's measurements under one hold of the lock
            setup = Path(args.keep) / f"setup-{n}-{','.join(tools)}" if args.keep else work / f"setup-{n}"
            kept = (setup / "complete").exists()
            if not kept:
                shutil.rmtree(setup, ignore_errors=True)    # an unfinished one of an earlier run
                setup.mkdir(parents=True)
            data = Path(tempfile.mkdtemp(prefix="bench-prune-data-", dir=args.data or work)) / "data"
            steps: Steps = []
            t = time.monotonic()
            for tool in tools:
                if tool == "repofs":
                    steps += prepare_repofs(setup, n, trees, build=not kept)
                    continue
                if not kept and not data.exists():
                    write_tree(data / "a", range(n // 2))
                    write_tree(data / "b", range(n // 2, n))
                steps += {"restic": prepare_restic, "borg": prepare_borg}[tool](setup, None if kept else data)
            shutil.rmtree(data.parent, ignore_errors=True)
            (setup / "complete").touch()
            print(f"{n:>9,} chunks  {'kept set-up of ' + str(setup) if kept else 'set up'} in "
                  f"{time.monotonic() - t:.0f} s", flush=True)
            for rnd in range(args.rounds):
                root = work / f"round-{n}-{rnd}"
                copy_round(setup, root, n, len(trees), last=rnd == args.rounds - 1 and not args.keep)
                with Measured.held():
                    for key, step in steps:
                        r = step(root)
                        rounds[rnd].setdefault(key, []).append((n, r.wall, r.rss_mib))
                        print(f"{n:>9,} chunks  {key:<14} {r.wall:8.2f} s  cpu {r.cpu:8.2f} s  peak RSS "
                              f"{r.rss_mib:7.1f} MiB   (round {rnd}, load {os.getloadavg()[0]:.1f})", flush=True)
                shutil.rmtree(root, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(setup, ignore_errors=True)
        for rnd, series in enumerate(rounds):
            if "borg delete" in series and "borg compact" in series:
                series["borg delete+compact"] = [(n, w1 + w2, max(r1, r2)) for (n, w1, r1), (_n, w2, r2)
                                                 in zip(series["borg delete"], series["borg compact"], strict=True)]
            if args.rounds > 1:
                print(f"\nround {rnd}:")
            table(series)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.idset:
        bench_idset(parse_count(args.idset))


def table(series: dict[str, list[tuple[int, float, float]]]) -> None:
    sizes = sorted({n for points in series.values() for n, _w, _r in points})
    targets = sizes + ([1_000_000, 10_000_000] if len(sizes) >= 2 else [])
    figures: dict[str, dict[int, tuple[float, float, bool]]] = {}
    for key, points in series.items():
        got = {n: (w, r, False) for n, w, r in points}
        for n in targets:
            if n not in got and len(points) >= 2:
                got[n] = (max(0.0, extrapolate([(p[0], p[1]) for p in points], n)),
                          max(0.0, extrapolate([(p[0], p[2]) for p in points], n)), True)
        figures[key] = got
    print("\n| chunks | tool | time s | peak RSS MiB | time / repofs | RSS / repofs |")
    print("|---|---|---|---|---|---|")
    base = figures.get("repofs prune", {})
    for n in targets:
        for key, got in figures.items():
            if n not in got:
                continue
            w, r, est = got[n]
            mark = "~" if est else ""
            ratio = ""
            if n in base and key != "repofs prune":
                ratio = " | ".join(f"{mine / theirs:.2f}x" if theirs > 0 else "n/a"   # a flat figure
                                   for mine, theirs in ((w, base[n][0]), (r, base[n][1])))  # can extrapolate to 0
            else:
                ratio = " | "
            print(f"| {n:,} | {key} | {mark}{w:.2f} | {mark}{r:.1f} | {ratio} |")
    print("(~ extrapolated linearly from the two largest measured sizes)")


if __name__ == "__main__":
    main()
