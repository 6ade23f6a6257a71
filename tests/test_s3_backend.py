"""The S3 backend (format/s3backend.py) against a real S3 server in this process, fast enough
for the mutation run of ``format/`` (docs/security.md, "Mutation testing of the format").

The server is moto's HTTP server (``ThreadedMotoServer``: werkzeug on a loopback port, the
same S3 implementation as the ``moto_server`` process of tests/fixtures_s3.py) started once
per test session; it costs ~0.05 s once moto is imported, so a process forked per mutant
starts its own. Requests go over HTTP and are signed: the server checks signatures
(IAM on, an access key made for the tests), so wrong keys get the real refusal.

Faults that a healthy server does not give on request (a 503 "slow down", a body cut off
while it streams, an access refusal) come from ``FaultRelay``, an HTTP relay between the
backend and the server that answers the next requests as told and passes the rest on
unchanged; it counts the requests, which is how a test sees retries.

What a user relies on, each asserted here: objects stored under the repository's prefix and
read back byte for byte; listings recursive below a folder and complete past one page;
missing objects named; background uploads visible after ``sync`` and their failure raised
by it; create-if-absent; deletes that say when nothing was there; retries of what a retry
cures (throttling, a cut body) and none of what it does not (refusals), each ending in one
line without a credential; Object Lock: retention on what generations are made of only,
locked objects refused as such, and never a second version of an object.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from format import s3backend
from format.errors import (ObjectLocked, ObjectMissing, RepoError, RepositoryNotFound,
                           StorageAccessDenied, StorageUnavailable)
from format.s3backend import (LISTED_PREFIX, S3Backend, Retention, _ObjectCache, folder_of,
                              make_client, parse_url)

REGION = "us-east-1"
ACCOUNT = "123456789012"      # moto's account for the keys it makes


class FaultRelay:
    """An HTTP relay on loopback in front of the S3 server: ``fail(status, code, n)`` answers
    the next ``n`` requests with that S3 error, ``cut(n)`` sends the next ``n`` answers' bodies
    half and closes the connection; every other request is passed on unchanged."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self.plan: list[tuple] = []
        self.lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with relay.lock:
                    relay.requests.append((self.command, self.path))
                    relay.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fault = relay.plan.pop(0) if relay.plan else None
                if fault is not None and fault[0] in ("truncate", "edit") and self.command not in (
                        "GET", "HEAD"):
                    with relay.lock:
                        relay.plan.insert(0, fault)
                    fault = None
                if fault is not None and fault[0] == "fail":
                    _, status, code = fault
                    answer = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                              f"<Message>injected</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                upstream = http.client.HTTPConnection(*relay.target, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                    response = upstream.getresponse()
                    data = response.read()
                    length_of = {k.lower(): v for k, v in response.getheaders()}.get("content-length")
                    headers = [(k, v) for k, v in response.getheaders()
                               if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                    status = response.status
                finally:
                    upstream.close()
                if fault is not None and fault[0] == "truncate":
                    data = data.replace(b"<IsTruncated>false</IsTruncated>", b"<IsTruncated>true</IsTruncated>")
                    fault = None
                if fault is not None and fault[0] == "edit":
                    headers = fault[1](headers)
                    fault = None
                self.send_response_only(status)      # the server's own Date and Server
                for k, v in headers:
                    self.send_header(k, v)
                # a HEAD answer has no body but the object's length
                self.send_header("Content-Length", length_of if self.command == "HEAD" and length_of
                                 else str(len(data)))
                if fault is not None:       # "cut": half the body, then the connection drops
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, status: int, code: str, n: int = 1) -> None:
        with self.lock:
            self.plan += [("fail", status, code)] * n

    def cut(self, n: int = 1) -> None:
        with self.lock:
            self.plan += [("cut", 0, "")] * n

    def truncate(self) -> None:
        """The next read's answer (a listing: GET) says more pages follow."""
        with self.lock:
            self.plan.append(("truncate", 0, ""))

    def edit(self, change: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]) -> None:
        """The next read's answer (GET, HEAD) has its headers changed by ``change`` (a server's clock,
        a header a server leaves out)."""
        with self.lock:
            self.plan.append(("edit", change))

    def reset(self) -> None:
        with self.lock:
            self.plan.clear()
            self.requests.clear()
            self.headers.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Store:
    """The session's server: its endpoint, the relay in front of it, the key that signs."""

    def __init__(self) -> None:
        from moto import settings
        from moto.server import ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        import boto3
        # the server's state is this process's memory: a process forked from one that ran
        # these tests before (the mutation run) inherits its users, hence a new name
        self._previous_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        user = f"repofs-{secrets.token_hex(4)}"
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        # from here on every request must be signed with that key
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        self.relay = FaultRelay((host, port))
        self.admin = self.client()

    def client(self, secret_key: str | None = None, *, attempts: int = 3, endpoint: str | None = None):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=endpoint or self.relay.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, connect_timeout=5,
                                          read_timeout=30,
                                          retries={"mode": "standard", "total_max_attempts": attempts}))

    def bucket(self, locked: bool = False) -> str:
        name = f"t-{secrets.token_hex(8)}"
        self.admin.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if locked else {}))
        return name

    def fill(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Store many objects at once, straight into the server's own state (a thousand
        signed PUTs would cost seconds per mutant); the tests then read them over HTTP."""
        from moto.s3.models import s3_backends
        state = s3_backends[ACCOUNT]["aws"]
        for key, value in objects.items():
            state.put_object(bucket, key, value)

    def close(self) -> None:
        from moto import settings
        settings.INITIAL_NO_AUTH_ACTION_COUNT = self._previous_auth
        self.relay.close()
        self.server.stop()


@pytest.fixture(scope="session")
def store() -> Iterator[Store]:
    server = Store()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REPOFS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def store_(store: Store, cache_dir: Path) -> Iterator[Store]:
    store.relay.reset()
    yield store
    store.relay.reset()


@pytest.fixture
def backend(store_: Store) -> Iterator[S3Backend]:
    b = S3Backend(store_.bucket(), "some/repo/", client=store_.client(), uploads=4)
    yield b
    b.close()


def _locked(store: Store) -> S3Backend:
    b = S3Backend(store.bucket(locked=True), "repo/", client=store.client(), uploads=2)
    b.enable_retention(Retention("GOVERNANCE", 4))
    return b


# -- what the backend stores and where -------------------------------------------------------

def test_objects_are_stored_below_the_prefix_and_read_back_byte_for_byte(backend, store_):
    data = bytes(range(256)) * 9 + b"\x00end"
    backend.put("chunks/ab/ab01", data)
    backend.put("config", b"")
    raw = store_.admin.get_object(Bucket=backend.bucket, Key="some/repo/chunks/ab/ab01")["Body"].read()
    assert raw == data
    assert backend.get("chunks/ab/ab01") == data
    assert backend.get("config") == b""
    assert backend.key("x/y") == "some/repo/x/y"
    assert backend.location == f"s3://{backend.bucket}/some/repo"
    assert backend.atomic_writes is True
    info = backend.object_info("chunks/ab/ab01")
    assert info["ContentLength"] == len(data)
    # the first bytes and the whole size in one ranged read
    assert backend.head("chunks/ab/ab01", 10) == (data[:10], len(data))
    assert backend.head("chunks/ab/ab01", 1) == (data[:1], len(data))
    assert backend.head("chunks/ab/ab01", len(data) + 50) == (data, len(data))
    with pytest.raises(ObjectMissing) as missing:
        backend.head("chunks/ab/ab02", 10)
    assert missing.value.name == "chunks/ab/ab02"


def test_sizes_come_from_the_chunk_listing_and_from_head_for_the_rest(backend, store_):
    backend.put("chunks/00/0001", b"x" * 100)
    backend.put("manifests/m1", b"y" * 7)
    assert backend.size("chunks/00/0001") == 100
    assert backend.size("manifests/m1") == 7
    assert backend.exists("chunks/00/0001") and not backend.exists("chunks/00/0002")
    # a chunk written by another host after the listing was taken is unknown here (re-uploaded)
    store_.admin.put_object(Bucket=backend.bucket, Key="some/repo/chunks/00/0002", Body=b"z")
    assert not backend.exists("chunks/00/0002")
    with pytest.raises(ObjectMissing) as missing:
        backend.size("chunks/00/0002")
    assert missing.value.name == "chunks/00/0002"
    # ... while what this backend writes enters its listing, with its size
    backend.put("chunks/00/0003", b"w" * 33)
    backend.put("chunks/00/0004", b"v" * 5, sync=False)
    backend.sync()
    assert backend.size("chunks/00/0003") == 33 and backend.size("chunks/00/0004") == 5
    assert {"chunks/00/0001", "chunks/00/0003", "chunks/00/0004"} <= backend.written
    # a manifest is asked of the store each time: another host's manifest is seen
    store_.admin.put_object(Bucket=backend.bucket, Key="some/repo/manifests/m2", Body=b"abc")
    assert backend.exists("manifests/m2") and backend.size("manifests/m2") == 3
    assert not backend.exists("manifests/m3")
    # a deleted chunk leaves the listing
    backend.delete("chunks/00/0003")
    assert not backend.exists("chunks/00/0003")
    assert "chunks/00/0003" not in backend.written


def test_listing_is_recursive_below_its_folder_and_complete_past_a_page(backend, store_):
    """More than 1000 objects: a folder's listing follows continuation tokens; delete_many
    sends batches of 1000."""
    names = [f"chunks/{i % 2:02x}/{i % 2:02x}{i:06x}" for i in range(1003)]
    store_.fill(backend.bucket, {"some/repo/" + n: n.encode() for n in names})
    backend.put("chunks-not/aa", b"1")
    backend.put("indexes/aa/aa1", b"2")
    listed = list(backend.list("chunks/"))          # two pages
    assert sorted(listed) == sorted(names) and len(listed) == len(set(listed))
    stat = {name: (size, mtime) for name, size, mtime in backend.list_stat("chunks/01")}
    assert set(stat) == {n for n in names if n.startswith("chunks/01/")}
    assert all(size == len(name) for name, (size, _) in stat.items())
    assert all(abs(mtime / 1e9 - dt.datetime.now().timestamp()) < 3600 for _, mtime in stat.values())
    assert set(backend.list("indexes")) == {"indexes/aa/aa1"}
    assert list(backend.list("nothing")) == []
    store_.relay.fail(500, "InternalError", 3)
    with pytest.raises(StorageUnavailable) as failed:
        list(backend.list("indexes"))
    assert str(failed.value) == f"S3 failed to list s3://{backend.bucket}/some/repo/indexes: InternalError: injected"
    # one DeleteObjects per 1000 names; a name already gone is no failure
    victims = [n for n in names if n.startswith("chunks/01/")] + ["chunks/01/01ffffff"]
    store_.relay.reset()
    assert backend.delete_many(victims) == {}
    posts = [r for r in store_.relay.requests if r[0] == "POST"]
    assert len(posts) == 1
    left = set(backend.list("chunks"))
    assert left == {n for n in names if n.startswith("chunks/00/")}
    assert not backend.exists(victims[0]) and backend.exists(names[0])
    assert backend.delete_many([]) == {}
    store_.relay.reset()
    assert backend.delete_many(sorted(left)) == {}
    assert len([r for r in store_.relay.requests if r[0] == "POST"]) == 1
    assert set(backend.list("")) == {"chunks-not/aa", "indexes/aa/aa1"}
    assert backend.delete_many([f"chunks/00/{i:08x}" for i in range(1001)]) == {}
    assert len([r for r in store_.relay.requests if r[0] == "POST"]) == 3


def test_a_chunk_listing_of_more_than_a_page_is_taken_per_shard(backend, store_):
    """When the first listing of ``chunks/`` is not complete (more than 1000 chunks), the
    backend lists the 256 shard folders instead. The relay marks that first answer truncated:
    a bucket of a thousand chunks per shard costs seconds of this server per listing."""
    names = ["chunks/00/00a1", "chunks/00/00a2", "chunks/7f/7fa1", "chunks/ff/ffa1", "chunks/ff/ffa2"]
    store_.fill(backend.bucket, {"some/repo/" + n: n.encode() * 2 for n in names})
    store_.fill(backend.bucket, {"some/repo/indexes/00/00a3": b"i", "some/repo/chunks0": b"c"})
    store_.relay.truncate()
    assert backend.size("chunks/ff/ffa2") == 28
    gets = [path for method, path in store_.relay.requests if method == "GET"]
    assert len(gets) == 1 + 256
    assert all(f"prefix=some%2Frepo%2Fchunks%2F{i:02x}%2F" in "".join(gets) for i in range(256))
    assert backend._listing == {n: 2 * len(n) for n in names}
    store_.relay.reset()
    assert backend.exists("chunks/00/00a1") and backend.exists("chunks/7f/7fa1")
    assert not backend.exists("chunks/00/00a3") and not backend.exists("chunks/ff/ffa3")
    assert store_.relay.requests == []           # taken once


def test_repositories_sharing_a_bucket_see_only_their_own_chunks(store_):
    """Two repositories under prefixes of the same length in one bucket: a chunk stored by
    one is not taken for stored by the other (its backup would name a chunk it lacks)."""
    bucket = store_.bucket()
    one = S3Backend(bucket, "r1/", client=store_.client())
    two = S3Backend(bucket, "r2/", client=store_.client(attempts=1))
    one.put("chunks/aa/aa01", b"only in r1")
    two.put("indexes/aa/aa02", b"r2 has no chunk")
    assert one.exists("chunks/aa/aa01")
    assert not two.exists("chunks/aa/aa01") and two._listing == {}
    again = S3Backend(bucket, "r2/", client=store_.client(attempts=1))
    store_.relay.fail(500, "InternalError")
    with pytest.raises(StorageUnavailable) as failed:
        again.exists("chunks/aa/aa01")
    assert str(failed.value) == f"S3 failed to list s3://{bucket}/r2/chunks/: InternalError: injected"


def test_background_uploads_are_visible_after_sync_and_their_failure_stops_the_writer(store_):
    backend = S3Backend(store_.bucket(), "r", client=store_.client(attempts=1), uploads=2)
    blobs = {f"chunks/{i:02x}/{i:02x}aa": os.urandom(1000 + i) for i in range(12)}
    for name, data in blobs.items():
        backend.put(name, data, sync=False)
    backend.sync()
    for name, data in blobs.items():
        assert backend.get(name) == data
    assert backend.written == set(blobs)
    # the store refuses one upload: sync raises it, and every later put fails at once
    store_.relay.fail(500, "InternalError")
    backend.put("chunks/ff/ffaa", b"lost", sync=False)
    with pytest.raises(StorageUnavailable, match="S3 failed to write .*chunks/ff/ffaa: InternalError"):
        backend.sync()
    store_.relay.reset()
    with pytest.raises(StorageUnavailable):
        backend.put("chunks/ff/ffbb", b"never", sync=False)
    with pytest.raises(StorageUnavailable):
        backend.put("manifests/m", b"never")
    assert store_.relay.requests == []
    backend.close()


def test_uploads_in_flight_are_bounded(store_):
    backend = S3Backend(store_.bucket(), "", client=store_.client(), uploads=3)
    assert backend._slots._value == 6          # 2 x uploads objects wait at most
    for i in range(20):
        backend.put(f"chunks/00/00{i:02x}", b"d", sync=False)
        assert backend._slots._value >= 0
    backend.sync()
    assert backend._slots._value == 6 and not backend._pending
    assert backend.location == f"s3://{backend.bucket}"
    backend.close()


def test_create_if_absent_replace_and_delete(backend, store_):
    assert backend.put_new("leases/l1", b"first")
    assert not backend.put_new("leases/l1", b"second")
    assert backend.get("leases/l1") == b"first"
    backend.replace("leases/l1", b"renewed")
    assert backend.get("leases/l1") == b"renewed"
    assert -5 <= backend.age("leases/l1") < 300
    info = backend.object_info("leases/l1")
    assert backend.mtime_ns("leases/l1") == int(info["LastModified"].timestamp() * 1e9)
    assert abs(backend.mtime_ns("leases/l1") / 1e9 - dt.datetime.now().timestamp()) < 300
    backend.put("manifests/m", b"one")
    backend.put("manifests/m", b"two")
    assert backend.get("manifests/m") == b"two"
    backend.delete("leases/l1")
    assert not backend.exists("leases/l1")
    # S3 deletes what is not there without a word; the backend says so ...
    with pytest.raises(ObjectMissing) as missing:
        backend.delete("leases/l1")
    assert missing.value.name == "leases/l1"
    # ... unless the caller just saw it (no HEAD: one request)
    store_.relay.reset()
    backend.delete("leases/l1", known=True)
    assert [m for m, _ in store_.relay.requests] == ["DELETE"]
    assert backend.put_new("leases/l1", b"again")
    backend.remove_empty_folders("leases")
    assert backend.get("leases/l1") == b"again"


def test_an_age_is_told_by_the_storages_clock(backend, store_):
    """A lease's or lock's age compares the object's time with the storage's own clock (its
    answer's Date), so that a host whose clock is wrong does not take over a live lock."""
    from email.utils import formatdate
    backend.put("locks/vm", b"held")
    ahead = formatdate(dt.datetime.now(dt.timezone.utc).timestamp() + 1000, usegmt=True)
    store_.relay.edit(lambda headers: [(k, ahead if k.lower() == "date" else v) for k, v in headers])
    assert 990 < backend.age("locks/vm") < 1300
    # a store that sends no Date: this host's clock
    store_.relay.edit(lambda headers: [(k, v) for k, v in headers if k.lower() != "date"])
    assert -5 < backend.age("locks/vm") < 300


def test_a_ranged_read_without_a_content_range_is_its_own_size(backend, store_):
    data = bytes(range(200))
    backend.put("chunks/aa/aa1", data)
    store_.relay.edit(lambda headers: [(k, v) for k, v in headers if k.lower() != "content-range"])
    assert backend.head("chunks/aa/aa1", 36) == (data[:36], 36)
    store_.relay.fail(500, "InternalError", 3)
    with pytest.raises(StorageUnavailable, match=rf"^S3 failed to read s3://{backend.bucket}/some/repo/"
                       "chunks/aa/aa1: InternalError: injected$"):
        backend.head("chunks/aa/aa1", 36)


def test_rename_copies_then_deletes(backend, store_):
    backend.put("chunks/aa/aa1", b"payload")
    assert backend.retention() is None
    store_.relay.reset()
    backend.rename("chunks/aa/aa1", "trash/b1/chunks/aa/aa1")
    # a copy and a delete, no HEAD: prune moves every condemned object this way
    assert [m for m, _ in store_.relay.requests] == ["PUT", "DELETE"]
    assert backend.get("trash/b1/chunks/aa/aa1") == b"payload"
    assert not backend.exists("chunks/aa/aa1")
    assert set(backend.list("")) == {"trash/b1/chunks/aa/aa1"}
    with pytest.raises(ObjectMissing):
        backend.rename("chunks/aa/nothing", "trash/b1/x")


# -- the cache of objects that never change ---------------------------------------------------

def test_indexes_and_manifests_are_read_from_the_store_once_per_host(backend, store_, cache_dir):
    iname, mname, cname = "indexes/ab/ab12", "manifests/0123abcd", "chunks/ab/ab12"
    for name in (iname, mname, cname):
        backend.put(name, name.encode() * 3)
    for name in (iname, mname, cname):
        assert backend.get(name) == name.encode() * 3
    store_.relay.reset()
    # another backend of the same location on this host: no request for the index or manifest
    again = S3Backend(backend.bucket, "some/repo/", client=store_.client())
    assert again.get(iname) == iname.encode() * 3
    assert again.get(mname) == mname.encode() * 3
    assert store_.relay.requests == []
    assert again.get(cname) == cname.encode() * 3
    assert len(store_.relay.requests) == 1          # chunks are not kept
    root = _ObjectCache.for_location(backend.location)
    assert root is not None and root.root.startswith(str(cache_dir / "s3"))
    assert os.path.exists(os.path.join(root.root, "indexes", "ab_ab12"))
    assert sorted(os.listdir(root.root)) == ["indexes", "manifests"]
    # another location has its own cache
    assert _ObjectCache.for_location(backend.location + "x").root != root.root  # type: ignore[union-attr]
    again.close()


def test_without_a_host_cache_every_read_asks_the_store(store_, monkeypatch):
    monkeypatch.setenv("REPOFS_CACHE_DIR", "none")
    backend = S3Backend(store_.bucket(), "", client=store_.client())
    assert backend.cache is None
    backend.put("indexes/ab/ab12", b"index")
    store_.relay.reset()
    assert backend.get("indexes/ab/ab12") == b"index" and backend.get("indexes/ab/ab12") == b"index"
    assert [m for m, _ in store_.relay.requests] == ["GET", "GET"]
    # a refused read of the retention object is a refusal, named, not "no retention"
    fresh = S3Backend(backend.bucket, "", client=store_.client())
    store_.relay.fail(403, "AccessDenied")
    with pytest.raises(StorageAccessDenied) as denied:
        fresh.retention()
    assert str(denied.value).startswith(f"S3 refused to read s3://{backend.bucket}/object-lock: AccessDenied")


def test_the_cache_keeps_only_names_of_the_formats_shape(tmp_path, monkeypatch):
    cache = _ObjectCache(str(tmp_path / "c"))
    for name in ("indexes/../../etc/x", "indexes/AB", "indexes/", "manifests/a b", "config",
                 "chunks/ab/ab12", "indexes/ab/ab..12", "leases/ab"):
        cache.put(name, b"data")
        assert cache.get(name) is None
    assert not os.path.exists(tmp_path / "c") or all(
        not files for _, _, files in os.walk(tmp_path / "c"))
    cache.put("manifests/ab12", b"m")
    assert cache.get("manifests/ab12") == b"m"
    assert cache.get("manifests/ab13") is None
    assert os.stat(tmp_path / "c" / "manifests").st_mode & 0o777 == 0o700
    assert os.listdir(tmp_path / "c" / "manifests") == ["ab12"]
    # too large to keep: not kept (and what is kept is read back at most the bound + 1)
    monkeypatch.setattr(_ObjectCache, "MAX_OBJECT", 4)
    cache.put("manifests/ab14", b"12345")
    assert cache.get("manifests/ab14") is None
    cache.put("manifests/ab15", b"1234")
    assert cache.get("manifests/ab15") == b"1234"
    with open(tmp_path / "c" / "manifests" / "ab15", "wb") as f:
        f.write(b"123456789")
    assert cache.get("manifests/ab15") == b"12345"
    # a cache that cannot be written costs only time
    (tmp_path / "file").write_bytes(b"")
    _ObjectCache(str(tmp_path / "file")).put("manifests/ab12", b"m")
    for off in ("none", "off"):
        monkeypatch.setenv("REPOFS_CACHE_DIR", off)
        assert _ObjectCache.for_location("s3://b/p") is None
    monkeypatch.delenv("REPOFS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    where = _ObjectCache.for_location("s3://b/p")
    assert where is not None and where.root.startswith(str(tmp_path / "xdg" / "repofs" / "s3") + "/")
    assert len(os.path.basename(where.root)) == 32


# -- errors: retried when a retry cures them, one line when not --------------------------------

def test_throttling_and_server_errors_are_retried(store_):
    backend = S3Backend(store_.bucket(), "", client=store_.client(attempts=3))
    assert backend.retention() is None      # read once: not among the requests counted below
    store_.relay.reset()
    store_.relay.fail(503, "SlowDown", 2)
    backend.put("manifests/m", b"kept")
    assert [m for m, _ in store_.relay.requests] == ["PUT"] * 3
    store_.relay.reset()
    store_.relay.fail(500, "InternalError", 3)
    with pytest.raises(StorageUnavailable) as failed:
        backend.get("manifests/m")
    assert len(store_.relay.requests) == 3
    assert str(failed.value) == (f"S3 failed to read s3://{backend.bucket}/manifests/m: "
                                 "InternalError: injected")
    assert backend.get("manifests/m") == b"kept"


def test_a_body_cut_off_while_it_streams_is_read_again(store_):
    backend = S3Backend(store_.bucket(), "", client=store_.client(attempts=1))
    data = os.urandom(200_000)
    backend.put("chunks/aa/aa1", data)
    store_.relay.reset()
    store_.relay.cut(2)
    assert backend.get("chunks/aa/aa1") == data
    assert [m for m, _ in store_.relay.requests] == ["GET"] * 3
    store_.relay.reset()
    store_.relay.cut(3)
    with pytest.raises(StorageUnavailable, match=r"^cannot reach the S3 endpoint to read "
                       rf"s3://{backend.bucket}/chunks/aa/aa1 \(\w+Error\)$"):
        backend.get("chunks/aa/aa1")
    assert len(store_.relay.requests) == 3


def test_refusals_are_not_retried_and_name_no_credential(store_):
    bucket = store_.bucket()
    backend = S3Backend(bucket, "p", client=store_.client(attempts=5))
    backend.put("chunks/aa/aa1", b"x")
    store_.relay.reset()
    store_.relay.fail(403, "AccessDenied")
    with pytest.raises(StorageAccessDenied) as denied:
        backend.get("manifests/nothing")
    assert len(store_.relay.requests) == 1
    assert str(denied.value) == (f"S3 refused to read s3://{bucket}/p/manifests/nothing: AccessDenied "
                                 "(check the credentials and the bucket's policy)")
    # a wrong secret: the server's own refusal, once, without the key in the text
    wrong = S3Backend(bucket, "p", client=store_.client("not-the-secret", attempts=5))
    store_.relay.reset()
    with pytest.raises(StorageAccessDenied) as denied:
        wrong.put("leases/l", b"x")
    assert len(store_.relay.requests) == 1
    text = str(denied.value)
    assert text.startswith(f"S3 refused to write s3://{bucket}/p/leases/l: SignatureDoesNotMatch")
    assert store_.secret_key not in text and store_.access_key not in text and "\n" not in text
    # a refused delete in a repository without retention is a refusal, not a lock
    store_.relay.fail(403, "AccessDenied")
    with pytest.raises(StorageAccessDenied, match="S3 refused to delete"):
        backend.delete("chunks/aa/aa1", known=True)
    assert backend.get("chunks/aa/aa1") == b"x"


def test_no_bucket_and_no_server_are_named(store_):
    backend = S3Backend("t-no-such-bucket-here", "p", client=store_.client())
    with pytest.raises(RepositoryNotFound, match="^no bucket 't-no-such-bucket-here' at the S3 endpoint$"):
        backend.get("config")
    with pytest.raises(RepositoryNotFound):
        list(backend.list("manifests"))
    assert len(store_.relay.requests) == 2          # not retried
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    nowhere = S3Backend("bkt", "", client=store_.client(attempts=1,
                                                        endpoint=f"http://127.0.0.1:{port}"))
    with pytest.raises(StorageUnavailable, match=r"^cannot reach the S3 endpoint to read "
                       r"s3://bkt/config \(EndpointConnectionError\)$"):
        nowhere.get("config")


def test_botocore_errors_become_ours(store_, monkeypatch):
    from botocore import exceptions as be
    backend = S3Backend(store_.bucket(), "", client=store_.client())

    def raiser(error):
        def fn(**kwargs):
            raise error
        return fn
    with pytest.raises(StorageAccessDenied, match="^no S3 credentials: set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE$"):
        backend._call("read", "config", raiser(be.NoCredentialsError()))
    for error in (be.ConnectionClosedError(endpoint_url="x"), be.ReadTimeoutError(endpoint_url="x"),
                  be.ConnectTimeoutError(endpoint_url="x"), be.ProxyConnectionError(proxy_url="x"),
                  be.ResponseStreamingError(error="x")):
        with pytest.raises(StorageUnavailable, match=rf"^cannot reach the S3 endpoint to list "
                           rf"s3://{backend.bucket}/chunks \({type(error).__name__}\)$"):
            backend._call("list", "chunks", raiser(error))
    with pytest.raises(StorageUnavailable, match=rf"^S3 failed to write s3://{backend.bucket} "
                       r"\(ParamValidationError\)$"):
        backend._call("write", "", raiser(be.ParamValidationError(report="x")))
    assert backend._call("read", "x", lambda **kw: kw, a=1) == {"a": 1}

    def client_error(code: str, status: int, message: str | None = None):
        error = {"Code": code} if code else {}
        if message:
            error["Message"] = message
        return be.ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")
    for code, status in (("NoSuchKey", 200), ("", 404), ("NotFound", 400), ("NoSuchVersion", 400)):
        with pytest.raises(ObjectMissing) as missing:
            backend._call("read", "manifests/x", raiser(client_error(code, status)))
        assert missing.value.name == "manifests/x"
    for code, status in (("PreconditionFailed", 400), ("ConditionalRequestConflict", 400), ("", 412),
                         ("409", 200)):
        with pytest.raises(s3backend._Exists):
            backend._call("write", "leases/x", raiser(client_error(code, status)))
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "AllAccessDisabled"):
        with pytest.raises(StorageAccessDenied, match=f": {code} "):
            backend._call("write", "x", raiser(client_error(code, 400)))
    with pytest.raises(StorageAccessDenied, match=r"s3://.*/x: 403 \("):
        backend._call("write", "x", raiser(client_error("", 403)))
    with pytest.raises(StorageUnavailable, match=rf"^S3 failed to lock s3://{backend.bucket}/x: 500$"):
        backend._call("lock", "x", raiser(client_error("", 500)))
    with pytest.raises(StorageUnavailable, match=rf"^S3 failed to lock s3://{backend.bucket}/x: Odd: why$"):
        backend._call("lock", "x", raiser(client_error("Odd", 400, "why")))


# -- Object Lock ------------------------------------------------------------------------------

def test_retention_is_bounded_and_written_as_json():
    assert Retention("COMPLIANCE", 1).slack_days == 1
    assert Retention("GOVERNANCE", 7).slack_days == 1
    assert Retention("GOVERNANCE", 8).slack_days == 2
    assert Retention("GOVERNANCE", 30).slack_days == 7
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert Retention("GOVERNANCE", 30).until(now) == now + dt.timedelta(days=37)
    assert abs(Retention("GOVERNANCE", 1).until() - dt.datetime.now(dt.timezone.utc)
               - dt.timedelta(days=2)) < dt.timedelta(minutes=5)
    assert Retention("COMPLIANCE", 36500).days == 36500
    for mode, days in (("compliance", 5), ("LEGAL", 5), ("GOVERNANCE", 0), ("GOVERNANCE", 36501)):
        with pytest.raises(ValueError):
            Retention(mode, days)
    with pytest.raises(ValueError, match="^unknown Object Lock mode 'x': use compliance or governance$"):
        Retention("x", 3)
    with pytest.raises(ValueError, match="^the retention must be between 1 and 36500 days$"):
        Retention("GOVERNANCE", -1)
    assert Retention("GOVERNANCE", 9).encode() == b'{"days": 9, "mode": "GOVERNANCE"}\n'
    assert Retention.decode(b'{"mode": "COMPLIANCE", "days": 12}') == Retention("COMPLIANCE", 12)


def test_an_immutable_repository_locks_what_generations_are_made_of(store_):
    plain = S3Backend(store_.bucket(), "repo/", client=store_.client())
    with pytest.raises(StorageAccessDenied, match=f"^bucket '{plain.bucket}' was not created with "
                       "Object Lock enabled; see docs/s3.md$"):
        plain.enable_retention(Retention("GOVERNANCE", 4))
    assert plain.retention() is None and not plain.exists("object-lock")
    plain.retain("chunks/aa/aa1", dt.datetime.now(dt.timezone.utc))     # nothing to extend
    backend = _locked(store_)
    assert backend.retention() == Retention("GOVERNANCE", 4)
    assert backend.get("object-lock") == Retention("GOVERNANCE", 4).encode()
    # the retention is read once per backend, from the object
    again = S3Backend(backend.bucket, "repo/", client=store_.client())
    assert again.retention() == Retention("GOVERNANCE", 4)
    store_.relay.reset()
    assert again.retention() == Retention("GOVERNANCE", 4)
    assert store_.relay.requests == []
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5)   # 4 days + 1 of slack
    for name in ("config", "keys/repokey", "chunks/aa/aa1", "indexes/aa/aa1", "manifests/m"):
        backend.put(name, name.encode())
        info = backend.object_info(name)
        assert info.get("ObjectLockMode") == "GOVERNANCE", name
        assert abs(info["ObjectLockRetainUntilDate"] - soon) < dt.timedelta(minutes=5), name
        assert backend.retained_until(name) == info["ObjectLockRetainUntilDate"]
    info = backend.object_info("object-lock")
    assert info.get("ObjectLockMode") == "GOVERNANCE"
    for name in ("leases/l1", "locks/vm", "verified/aa", "trash/b/chunks/aa/aa1"):
        backend.put(name, b"free")
        assert backend.retained_until(name) is None, name
        backend.delete(name)
        assert not backend.exists(name)
    # a locked object stays, and the refusal says why
    with pytest.raises(ObjectLocked) as locked:
        backend.delete("manifests/m")
    assert locked.value.name == "manifests/m"
    assert backend.get("manifests/m") == b"manifests/m"
    with pytest.raises(ObjectMissing):
        backend.delete("manifests/nothing")
    # never a second version of an object: the same chunk again is one version
    backend.put("chunks/aa/aa1", b"chunks/aa/aa1")
    backend.put("chunks/aa/aa1", b"chunks/aa/aa1", sync=False)
    backend.sync()
    versions = store_.admin.list_object_versions(Bucket=backend.bucket, Prefix="repo/chunks/aa/aa1")
    assert len(versions["Versions"]) == 1
    # ... and a lease still renews (replace, no retention)
    assert backend.put_new("leases/l2", b"a") and not backend.put_new("leases/l2", b"b")
    backend.replace("leases/l2", b"c")
    assert backend.get("leases/l2") == b"c"
    # the retention of an object is pushed later, never shortened
    later = soon + dt.timedelta(days=10)
    backend.retain("chunks/aa/aa1", later)
    pushed = backend.retained_until("chunks/aa/aa1")
    assert pushed is not None and abs(pushed - later) < dt.timedelta(seconds=2)


def test_a_delete_in_a_versioned_bucket_removes_every_version_and_marker(store_):
    backend = _locked(store_)
    backend.put("leases/l1", b"one")
    backend.replace("leases/l1", b"two")
    store_.admin.delete_object(Bucket=backend.bucket, Key="repo/leases/l1")     # a delete marker
    store_.admin.put_object(Bucket=backend.bucket, Key="repo/leases/l1", Body=b"three")
    backend.delete("leases/l1")
    left = store_.admin.list_object_versions(Bucket=backend.bucket, Prefix="repo/leases/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")
    # only a marker left (the object deleted by another client): the marker goes too
    backend.put("leases/l2", b"one")
    store_.admin.delete_object(Bucket=backend.bucket, Key="repo/leases/l2")
    assert backend._versions("leases/l2") != []
    backend.delete("leases/l2")
    left = store_.admin.list_object_versions(Bucket=backend.bucket, Prefix="repo/leases/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")
    with pytest.raises(ObjectMissing) as missing:
        backend.delete("leases/l2")
    assert missing.value.name == "leases/l2"
    backend.put("leases/l3", b"x")
    store_.relay.fail(500, "InternalError", 3)
    with pytest.raises(StorageUnavailable) as failed:
        backend.delete("leases/l3")
    assert str(failed.value) == f"S3 failed to list s3://{backend.bucket}/repo/leases/l3: InternalError: injected"


def test_a_batch_delete_in_a_versioned_bucket_takes_every_page_of_versions(store_):
    """Prune empties a trash batch of more than a listing page: every version and delete
    marker of every name goes, over as many pages of the version listing as there are."""
    backend = _locked(store_)
    names = [f"trash/b1/chunks/00/{i:06x}" for i in range(1001)]
    store_.fill(backend.bucket, {"repo/" + n: b"t" for n in names})
    store_.admin.put_object(Bucket=backend.bucket, Key="repo/" + names[0], Body=b"second version")
    store_.admin.delete_object(Bucket=backend.bucket, Key="repo/" + names[1])     # a marker
    store_.fill(backend.bucket, {"repo/trash/b2/chunks/00/000001": b"another batch"})
    store_.relay.reset()
    assert backend.delete_many(names) == {}
    assert len([p for m, p in store_.relay.requests if m == "GET" and "versions" in p]) == 2   # two pages
    left = store_.admin.list_object_versions(Bucket=backend.bucket, Prefix="repo/trash/")
    assert [v["Key"] for v in left.get("Versions", [])] == ["repo/trash/b2/chunks/00/000001"]
    assert not left.get("DeleteMarkers")
    # a version listing that fails is named by its folder
    store_.relay.fail(500, "InternalError", 3)
    with pytest.raises(StorageUnavailable) as failed:
        backend.delete_many(["trash/b2/chunks/00/000001"])
    assert str(failed.value) == (f"S3 failed to list s3://{backend.bucket}/repo/trash/b2/chunks/00/000001: "
                                 "InternalError: injected")


def test_failed_copies_and_retention_changes_are_named(store_):
    backend = _locked(store_)
    backend.put("chunks/aa/aa1", b"x")
    store_.relay.fail(500, "InternalError", 3)
    with pytest.raises(StorageUnavailable) as failed:
        backend.rename("chunks/aa/aa1", "trash/b/chunks/aa/aa1")
    assert str(failed.value) == (f"S3 failed to copy s3://{backend.bucket}/repo/chunks/aa/aa1: "
                                 "InternalError: injected")
    store_.relay.fail(500, "InternalError", 3)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    with pytest.raises(StorageUnavailable) as failed:
        backend.retain("chunks/aa/aa1", later)
    assert str(failed.value) == (f"S3 failed to lock s3://{backend.bucket}/repo/chunks/aa/aa1: "
                                 "InternalError: injected")
    assert backend.get("chunks/aa/aa1") == b"x"


def test_refused_lease_renewals_and_lock_probes_are_named(store_):
    backend = S3Backend(store_.bucket(), "repo", client=store_.client(attempts=1))
    backend.put("leases/l1", b"one")
    store_.relay.fail(500, "InternalError")
    with pytest.raises(StorageUnavailable) as failed:
        backend.replace("leases/l1", b"two")
    assert str(failed.value) == f"S3 failed to write s3://{backend.bucket}/repo/leases/l1: InternalError: injected"
    assert backend.get("leases/l1") == b"one"
    # asking whether the bucket has Object Lock: a refusal is a refusal, not "no lock"
    store_.relay.fail(403, "AccessDenied")
    with pytest.raises(StorageAccessDenied) as denied:
        backend.enable_retention(Retention("GOVERNANCE", 3))
    assert str(denied.value) == (f"S3 refused to read s3://{backend.bucket}/repo: AccessDenied "
                                 "(check the credentials and the bucket's policy)")
    assert not backend.exists("object-lock")


def test_locked_objects_are_reported_by_rename_and_delete_many(store_):
    backend = _locked(store_)
    backend.put("chunks/aa/aa1", b"kept")
    backend.put("leases/x1", b"free")
    backend.put("trash/b1/chunks/aa/aa2", b"free too")
    # prune moves a chunk to the trash: the locked original stays, the copy is removed again
    with pytest.raises(ObjectLocked):
        backend.rename("chunks/aa/aa1", "trash/b1/chunks/aa/aa1")
    assert backend.get("chunks/aa/aa1") == b"kept"
    assert not backend.exists("trash/b1/chunks/aa/aa1")
    # prune puts a chunk back from the trash: the copy asks for the lock of any chunk written
    # (moto refuses a copy under Object Lock without a checksum header, which botocore does
    # not send for a copy: docs/s3.md; the original then stays where it was)
    store_.relay.reset()
    with pytest.raises(StorageUnavailable, match="MissingUploadObjectWithObjectLockHeaders"):
        backend.rename("trash/b1/chunks/aa/aa2", "chunks/aa/aa2")
    copy = store_.relay.headers[-1]
    assert copy["x-amz-copy-source"].endswith("/repo/trash/b1/chunks/aa/aa2")
    assert copy["x-amz-object-lock-mode"] == "GOVERNANCE"
    until = dt.datetime.fromisoformat(copy["x-amz-object-lock-retain-until-date"].replace("Z", "+00:00"))
    assert abs(until - dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=5)) < dt.timedelta(minutes=5)
    assert backend.get("trash/b1/chunks/aa/aa2") == b"free too"
    backend.rename("trash/b1/chunks/aa/aa2", "trash/b3/chunks/aa/aa2")     # not retained: moved
    copies = [h for h in store_.relay.headers if "x-amz-copy-source" in h]
    assert copies[-1]["x-amz-copy-source"].endswith("/repo/trash/b1/chunks/aa/aa2")
    assert "x-amz-object-lock-mode" not in copies[-1]
    assert backend.get("trash/b3/chunks/aa/aa2") == b"free too"
    backend.delete("trash/b3/chunks/aa/aa2")
    assert not store_.admin.list_object_versions(Bucket=backend.bucket,
                                                 Prefix="repo/trash/").get("Versions")
    # a batch: what a retention keeps is named, the rest (every version) goes
    backend.put("trash/b2/chunks/aa/aa3", b"3")
    backend.replace("trash/b2/chunks/aa/aa3", b"3 again")    # a second version
    failures = backend.delete_many(["trash/b2/chunks/aa/aa3", "trash/b2/chunks/aa/aa9"])
    assert failures == {}
    assert not store_.admin.list_object_versions(Bucket=backend.bucket,
                                                 Prefix="repo/trash/b2/").get("Versions")
    failures = backend.delete_many(["chunks/aa/aa1", "leases/x1"])
    assert list(failures) == ["chunks/aa/aa1"]
    assert all(isinstance(e, ObjectLocked) and e.name == n for n, e in failures.items())
    assert backend.get("chunks/aa/aa1") == b"kept"
    assert not backend.exists("leases/x1")


def test_a_malformed_or_missing_retention_object_means_none(store_):
    for body in (b"{", b'{"mode": "x", "days": 3}', b'{"days": 3}', b'[1]', b'{"mode": "GOVERNANCE", "days": null}'):
        bucket = store_.bucket()
        store_.admin.put_object(Bucket=bucket, Key="r/object-lock", Body=body)
        assert S3Backend(bucket, "r/", client=store_.client()).retention() is None, body
    assert S3Backend(store_.bucket(), "r/", client=store_.client()).retention() is None


def test_a_failed_batch_delete_is_named_per_object(store_, monkeypatch):
    backend = S3Backend(store_.bucket(), "", client=store_.client())
    for n in ("trash/b/a1", "trash/b/a2", "trash/b/a3"):
        backend.put(n, b"x")
    real = backend.client.delete_objects

    def partly(**kwargs):
        answer = real(**kwargs)
        answer["Errors"] = [{"Key": "trash/b/a2", "Code": "InternalError"},
                            {"Key": "trash/b/a3", "Code": "NoSuchKey"},
                            {"Key": "not/asked", "Code": "InternalError"}]
        return answer
    monkeypatch.setattr(backend.client, "delete_objects", partly)
    failures = backend.delete_many(["trash/b/a1", "trash/b/a2", "trash/b/a3"])
    assert list(failures) == ["trash/b/a2"]
    assert isinstance(failures["trash/b/a2"], StorageUnavailable)
    assert str(failures["trash/b/a2"]) == f"S3 failed to delete s3://{backend.bucket}/trash/b/a2: InternalError"


# -- locations and clients --------------------------------------------------------------------

def test_locations_are_parsed_strictly():
    assert parse_url("s3://bkt") == ("bkt", "")
    assert parse_url("s3://bkt/") == ("bkt", "")
    assert parse_url("s3://my-bucket.x/a/b/") == ("my-bucket.x", "a/b/")
    assert parse_url("s3://bkt//a/b//") == ("bkt", "a/b/")
    assert parse_url("s3://bkt/X1/X") == ("bkt", "X1/X/")
    assert parse_url("s3://" + "b" * 63 + "/p") == ("b" * 63, "p/")
    for bad in ("s3:/bkt", "bkt/p", "s3://ab/p", "s3://" + "b" * 64, "s3://b_k/p", "s3://b k/p",
                "s3://bkt/a//b", "s3://bkt/a/../b", "s3://bkt/./a", "s3:///p", "S3://bkt"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError, match=r"^not an s3:// location: 'x'$"):
        parse_url("x")
    with pytest.raises(ValueError, match=r"^not a valid bucket name in 's3://a'$"):
        parse_url("s3://a")
    with pytest.raises(ValueError, match=r"^not a valid prefix in 's3://bkt/a/../b'$"):
        parse_url("s3://bkt/a/../b")
    assert folder_of("a/b/c") == "a/b/" and folder_of("c") == "/"


def test_a_backend_from_a_url_and_the_environment(store_, monkeypatch):
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")     # not used: _S3 wins
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", store_.relay.endpoint)
    monkeypatch.setenv("REPOFS_S3_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store_.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store_.secret_key)
    monkeypatch.setattr(s3backend, "_session", None)
    bucket = store_.bucket()
    backend = S3Backend.from_url(f"s3://{bucket}/a/b", uploads=2)
    assert (backend.bucket, backend.prefix, backend.location) == (bucket, "a/b/", f"s3://{bucket}/a/b")
    assert backend.parallelism == 2
    backend.put("manifests/m", b"via the environment")
    assert store_.admin.get_object(Bucket=bucket, Key="a/b/manifests/m")["Body"].read() == b"via the environment"
    config = backend.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert config.max_pool_connections == 64 and config.s3 == {"addressing_style": "path"}
    assert config.connect_timeout == 10 and config.read_timeout == 60
    assert config.response_checksum_validation == "when_required"
    assert backend.client.meta.region_name == "us-east-1"
    store_.relay.reset()
    store_.relay.fail(503, "SlowDown", 2)
    with pytest.raises(StorageUnavailable):
        backend.get("manifests/other")
    assert len(store_.relay.requests) == 2       # REPOFS_S3_ATTEMPTS
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", store_.relay.endpoint)
    c = make_client(attempts=4, connections=8)
    assert c.meta.endpoint_url == store_.relay.endpoint
    assert c.meta.config.s3 == {"addressing_style": "path"}    # a custom endpoint: path style
    assert make_client(attempts=1).meta.config.retries["total_max_attempts"] == 1
    assert c.meta.config.retries["total_max_attempts"] == 4 and c.meta.config.max_pool_connections == 8
    assert make_client("http://127.0.0.1:1").meta.endpoint_url == "http://127.0.0.1:1"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("REPOFS_S3_ATTEMPTS")
    aws = make_client()
    assert aws.meta.config.s3 is None and aws.meta.config.retries["total_max_attempts"] == 6
    assert make_client(attempts=0).meta.config.retries["total_max_attempts"] == 6
    # the region: the configured one, else us-east-1 (a custom store accepts any)
    for k in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(s3backend, "_session", None)
    assert make_client().meta.region_name == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setattr(s3backend, "_session", None)
    assert make_client().meta.region_name == "eu-west-3"
    backend.close()
    assert isinstance(ObjectMissing("x"), RepoError)
    assert LISTED_PREFIX == "chunks/"


# -- a repository on S3 -----------------------------------------------------------------------

KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 8192, "parallelism": 1}


@pytest.fixture
def s3_env(store_: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """This process's environment pointing at the store, as a user's would."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ENDPOINT_URL": store_.relay.endpoint, "AWS_ACCESS_KEY_ID": store_.access_key,
                 "AWS_SECRET_ACCESS_KEY": store_.secret_key, "AWS_DEFAULT_REGION": REGION,
                 "REPOFS_S3_ATTEMPTS": "2", "AWS_CONFIG_FILE": os.devnull,
                 "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(s3backend, "_session", None)     # credentials are read once per session
    return store_


def test_a_repository_is_created_on_s3_only_where_nothing_is(s3_env):
    from format.fixedindex import FixedIndex
    from format.manifest import DiskEntry, Manifest
    from format.repository import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Repository, chunk_name
    from format.errors import RepositoryExists
    bucket = s3_env.bucket()
    location = f"s3://{bucket}/r1"
    for size in (MIN_CHUNK_SIZE - 4096, MAX_CHUNK_SIZE + 4096, (1 << 20) + 1):
        with pytest.raises(ValueError, match="^chunk size must be a multiple of 4 KiB between "):
            Repository.init(location, b"pw", kdf=KDF, chunk_size=size)
    assert s3_env.admin.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    repo = Repository.init(location, b"pw", kdf=KDF, chunk_size=64 << 10)
    written = s3_env.admin.list_objects_v2(Bucket=bucket, Prefix="r1/")["Contents"]
    assert sorted(o["Key"] for o in written) == ["r1/config", "r1/keys/repokey"]
    assert repo.chunk_size == 64 << 10 and repo.config.cipher == "aes-256-gcm"
    assert repo.location == location
    assert [slot.kdf for slot in repo.key_store().slots] == [KDF]     # the parameters asked for
    with pytest.raises(RepositoryExists, match=f"^{location} already exists and is not empty$"):
        Repository.init(location, b"pw", kdf=KDF, chunk_size=64 << 10)
    # a chunk stored is found by the listing (whole or absent on S3), a missing one is not
    data = os.urandom(64 << 10)
    cid = repo.chunk_id(data)
    assert not repo.has_chunk(cid) and repo.stored_size(cid) is None
    stored = repo.put_chunk(cid, data)
    assert repo.has_chunk(cid) and repo.stored_size(cid) == stored
    index = FixedIndex.empty(64 << 10, 64 << 10)
    index.set(0, cid)
    iid = repo.put_index(index)
    name = repo.put_manifest(Manifest("vm1", "g1", "t", 1, None, [DiskEntry("d0", 64 << 10, 64 << 10, iid)]))
    again = Repository.open(location, b"pw")
    assert again.config.id == repo.config.id and again.chunk_size == 64 << 10
    assert again.get_chunk(cid) == data and again.manifest_names() == [name]
    assert Repository.is_encrypted(location) and Repository.config_cipher(location) == "aes-256-gcm"
    # a chunk cut short on the store (which S3 never leaves: a PUT is whole) is still trusted
    # from the listing only when longer than a header
    s3_env.admin.put_object(Bucket=bucket, Key="r1/" + chunk_name(cid), Body=b"x" * 36)
    fresh = Repository.open(location, b"pw")
    assert not fresh.has_chunk(cid)
    s3_env.admin.put_object(Bucket=bucket, Key="r1/" + chunk_name(cid), Body=b"x" * 37)
    assert Repository.open(location, b"pw").stored_size(cid) == 37
    # unencrypted, in another prefix of the same bucket: no passphrase
    plain = Repository.init(f"s3://{bucket}/r2", None, encrypted=False, chunk_size=MAX_CHUNK_SIZE)
    assert plain.config.cipher == "none" and plain.chunk_size == MAX_CHUNK_SIZE
    assert not Repository.is_encrypted(f"s3://{bucket}/r2")
    assert Repository.open(f"s3://{bucket}/r2", None).config.id == plain.config.id


def test_an_immutable_repository_on_s3(s3_env):
    from format.repository import Repository
    from format.errors import StorageAccessDenied as Denied
    plain = s3_env.bucket()
    with pytest.raises(Denied, match="was not created with Object Lock enabled"):
        Repository.init(f"s3://{plain}/r", b"pw", kdf=KDF, retention=Retention("GOVERNANCE", 2))
    assert s3_env.admin.list_objects_v2(Bucket=plain).get("KeyCount") == 0     # nothing written
    locked = s3_env.bucket(locked=True)
    repo = Repository.init(f"s3://{locked}/r", b"pw", kdf=KDF, chunk_size=64 << 10,
                           retention=Retention("COMPLIANCE", 3))
    assert repo.backend.retention() == Retention("COMPLIANCE", 3)   # type: ignore[attr-defined]
    for key in ("r/config", "r/keys/repokey", "r/object-lock"):
        assert s3_env.admin.head_object(Bucket=locked, Key=key)["ObjectLockMode"] == "COMPLIANCE"
