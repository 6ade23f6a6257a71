"""Work on many folders at once in forked worker processes, for jobs that are mostly short
system calls (prune's walk: ``stat``, ``rename``, ``unlink`` of each object; a backup's probe of
the chunks it keeps from the previous generation: ``open``, ``read``, ``fstat``, ``close``).

Threads do not suit such work: each system call gives up the GIL and takes it back, and with
two threads every call becomes a hand-over between them (a futex wake and a context switch),
which at a million objects costs more CPU than the calls themselves. Processes share no GIL.

``run(jobs, work, processes)`` forks ``processes`` workers; worker ``k`` runs
``work(*job)`` for the jobs ``k, k + processes, …`` in order and sends their results back
through a pipe (pickled), and the results come back in the order of ``jobs``. ``work`` is a
closure of the caller: forked workers inherit it, and everything it reads, as it was at the
fork. Side effects it makes on Python objects stay in the worker; only its results return.

A worker never outlives its parent: the kernel kills it when the parent ends
(``PR_SET_PDEATHSIG``), and it checks that its parent is still the one that forked it before
each job. Ctrl-C is the parent's: workers ignore SIGINT, and the parent, interrupted while it
waits, tells them to start no further job, collects them, and re-raises. When a job raises, its
worker starts no further job and the others are told to stop; the first error (in job order) is
raised in the parent, as the same exception where it can be pickled. A worker that dies without
an answer (killed) raises ``WorkerDied``.
"""
from __future__ import annotations

import mmap
import os
import pickle
import signal
from typing import Any, Callable, Sequence

from .errors import RepoError

_PR_SET_PDEATHSIG = 1


class WorkerDied(RepoError):
    """A worker process ended without sending its results."""


def run(jobs: Sequence[tuple[Any, ...]], work: Callable[..., Any], processes: int,
        started: Callable[[list[int]], None] | None = None) -> list[Any]:
    """``[work(*job) for job in jobs]``, computed by ``processes`` forked workers.
    ``started(pids)``: called once every worker exists and before any starts its first job (a
    caller records who works for it); if it raises, the workers end without a job."""
    processes = max(1, min(processes, len(jobs)))
    stop = mmap.mmap(-1, 2)     # [0]: start (1) or end without a job (2); [1]: stop after the job
    parent = os.getpid()
    workers: list[tuple[int, int]] = []     # pid, read end of its pipe
    reaped: dict[int, int] = {}             # pid: wait status
    go_r, go_w = os.pipe()
    try:
        for k in range(processes):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                    # the worker: never returns
                os.close(r)
                os.close(go_w)
                _worker(k, processes, jobs, work, w, go_r, stop, parent)
            os.close(w)
            workers.append((pid, r))
        pids = [pid for pid, _r in workers]
        try:
            if started is not None:
                started(pids)
        except BaseException:
            stop[0] = 2
            raise
        else:
            stop[0] = 1
        finally:
            os.close(go_w)                  # the workers wake: start, or end
            go_w = -1
        try:
            return _collect(jobs, workers, stop, reaped)
        except BaseException:
            stop[1] = 1                     # whatever stopped the collecting: no further job
            raise
    finally:
        os.close(go_r)
        if go_w >= 0:
            os.close(go_w)
        for pid, r in workers:
            _close_quietly(r)
            _reap(pid, reaped)


def _worker(k: int, processes: int, jobs: Sequence[tuple[Any, ...]], work: Callable[..., Any],
            w: int, go_r: int, stop: mmap.mmap, parent: int) -> None:
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        os.read(go_r, 1)                    # returns at EOF: the parent closed its end
        os.close(go_r)
        out: list[tuple[int, bool, Any]] = []
        if stop[0] == 1:
            for i in range(k, len(jobs), processes):
                if stop[1] or os.getppid() != parent:
                    break
                try:
                    out.append((i, True, work(*jobs[i])))
                except BaseException as e:  # noqa: BLE001 (sent to the parent, raised there)
                    stop[1] = 1
                    out.append((i, False, _picklable(e)))
                    break
        data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(w, "wb") as f:
            f.write(data)
        code = 0
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    import ctypes       # in the worker only
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(1)


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:   # noqa: BLE001 (any failure to round-trip: sent as text)
        return RepoError(f"{type(e).__name__}: {e}")


def _collect(jobs: Sequence[tuple[Any, ...]], workers: list[tuple[int, int]], stop: mmap.mmap,
             reaped: dict[int, int]) -> list[Any]:
    answers: dict[int, tuple[bool, Any]] = {}
    interrupted: BaseException | None = None
    died: list[str] = []
    for k, (pid, r) in enumerate(workers):
        parts: list[bytes] = []
        while True:
            try:
                part = os.read(r, 1 << 20)
            except KeyboardInterrupt as e:  # workers finish their job under way, start no other
                stop[1] = 1
                interrupted = e
                continue
            if not part:
                break
            parts.append(part)
        status = _reap(pid, reaped)
        if not parts:
            died.append(f"worker {k} (pid {pid}) ended without its results ({_how(status)})")
            continue
        for i, ok, value in pickle.loads(b"".join(parts)):
            answers[i] = (ok, value)
    if interrupted is not None:
        raise interrupted
    for i in range(len(jobs)):
        if i in answers and not answers[i][0]:
            raise answers[i][1]
    if died:
        raise WorkerDied("; ".join(died))
    missing = [i for i in range(len(jobs)) if i not in answers]
    if missing:     # a worker stopped early although no job failed: cannot happen
        raise WorkerDied(f"{len(missing)} jobs were not done")
    return [answers[i][1] for i in range(len(jobs))]


def _reap(pid: int, reaped: dict[int, int]) -> int:
    """The wait status of worker ``pid``, waited for once (Ctrl-C does not stop the wait: the
    worker ends soon, it starts no further job)."""
    while pid not in reaped:
        try:
            reaped[pid] = os.waitpid(pid, 0)[1]
        except ChildProcessError:
            reaped[pid] = 0
        except KeyboardInterrupt:
            continue
    return reaped[pid]


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
