"""The local backend's lock primitives and the writer lock built on them, in-process, so that
the mutation run of ``format/`` sees them (docs/security.md, "Mutation testing of the format").

A writer lock (format/writerlock.py) serializes the backups of one VM from hosts that share
only the repository's storage. What a user relies on: a second backup of the same VM is
refused while the first runs, with the holder named and when its lock expires; a lock whose
holder died (expired, or a process of this boot that no longer runs) is taken over; a lock
taken over while paused is noticed before anything is committed; a finished backup deletes
its lock but never another's. The same tests run against S3 in ``test_backend_conformance.py``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from format.backend import LocalBackend
from format.errors import CorruptObject, ObjectMissing, RepositoryBusy
from format.writerlock import BOOT, MAX_LOCK_BYTES, LockLost, WriterLock

NAME = "locks/vm-0123"


@pytest.fixture
def backend(tmp_path):
    return LocalBackend(tmp_path / "store")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _age(backend: LocalBackend, name: str, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(backend.path(name), (when, when))


def _plant(backend: LocalBackend, **doc) -> None:
    backend.put(NAME, json.dumps(doc).encode())


def test_a_lock_is_exclusive_names_its_holder_and_is_released(backend):
    first = WriterLock(backend, NAME, "web01")
    with first:
        doc = json.loads(backend.get(NAME))
        assert doc == {"token": first.token, "host": socket.gethostname(), "pid": os.getpid(),
                       "ttl_s": 120, "boot": BOOT}
        assert len(first.token) == 32 and len(BOOT) == 16 and int(BOOT, 16) >= 0
        assert backend.get(NAME) == (json.dumps(doc, sort_keys=True) + "\n").encode()
        with pytest.raises(RepositoryBusy) as info:
            WriterLock(backend, NAME, "web01").acquire()
        assert str(info.value) == (f"another backup of web01 is running (host {socket.gethostname()}, "
                                   f"pid {os.getpid()}); its lock expires 150 s after its last renewal")
        first.assert_held()
    assert not backend.exists(NAME)
    second = WriterLock(backend, NAME, "web01", ttl_s=60, grace_s=5)
    with second:
        assert json.loads(backend.get(NAME))["ttl_s"] == 60
        _age(backend, NAME, 20)
        with pytest.raises(RepositoryBusy, match=r"its lock expires 70 s after"):
            WriterLock(backend, NAME, "web01").acquire()


@pytest.mark.parametrize("ttl, age, taken", [
    (10, 45, True),          # 10 + 30 s of grace are over
    (10, 35, False),
    (100, 45, False),        # the holder's own ttl counts, not ours
    ("x", 45, False), (True, 45, False), (-1, 45, False), (86401, 45, False),  # ours then: 120
    ("x", 155, True),
    (86400, 45, False), (86400, 155, False), (86401, 155, True),
    (1, 100, True), (0, 100, False),
])
def test_an_expired_lock_is_taken_over(backend, ttl, age, taken):
    _plant(backend, token="other", host="elsewhere", pid=1, ttl_s=ttl, boot="0" * 16)
    _age(backend, NAME, age)
    lock = WriterLock(backend, NAME, "db")
    if taken:
        with lock:
            assert json.loads(backend.get(NAME))["token"] == lock.token
        assert not backend.exists(NAME)
    else:
        with pytest.raises(RepositoryBusy, match=r"^another backup of db is running \(host elsewhere, pid 1\)"):
            lock.acquire()
        assert json.loads(backend.get(NAME))["token"] == "other"


def test_a_lock_of_a_process_of_this_boot_that_is_gone_is_stale_at_once(backend):
    _plant(backend, token="t", host=socket.gethostname(), pid=_dead_pid(), ttl_s=120, boot=BOOT)
    with WriterLock(backend, NAME, "db") as lock:
        assert json.loads(backend.get(NAME))["token"] == lock.token


@pytest.mark.parametrize("holder", [
    {"pid": "alive", "boot": "this"},
    {"pid": "self", "boot": "this"},           # this very process (a second lock of its own)
    {"pid": "dead", "boot": "another"},        # another boot: its pids say nothing here
    {"pid": "dead", "boot": None},
    {"pid": 0, "boot": "this"}, {"pid": -5, "boot": "this"}, {"pid": "12", "boot": "this"},
])
def test_a_lock_of_a_live_or_unknown_process_is_respected(backend, holder):
    alive = subprocess.Popen(["sleep", "60"])       # a live holder of our own, never a signal's victim
    try:
        pids = {"alive": alive.pid, "self": os.getpid(), "dead": _dead_pid()}
        boots = {"this": BOOT, "another": "f" * 16, None: None}
        pid = pids.get(holder["pid"], holder["pid"])
        _plant(backend, token="t", host=socket.gethostname(), pid=pid, ttl_s=120, boot=boots[holder["boot"]])
        with pytest.raises(RepositoryBusy, match="is running"):
            WriterLock(backend, NAME, "db").acquire()
        assert alive.poll() is None                 # asked whether it lives, not signalled
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"{}"])
def test_a_lock_object_without_a_holder_is_busy_without_naming_one(backend, content):
    backend.put(NAME, content)
    with pytest.raises(RepositoryBusy) as info:
        WriterLock(backend, NAME, "db").acquire()
    assert str(info.value) == ("another backup of db is running; its lock expires 150 s after its "
                               "last renewal")


def test_a_lock_object_larger_than_its_bound_is_refused(backend):
    backend.put(NAME, b" " * (MAX_LOCK_BYTES + 1))
    with pytest.raises(CorruptObject) as info:
        WriterLock(backend, NAME, "db").acquire()
    assert (info.value.name, info.value.reason) == (NAME, "lock object too large")
    backend.put(NAME, b"{}" + b" " * (MAX_LOCK_BYTES - 2))
    with pytest.raises(RepositoryBusy):
        WriterLock(backend, NAME, "db").acquire()


def test_a_lock_taken_over_while_held_is_noticed_and_left_to_its_new_holder(backend):
    lock = WriterLock(backend, NAME, "db")
    lock.acquire()
    try:
        backend.replace(NAME, b'{"token": "thief"}')
        with pytest.raises(LockLost) as info:
            lock.assert_held()
        assert str(info.value) == ("the lock of db was taken by another backup while this one ran "
                                   "(it was paused longer than the lock's lifetime); nothing was committed")
    finally:
        lock.release()
    assert backend.get(NAME) == b'{"token": "thief"}'       # not ours: not deleted
    lock.release()                                           # twice: harmless


def test_the_renewing_thread_rewrites_the_lock_and_notices_a_theft(backend):
    lock = WriterLock(backend, NAME, "db", ttl_s=0.2)
    lock.acquire()
    try:
        _age(backend, NAME, 100)
        deadline = time.monotonic() + 10
        while backend.age(NAME) > 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.age(NAME) < 50                         # renewed
        assert json.loads(backend.get(NAME))["token"] == lock.token
        backend.delete(NAME)                                  # storage trouble: retried
        time.sleep(0.2)
        backend.put(NAME, b'{"token": "thief"}')
        while lock._lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LockLost) as info:
            lock.assert_held()
        assert str(info.value) == "the lock of db was taken by another backup; nothing was committed"
        assert backend.get(NAME) == b'{"token": "thief"}'    # the renewal stopped
    finally:
        lock.release()
    assert backend.exists(NAME)


def test_a_lock_released_with_its_object_gone_is_fine(backend):
    lock = WriterLock(backend, NAME, "db")
    lock.acquire()
    backend.delete(NAME)
    lock.release()
    assert not backend.exists(NAME)


class _IgnoresConditions(LocalBackend):
    """A store that ignores "create only if absent" (some S3 look-alikes do): both writers
    think they created the lock. No local file system behaves so."""

    def put_new(self, name: str, data: bytes) -> bool:
        self.put(name, data)
        if b"first" not in data:
            self.put(name, b'{"token": "first"}')            # the other writer's, a moment later
        return True


def test_a_store_that_ignores_the_condition_is_caught_by_the_read_back(tmp_path):
    with pytest.raises(RepositoryBusy) as info:
        WriterLock(_IgnoresConditions(tmp_path), NAME, "db").acquire()
    assert str(info.value) == "another backup of db took its lock at the same moment"


class _Flapping(LocalBackend):
    """A lock that is always there when created and gone when read (released and re-taken by
    others between our looks)."""

    tries = 0

    def put_new(self, name: str, data: bytes) -> bool:
        self.tries += 1
        return False

    def get(self, name: str) -> bytes:
        raise ObjectMissing(name)


def test_a_lock_that_keeps_changing_hands_is_given_up(tmp_path):
    backend = _Flapping(tmp_path)
    with pytest.raises(RepositoryBusy) as info:
        WriterLock(backend, NAME, "db").acquire()
    assert str(info.value) == "could not take the lock of db: it keeps changing hands"
    assert backend.tries == 3


class _ReleasedMeanwhile(LocalBackend):
    """The lock is there at the first try and released before it is read: the next try takes it."""

    def __init__(self, root):
        super().__init__(root)
        self.tries = 0

    def put_new(self, name: str, data: bytes) -> bool:
        self.tries += 1
        return self.tries > 1 and super().put_new(name, data)


def test_a_lock_released_between_two_looks_is_taken_at_the_next(tmp_path):
    backend = _ReleasedMeanwhile(tmp_path)
    with WriterLock(backend, NAME, "db") as lock:
        assert backend.tries == 2 and json.loads(backend.get(NAME))["token"] == lock.token


def test_a_lock_never_taken_releases_nothing(backend):
    _plant(backend, token="other")
    WriterLock(backend, NAME, "db").release()
    assert json.loads(backend.get(NAME)) == {"token": "other"}


def test_put_new_creates_once_and_leaves_no_temporary(backend):
    assert backend.put_new("locks/a", b"one") is True
    assert backend.put_new("locks/a", b"two") is False
    assert backend.get("locks/a") == b"one"
    assert sorted(os.listdir(backend.path("locks"))) == ["a"]
    assert os.stat(backend.path("locks/a")).st_mode & 0o777 == 0o600
    backend.replace("locks/a", b"three")
    assert backend.get("locks/a") == b"three" and list(backend.list("locks")) == ["locks/a"]
    assert 0 <= backend.age("locks/a") < 60
    _age(backend, "locks/a", 1000)
    assert 999 < backend.age("locks/a") < 1100
    with pytest.raises(ObjectMissing) as info:
        backend.age("locks/b")
    assert info.value.name == "locks/b"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_writes_without_fsync_leave_no_open_file_behind(backend):
    """Files written with ``sync=False`` are handed to the writeback thread, which closes them:
    a backup of a large disk must not run out of descriptors."""
    backend.put("chunks/aa/warm", b"w", sync=False)           # the thread runs from here on
    backend.sync()
    deadline = time.monotonic() + 10
    before = _open_fds()
    for k in range(40):
        backend.put(f"chunks/aa/{k:04d}", bytes([k]) * 5000, sync=False)
    backend.sync()
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_fds() <= before
    assert all(backend.get(f"chunks/aa/{k:04d}") == bytes([k]) * 5000 for k in range(40))


def test_a_missing_object_is_named_by_every_reader(backend):
    for read in (backend.get, backend.open_stream, backend.size, backend.mtime_ns, backend.age,
                 lambda n: backend.head(n, 10), backend.delete, lambda n: backend.rename(n, "chunks/aa/x")):
        with pytest.raises(ObjectMissing) as info:
            read("chunks/aa/gone")
        assert info.value.name == "chunks/aa/gone"


def test_an_open_folder_names_what_is_missing_and_follows_no_link(backend, tmp_path):
    """Prune's sweep works through open folders: a link planted in the storage is not taken
    for the file it points to (its size, its removal), a sub-folder is no object, and what is
    missing is named by its folder and name."""
    backend.put("chunks/aa/aa01", b"x" * 10)
    outside = tmp_path / "outside"
    outside.write_bytes(b"y" * 5000)
    os.symlink(outside, backend.path("chunks/aa/aa02"))
    os.mkdir(backend.path("chunks/aa/sub"))
    with backend.open_folder("chunks/aa") as folder, backend.open_folder("trash/b1", create=True) as trash:
        assert folder.stat("aa01")[0] == 10
        for name in ("aa02", "sub", "aa03"):
            with pytest.raises(ObjectMissing) as info:
                folder.stat(name)
            assert info.value.name == f"chunks/aa/{name}"
        with pytest.raises(ObjectMissing) as info:
            folder.move("aa03", trash)
        assert info.value.name == "chunks/aa/aa03"
        with pytest.raises(ObjectMissing) as info:
            folder.delete("aa03")
        assert info.value.name == "chunks/aa/aa03"
        folder.move("aa01", trash)
        assert trash.stat("aa01")[0] == 10
        assert outside.read_bytes() == b"y" * 5000
        # a writer's temporary file is told apart from the objects
        with open(backend.path("chunks/aa/aa05") + f".123-ab{LocalBackend.TMP_SUFFIX}", "wb"):
            pass
        objects, temporaries = folder.names()
        assert sorted(objects) == ["aa02", "sub"]
        assert temporaries == [f"aa05.123-ab{LocalBackend.TMP_SUFFIX}"]
    folder.close()                                    # a second close is harmless
    trash.close()
    os.fstat(1)                                       # (and closed nothing else)
    assert backend.open_folder("chunks/zz") is None   # not there: not made
    assert not os.path.exists(backend.path("chunks/zz"))
    assert backend.open_folder("trash/b1/aa01") is None   # a file is no folder
    with pytest.raises(ObjectMissing) as info:           # and a folder is no object
        backend.head("chunks/aa", 36)
    assert info.value.name == "chunks/aa"


def test_empty_folders_go_after_a_sweep_and_can_be_written_again(backend):
    for i in range(10):
        backend.put(f"chunks/{i:02x}/{i:02x}01", b"kept")      # folders that stay
        backend.put(f"chunks/{i + 16:02x}/{i + 16:02x}01", b"gone")
    for i in range(10):
        backend.delete(f"chunks/{i + 16:02x}/{i + 16:02x}01")
    os.makedirs(backend.path("chunks/ff/deeper"))
    backend.remove_empty_folders("chunks")
    assert sorted(os.listdir(backend.path("chunks"))) == [f"{i:02x}" for i in range(10)]
    # a folder removed is made again by the next write into it
    backend.put("chunks/10/1002", b"again")
    assert backend.get("chunks/10/1002") == b"again"
    backend.put("chunks/ff/ff02", b"again", sync=False)
    backend.sync()
    assert backend.get("chunks/ff/ff02") == b"again"


def test_a_process_forked_after_writes_closes_its_own_files(backend):
    """The writeback thread is not forked with its process: a child (a daemon, a worker)
    that writes without fsync must still close every file it wrote."""
    backend.put("chunks/aa/warm", b"w", sync=False)           # the parent's thread runs
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                              # the child: report, never return
        code = 1
        try:
            before = _open_fds()
            for k in range(100):
                backend.put(f"chunks/bb/{k:04d}", bytes([k]) * 100, sync=False)
            backend.sync()
            deadline = time.monotonic() + 20
            while _open_fds() > before and time.monotonic() < deadline:
                time.sleep(0.02)
            os.write(write, str(_open_fds() - before).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        grown = answer.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and grown == b"0"
    assert all(backend.get(f"chunks/bb/{k:04d}") == bytes([k]) * 100 for k in range(100))
