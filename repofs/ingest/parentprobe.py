"""The previous generation's chunks that a backup with changed extents keeps: each probed once
(``Repository.stored_size``: the file's header read, its size compared with what the header
declares) while the disks are read, so that the new index never names a chunk that is gone.
Those found whole join ``known``; ``lost()`` waits for the end and names the others.

Beside the reading, not on the ingest's workers: probe tasks queued ahead of the chunks to
store would hold the reading back for as long as the probe takes (seconds for millions of
chunks). ``THREADS`` probes in flight, because a parent written days ago is no longer in the
page cache: each probe then waits for one small read of the storage (~1 ms here), and several
in flight keep its queue busy (634 cold chunks: 0.5-0.8 s with one thread, 0.03-0.13 s with
8; docs/performance.md).

In worker processes from ``FORK_FROM`` chunks on a local repository: a probe is four short
system calls (open, read, stat, close), and in threads of the backup's own process each of them
hands the GIL over to the threads that read and store the changed data (a futex wake and a
context switch each time), which slowed the whole backup more than the probe's own CPU. Forked
workers (``format.forkpool``) share no GIL with it; they send back only the ids found lost. On
object storage a probe is a lookup in one listing, and stays in the process.

``stop`` (the backup gave up) ends the probe early, in threads and in worker processes.
"""
from __future__ import annotations

import mmap
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from format import forkpool
from format.repository import Repository
from repofs.errors import RepofsError


class ProbeStopped(RepofsError):
    """The backup gave up while the probe ran."""


class ParentProbe:
    THREADS = 8           # probes in flight
    FORK_FROM = 2048      # chunks: from here on, on a local repository, in worker processes
    PROCESSES = 2
    JOB = 8192            # chunks per job of a worker process: a stop is seen between jobs too

    def __init__(self, repo: Repository, known: set[bytes], stop: threading.Event, ids: set[bytes]):
        self._repo, self._known, self._stop = repo, known, stop
        self._ids = list(ids)
        self._lost: set[bytes] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._stopped = mmap.mmap(-1, 1)    # shared with the worker processes: 1 = stop

    @property
    def forks(self) -> bool:
        return len(self._ids) >= self.FORK_FROM and not getattr(self._repo.backend, "atomic_writes", False)

    def __enter__(self) -> "ParentProbe":
        if not self._ids:
            return self
        if self.forks:
            self._threads = ThreadPoolExecutor(1, thread_name_prefix="ingest-probe")
            self._futures = [self._threads.submit(self._in_processes)]
        else:
            n = min(self.THREADS, -(-len(self._ids) // 64))    # >= 64 chunks a thread
            self._threads = ThreadPoolExecutor(n, thread_name_prefix="ingest-probe")
            self._futures = [self._threads.submit(self._probe, self._ids[i::n], self._known)
                             for i in range(n)]
        return self

    def __exit__(self, *exc) -> None:
        if self._threads is not None:
            if exc[0] is not None:
                self._stop.set()
                self._stopped[0] = 1
            self._threads.shutdown()

    def lost(self) -> set[bytes]:
        """The probed chunks found missing or cut short (waits for the probe to end)."""
        if self._lost is None:
            self._lost = set().union(*(f.result() for f in self._futures))
        return self._lost

    def _in_processes(self) -> set[bytes]:
        ids = self._ids
        jobs = [(ids[i:i + self.JOB],) for i in range(0, len(ids), self.JOB)]
        lost: set[bytes] = set().union(*forkpool.run(jobs, self._lost_among, self.PROCESSES))
        self._known.update(cid for cid in ids if cid not in lost)
        return lost

    def _lost_among(self, ids: list[bytes]) -> set[bytes]:
        """In a worker process: the lost ones of ``ids``, probed by threads of its own."""
        n = max(1, min(self.THREADS // self.PROCESSES, len(ids) // 64))
        with ThreadPoolExecutor(n) as threads:
            return set().union(*threads.map(self._probe, [ids[i::n] for i in range(n)], [None] * n))

    def _probe(self, ids: list[bytes], known: set[bytes] | None) -> set[bytes]:
        lost = set()
        stored_size = self._repo.stored_size
        for i, cid in enumerate(ids):
            if i % 256 == 0 and (self._stopped[0] or self._stop.is_set()):
                raise ProbeStopped("stopped because a disk failed")
            if stored_size(cid) is None:
                lost.add(cid)
            elif known is not None:
                known.add(cid)
        return lost
