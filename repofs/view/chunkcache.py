"""A bounded, thread-safe cache of chunk plaintexts, shared by every reader of a view.

Least-recently-used eviction by bytes. Concurrent requests for the same chunk wait for one
fetch instead of fetching it twice. Fetch errors are not cached. ``on_evict``, when set, is
told how many bytes each insertion evicted (outside the cache's lock): the mount daemon
returns freed memory to the system with it (``repofs.allocator.Releaser``).
"""
from __future__ import annotations

import collections
import threading
from typing import Callable

DEFAULT_CACHE_BYTES = 256 << 20


class ChunkCache:
    def __init__(self, fetch: Callable[[bytes], bytes], max_bytes: int = DEFAULT_CACHE_BYTES):
        self._fetch = fetch
        self.max_bytes = max_bytes
        self._data: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[bytes, threading.Event] = {}
        self.hits = 0
        self.misses = 0
        self.on_evict: Callable[[int], None] | None = None

    @property
    def size(self) -> int:
        return self._bytes

    def peek(self, cid: bytes) -> bytes | None:
        with self._lock:
            data = self._data.get(cid)
            if data is not None:
                self._data.move_to_end(cid)
            return data

    def get(self, cid: bytes, load: Callable[[bytes], bytes] | None = None) -> bytes:
        """The bytes under ``cid``, fetched on a miss (by ``load`` when given: for entries
        that are not chunks, e.g. an index slot assembled from pieces)."""
        while True:
            with self._lock:
                data = self._data.get(cid)
                if data is not None:
                    self._data.move_to_end(cid)
                    self.hits += 1
                    return data
                waiter = self._loading.get(cid)
                if waiter is None:
                    self._loading[cid] = threading.Event()
                    self.misses += 1
                    break
            waiter.wait()
        try:
            data = (load or self._fetch)(cid)
        except BaseException:
            with self._lock:
                self._loading.pop(cid).set()
            raise
        with self._lock:
            evicted = self._insert(cid, data)
            self._loading.pop(cid).set()
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)
        return data

    def _insert(self, cid: bytes, data: bytes) -> int:
        """Insert under the lock; the bytes evicted to make room."""
        if len(data) > self.max_bytes:
            return 0
        evicted = 0
        old = self._data.pop(cid, None)
        if old is not None:
            self._bytes -= len(old)
        self._data[cid] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, gone = self._data.popitem(last=False)
            self._bytes -= len(gone)
            evicted += len(gone)
        return evicted
