"""The chunk cache tells its owner what it evicted, and the mount daemon's releaser returns
freed heap pages after a set number of evicted bytes (repofs/view/chunkcache.py,
repofs/allocator.py)."""
from __future__ import annotations

import threading

from repofs.allocator import Releaser
from repofs.view.chunkcache import ChunkCache


def _fetch(cid: bytes) -> bytes:
    return cid * 1000          # 1000 bytes per one-byte id


def test_evictions_are_reported_with_their_sizes_outside_the_lock():
    cache = ChunkCache(_fetch, max_bytes=3000)
    seen: list[int] = []

    def on_evict(n: int) -> None:
        cache.peek(b"x")       # would deadlock if called under the cache's lock
        seen.append(n)

    cache.on_evict = on_evict
    for cid in (b"a", b"b", b"c"):
        assert cache.get(cid) == cid * 1000
    assert seen == []          # all three fit
    cache.get(b"d")
    assert seen == [1000]      # "a", the least recently used, made room
    cache.get(b"b")            # a hit evicts nothing
    cache.get(b"ee", load=lambda cid: cid * 1000)   # 2000 bytes: "c" and "d" go
    assert seen == [1000, 2000]
    assert cache.size == 3000 and cache.peek(b"b") == b"b" * 1000 and cache.peek(b"c") is None


def test_an_entry_larger_than_the_cache_is_not_kept_and_evicts_nothing():
    cache = ChunkCache(_fetch, max_bytes=1500)
    seen: list[int] = []
    cache.on_evict = seen.append
    cache.get(b"a")
    assert cache.get(b"zz") == b"zz" * 1000        # returned, not cached
    assert seen == [] and cache.peek(b"a") == b"a" * 1000 and cache.peek(b"zz") is None


def test_the_releaser_releases_once_per_threshold_from_many_threads():
    releaser = Releaser(every=1 << 20)
    per_thread = 1000

    def work() -> None:
        for _ in range(per_thread):
            releaser.freed(4096)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert releaser.releases == 8 * per_thread * 4096 // (1 << 20)
