"""Getting a generation's data moving before the disks exist to write it to.

Role: ``Prefetch(readers, workers)`` starts, once the plan holds and while vCenter creates the
VM and its disks, what the writes will consume: a streaming reader's chunk stream
(``ChunkFeed``: fetched, decompressed and verified by ``workers`` threads, into a queue the
writer drains), or, for another reader (``--from``), its first pieces read into that reader's
cache. Fetching is C code that releases the GIL (decompression, hashing), so it runs beside the
Python of the vSphere steps. (Started before the login it measured slower: the fetch threads
then compete with the import and the login, which are on the critical path, and the queue is
full long before the disks exist.) Bounded by ``budget`` bytes in all (half the views' default
chunk cache; 256 MiB measured no faster, with more page faults); a read error here is left for
the writer to meet and report. ``stop()`` ends the cache warming when the writes begin;
``close()`` also stops the feeds (idempotent).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator, Sequence

from .diskwriter import pieces, streams
from .generation import piece_size

PREFETCH_BYTES = 128 << 20


class ChunkFeed:
    """A streaming reader's ``iter_chunks(workers)`` run ahead in a thread, into a queue of at
    most ``max_bytes``: the chunks of a disk are fetched and verified while vCenter is still
    creating the VM. Iterate it once; ``close()`` stops it (also half-way) and frees its
    workers. An error of the reader comes out of the iteration, where the writer meets it."""

    _END = object()

    def __init__(self, reader: Any, workers: int, max_bytes: int) -> None:
        chunk = max(1, int(getattr(reader, "chunk_size", None) or (1 << 20)))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(2, max_bytes // chunk))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(reader, workers),
                                        name=f"restore-feed {reader.label}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, reader: Any, workers: int) -> None:
        chunks = reader.iter_chunks(workers)
        try:
            for item in chunks:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the writer
            self._put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join()


class Prefetch:
    def __init__(self, readers: Sequence[Any], workers: int, budget: int = PREFETCH_BYTES) -> None:
        self.readers = [r for r in readers if any(n for _, n in r.extents())]
        self.workers = workers
        self.budget = budget
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.feeds: dict[str, ChunkFeed] = {}

    def start(self) -> "Prefetch":
        # Streaming readers bypass the cache: their chunk stream itself is started ahead.
        streaming = [r for r in self.readers if streams(r)]
        workers = max(1, min(self.workers, os.cpu_count() or 2) // max(1, len(streaming)))
        for r in streaming:
            self.feeds[r.label] = ChunkFeed(r, workers, self.budget // len(streaming))
        readers = [r for r in self.readers if not streams(r)]
        if readers:
            self._thread = threading.Thread(target=self._run, args=(readers,),
                                            name="restore-prefetch", daemon=True)
            self._thread.start()
        return self

    def _run(self, readers: list[Any]) -> None:
        share = self.budget // len(readers)
        plans = [list(pieces(r.extents(), piece_size(r), r.capacity)) for r in readers]
        for reader, todo in zip(readers, plans, strict=True):
            taken = 0
            for offset, length in todo:
                if self._stop.is_set() or taken >= share:
                    break
                try:
                    reader.read(offset, length)
                except Exception:
                    return
                taken += length

    def stop(self) -> None:
        """Stop reading into the cache (the writes begin); the feeds go on, to the writers."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def close(self) -> None:
        self.stop()
        feeds, self.feeds = self.feeds, {}
        for feed in feeds.values():
            feed.close()


