"""Judge the mutants a stopped ``mutmut run`` left unjudged, the way mutmut judges one, within a
time budget per mutant (docs/security.md, "Mutation testing of the format").

mutmut runs each mutant's tests (those of its statistics run that reach the mutated
function), fastest first, stopping at the first failure; a survivor runs all of them. For the
functions nearly every test reaches, that is the whole selection per survivor, and a full run
does not finish on a 2-core machine in a working session. This runs the same tests in the same
way — a child forked per mutant from a process that collected the tests once, with
``MUTANT_UNDER_TEST`` set, ``-x`` — but only the fastest of them up to ``--budget`` seconds of
their statistics-run time. A failure is a kill. A mutant that passes them is recorded as
surviving them: a lower bound on the kills, never an overstatement.

Run from the project root, after ``mutmut run`` (stopped or finished), with mutmut's
``mutants/`` folder in place:

    nice -n 19 .venv/bin/python tests/mutation_budget.py judged.tsv --budget 3 --workers 2 \\
        [mutants/format/sealed.py.meta ...]

One line per mutant in ``judged.tsv``: name, verdict (killed, survived, timeout, no tests),
the number of tests run, seconds. Mutants already in the file are skipped (a stopped run goes
on). Without META files: every mutated file's. Not a test module (pytest does not collect it).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import time

LIMIT_S = 120.0     # a child still running after this is killed and counted a timeout


def unjudged(metas: list[str], done: set[str]) -> list[str]:
    names = []
    for meta in metas:
        with open(meta) as f:
            codes = json.load(f)["exit_code_by_key"]
        names += [n for n, code in codes.items() if code is None and n not in done]
    return names


def fastest(tests: list[str], durations: dict[str, float], budget: float) -> list[str]:
    """The fastest of ``tests`` whose statistics-run times add up to at most ``budget``
    (at least one)."""
    chosen, total = [], 0.0
    for t in sorted(tests, key=lambda t: durations.get(t, 0.0)):
        if chosen and total + durations.get(t, 0.0) > budget:
            break
        chosen.append(t)
        total += durations.get(t, 0.0)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("metas", nargs="*")
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out_path = os.path.abspath(args.out)
    os.chdir("mutants")
    sys.path.insert(0, os.getcwd())
    metas = [os.path.relpath(os.path.abspath(os.path.join("..", m))) for m in args.metas] or \
        sorted(glob.glob("**/*.py.meta", recursive=True))
    with open("mutmut-stats.json") as f:
        stats = json.load(f)
    tests_by, durations = stats["tests_by_mangled_function_name"], stats["duration_by_test"]
    done: set[str] = set()
    if os.path.exists(out_path):
        with open(out_path) as f:
            done = {line.split("\t")[0] for line in f}
    queue = unjudged(metas, done)
    print(f"{len(queue)} mutants to judge", flush=True)

    import pytest   # collected once here; every child starts from it
    pytest.main(["--rootdir=.", "-q", "--collect-only", "-p", "no:cacheprovider",
                 *sorted({t.split("::")[0] for ts in tests_by.values() for t in ts})])

    running: dict[int, tuple[str, float, int]] = {}
    with open(out_path, "a") as out:
        def reap() -> None:
            while running:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    return
                name, started, count = running.pop(pid)
                took = time.monotonic() - started
                if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and took >= LIMIT_S:
                    verdict = "timeout"
                elif count == 0:
                    verdict = "no tests"
                else:
                    verdict = "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
                out.write(f"{name}\t{verdict}\t{count}\t{took:.1f}\n")
                out.flush()

        while queue or running:
            reap()
            now = time.monotonic()
            for pid, (_name, started, _count) in list(running.items()):
                if now - started > LIMIT_S:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if queue and len(running) < args.workers:
                name = queue.pop(0)
                tests = fastest(tests_by.get(name.rsplit("__mutmut_", 1)[0], []), durations, args.budget)
                pid = os.fork()
                if pid == 0:
                    os.setpgid(0, 0)
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 1)
                    os.dup2(null, 2)
                    os.environ["MUTANT_UNDER_TEST"] = name
                    try:
                        code = pytest.main(["--rootdir=.", "-x", "-q", "-p", "no:cacheprovider", "--tb=no",
                                            *tests]) if tests else 0
                    except BaseException:
                        os._exit(3)
                    os._exit(int(code))
                running[pid] = (name, time.monotonic(), len(tests))
                continue
            time.sleep(0.005)


if __name__ == "__main__":
    main()
