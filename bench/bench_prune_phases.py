"""Where one prune's time goes: runs ``format.prune.prune`` in this process on a repository and
prints, at each of its progress lines (marking, moving aside, sweeping, done), the wall time
and the CPU time so far — this process's and its reaped workers' (``getrusage``).

    .venv/bin/python bench/bench_prune_phases.py REPO --password PW [--workers N] [--tree DIR]

Prune changes the repository: run it on a copy (``cp -a``), e.g. of the repository that
``bench_prune.py --keep DIR`` keeps (``DIR/setup-N-…/repofs-repo-N``, password
``bench-prune-passphrase``). ``--workers N`` sets ``WORKERS`` (1: one process walks the shards);
``--tree DIR``: another checkout's code (e.g. the code before a change). Objects of any age are
condemned (``REPOFS_PRUNE_FRESH_SECONDS=0``, as in ``bench_prune.py``).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo")
    ap.add_argument("--password", required=True)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.tree).resolve()))
    os.environ["REPOFS_PRUNE_FRESH_SECONDS"] = "0"
    os.environ.setdefault("REPOFS_SECURITY_DIR", str(Path(args.repo).resolve().parent / "phases-security"))
    from format import prune as prune_module
    from format.repository import Repository
    if args.workers is not None:
        prune_module.WORKERS = args.workers
    t0 = time.monotonic()

    def say(text: str) -> None:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        print(f"{time.monotonic() - t0:7.2f} s  cpu {cpu:7.2f} s  {text}", flush=True)

    repo = Repository.open(args.repo, args.password.encode())
    say("opened")
    report = prune_module.prune(repo, progress=say)
    say(f"done: freed {report.freed_chunks:,} chunks, {report.freed_bytes:,} bytes "
        f"(code of {args.tree}, WORKERS {prune_module.WORKERS})")


if __name__ == "__main__":
    main()
