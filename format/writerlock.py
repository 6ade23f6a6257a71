"""A lock object per VM, with expiry, so that backups of one VM from several hosts serialize.

Where hosts share nothing but the repository's storage (an S3 bucket), a backup of VM ``v``
holds ``locks/vm-<t>`` (``t`` = first 24 hex digits of the keyed BLAKE3 of the VM's name,
as for the local ``flock`` files) while it writes the generation. The object is JSON::

    {"token": "<32 random hex digits>", "host": "<host name>", "pid": 1234, "ttl_s": 120,
     "boot": "<16 hex digits: SHA-256 of the kernel's boot id>"}

- Taking it: create the object only if absent (``put_new``: ``If-None-Match: *`` on S3,
  ``link(2)`` locally), then read it back and compare the token, which catches a store that
  ignores the condition.
- Holding it: a thread re-writes it every ``ttl_s / 4`` seconds; before the generation's
  manifest is written, ``assert_held`` reads it back and fails if it is no longer ours.
- Expiry: the object's age is measured by the storage's own clock (``backend.age``: the
  answer's ``Date`` against the object's ``Last-Modified``), so the hosts' clocks never
  enter. A lock older than its ``ttl_s`` plus ``GRACE_S`` belongs to a host that died or
  hangs; the next backup deletes it and takes the lock. A lock left by a process of this
  same boot of this host that no longer runs (a backup killed, or one that lost the storage
  and could not delete its lock) is stale at once: no need to wait for its expiry.
- Releasing: delete the object if it is still ours.

Limit: two hosts that find the same expired lock at the same moment may both delete and
re-create it; the token read-back then leaves at most one of them holding it, and the loser
fails at its next renewal or at ``assert_held`` — before it writes a manifest, unless it was
paused between that check and the manifest's write for longer than the lock's lifetime.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
from typing import Any

from .errors import CorruptObject, ObjectMissing, RepoError, RepositoryBusy
from .processes import running

TTL_S = 120
GRACE_S = 30
FOLDER = "locks"
MAX_LOCK_BYTES = 4096


class LockLost(RepositoryBusy):
    """Another process took this VM's lock while we held it (we were paused past its expiry)."""


class WriterLock:
    """``with WriterLock(backend, name, label):`` — see the module docstring."""

    def __init__(self, backend: Any, name: str, label: str, *, ttl_s: float = TTL_S,
                 grace_s: float = GRACE_S):
        self.backend = backend
        self.name = name
        self.label = label            # for messages: the VM's name
        self.ttl_s = ttl_s
        self.grace_s = grace_s
        self.token = secrets.token_hex(16)
        self._doc = (json.dumps({"token": self.token, "host": socket.gethostname(),
                                 "pid": os.getpid(), "ttl_s": ttl_s, "boot": BOOT},
                                sort_keys=True) + "\n").encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: BaseException | None = None

    # -- taking and releasing --------------------------------------------------------------

    def acquire(self) -> None:
        for _attempt in range(3):
            if self.backend.put_new(self.name, self._doc):
                if self._holder().get("token") != self.token:
                    raise RepositoryBusy(f"another backup of {self.label} took its lock at the same moment")
                self._thread = threading.Thread(target=self._renew, name="writer-lock", daemon=True)
                self._thread.start()
                return
            try:
                holder, age = self._holder(), self.backend.age(self.name)
            except ObjectMissing:
                continue  # released meanwhile: try again
            ttl = _number(holder.get("ttl_s"), self.ttl_s)
            if age <= ttl + self.grace_s and not _dead_here(holder):
                who = f" (host {holder.get('host')!s:.64}, pid {holder.get('pid')})" if holder else ""
                raise RepositoryBusy(f"another backup of {self.label} is running{who}; its lock "
                                     f"expires {int(ttl + self.grace_s - age) + 1} s after its last renewal")
            try:
                self.backend.delete(self.name)   # an expired lock: its holder is gone
            except ObjectMissing:
                pass
        raise RepositoryBusy(f"could not take the lock of {self.label}: it keeps changing hands")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if self._holder().get("token") == self.token:
                self.backend.delete(self.name)
        except RepoError:
            # gone, or the storage is unreachable: the lock then expires (or, on this host,
            # is found stale at once); a finished backup must not fail over it
            pass

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- holding ---------------------------------------------------------------------------

    def assert_held(self) -> None:
        """Raise ``LockLost`` unless the lock object is still ours."""
        if self._lost is not None:
            raise self._lost
        if self._holder().get("token") != self.token:
            raise LockLost(f"the lock of {self.label} was taken by another backup while this one "
                           "ran (it was paused longer than the lock's lifetime); nothing was committed")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if self._holder().get("token") != self.token:
                    self._lost = LockLost(f"the lock of {self.label} was taken by another backup; "
                                          "nothing was committed")
                    return
                self.backend.replace(self.name, self._doc)
            except Exception:  # noqa: BLE001 (storage trouble: retried; assert_held decides)
                continue

    def _holder(self) -> dict:
        data = self.backend.get(self.name)
        if len(data) > MAX_LOCK_BYTES:
            raise CorruptObject(self.name, "lock object too large")
        try:
            doc = json.loads(data)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}


def _boot_tag() -> str:
    """This boot of this host, as a tag that reveals neither (hashed boot id)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return hashlib.sha256(f.read().strip()).hexdigest()[:16]
    except OSError:
        return ""


BOOT = _boot_tag()


def _dead_here(holder: dict) -> bool:
    """Whether ``holder`` is a process of this boot of this host that no longer runs (a zombie
    has ended; another user's process runs: ``format.processes``)."""
    pid = holder.get("pid")
    if not BOOT or holder.get("boot") != BOOT or not isinstance(pid, int):
        return False
    return pid != os.getpid() and not running(pid)


def _number(value: object, default: float) -> float:
    """A positive number from a lock object written by someone else, bounded to a day."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 86400:
        return float(value)
    return default
