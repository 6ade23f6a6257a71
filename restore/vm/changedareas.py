"""The areas of a disk written since a change id, handed out page by page as vCenter answers.

Role: ``ChangedAreas(vm, snapshot, key, capacity, change_id)`` asks
``QueryChangedDiskAreas`` for one page after the other in a thread of its own and gives the
areas, in disk order, to whoever iterates it — Quick Rollback's reads and writes — as each page
arrives: the first areas are being read and written while the later pages are still being asked
for (at 8 GiB, the test vCenter's 256 MiB pages are 32 round trips).

An answer that cannot be used ends the iteration with ``ChangedAreasUnusable``, after every
area handed out before it: a fault, a page that does not advance, more than ``MAX_QUERIES``
pages, or an area that starts before one already handed out (areas must come in disk order;
one that overlaps the area just before it is cut to what that one does not cover). Every area handed
out was answered by vCenter for this disk (clipped to the capacity), so what a caller wrote of
them is the generation's bytes: on ``ChangedAreasUnusable`` it may go on another way (compare
every block) without undoing anything.

Limits: the server's answers are trusted for what they cover (that is changed-block tracking's
contract; ``changetrust`` decides beforehand whether it holds). One page is held at a time
beyond the one being handed out. ``close()`` stops the queries (the page under way finishes)
and waits for the thread; the iteration must not be resumed after it.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

from pyVmomi import vmodl

from restore.vsphere.errors import VSphereError
from restore.vsphere.tasks import fault_text

MAX_QUERIES = 1_000_000
_END = object()


class ChangedAreasUnusable(VSphereError):
    """vCenter's changed areas for the disk cannot be used past some point (the text says why).
    The rollback catches it and compares instead; were it ever to escape, it is a vSphere error."""


class ChangedAreas:
    def __init__(self, vm: Any, snapshot: Any, key: int, capacity: int, change_id: str) -> None:
        self._vm, self._snapshot, self._key = vm, snapshot, key
        self.capacity, self.change_id = capacity, change_id
        self._pages: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ChangedAreas:
        """Start asking (idempotent; iterating starts it too)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"changed-areas {self._key}",
                                            daemon=True)
            self._thread.start()
        return self

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            offset = 0
            for _ in range(MAX_QUERIES):
                if offset >= self.capacity or self._stop.is_set():
                    break
                info = self._vm.QueryChangedDiskAreas(snapshot=self._snapshot, deviceKey=self._key,
                                                      startOffset=offset, changeId=self.change_id)
                page = []
                for a in info.changedArea or []:
                    start, length = int(a.start), int(a.length)
                    if length > 0 and 0 <= start < self.capacity:  # bounded by the disk
                        page.append((start, min(length, self.capacity - start)))
                end = int(info.startOffset) + int(info.length)
                if end <= offset:
                    raise ChangedAreasUnusable(f"QueryChangedDiskAreas did not advance past offset {offset}")
                offset = end
                if not self._put(sorted(page)):
                    return
            else:
                raise ChangedAreasUnusable("QueryChangedDiskAreas: too many pages")
            self._put(_END)
        except vmodl.MethodFault as e:
            self._put(ChangedAreasUnusable(fault_text(e)))
        except ChangedAreasUnusable as e:
            self._put(e)
        except Exception as e:  # a connection lost, an answer of the wrong shape …
            self._put(ChangedAreasUnusable(str(e) or type(e).__name__))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of the changed areas, in disk order, not overlapping."""
        self.start()
        low = high = 0   # the last area handed out: [low, high)
        while True:
            item = self._pages.get()
            if item is _END:
                return
            if isinstance(item, ChangedAreasUnusable):
                raise item
            for start, length in item:
                end = start + length
                if start < high:
                    if start < low:
                        raise ChangedAreasUnusable(f"QueryChangedDiskAreas answered the area at "
                                                   f"{start} after the one at {low}")
                    start = high   # it overlaps the area before it: the rest of it
                    if start >= end:
                        continue
                yield start, end - start
                low, high = start, end

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while True:   # a page waiting to be put is dropped
                try:
                    self._pages.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()
