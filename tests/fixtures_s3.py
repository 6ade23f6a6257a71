"""An S3-compatible server on loopback for the tests: moto's server, with credentials checked.

Why moto: of the S3 servers that install here (REFERENCES.md), it is the one that honours
``If-None-Match: *`` (which the lock objects need), implements versioning and Object Lock
(retention dates, refused deletes of locked versions) and IAM signatures (wrong keys are
refused with the real error codes). Its limits, which the tests do not rely on: it keeps
objects in memory, and it lets a COMPLIANCE retention be shortened (AWS refuses that).

The server starts with ``INITIAL_NO_AUTH_ACTION_COUNT=3``: the first three requests create
an IAM user with a key and an allow-all policy; from then on every request must be signed
with that key. Between the tests and the server sits ``Gate``, a TCP relay that a test can
close and reopen: from the client's side exactly a server that stopped and came back, with
the server's objects kept.

Pointing the same tests at another store (MinIO, Ceph, AWS), outside CI::

    REPOFS_TEST_S3_ENDPOINT=https://minio.example:9000 AWS_ACCESS_KEY_ID=… \\
    AWS_SECRET_ACCESS_KEY=… REPOFS_TEST_S3_BUCKET=repofs-tests \\
    [REPOFS_TEST_S3_LOCK_BUCKET=repofs-tests-locked] pytest tests -k "s3 or conformance"

Each test then works below a fresh random prefix of that bucket (the Object Lock tests in
the second bucket, which must have Object Lock enabled; they are skipped without it).
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gate:
    """A TCP relay 127.0.0.1:port -> target that can be closed (connections refused, open
    ones cut) and reopened on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and cut the open ones: the server is gone."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            # inside the try: the gate may close both sockets before this thread runs
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in sel.select(timeout=5):
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                with self._lock:
                    self._conns.discard(s)
                s.close()


@dataclass
class S3Server:
    """Where the tests' S3 store answers and the key that signs for it."""
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str | None = None          # an external store's bucket (else: one per test)
    lock_bucket: str | None = None
    gate: Gate | None = None
    process: subprocess.Popen | None = None
    log: Path | None = None
    made: list[str] = field(default_factory=list)
    cache_dir: str = ""
    _clients: dict = field(default_factory=dict)

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 client signing with the store's key (or the one given); made once."""
        if access_key is None and secret_key is None:
            cached = self._clients.get("admin")
            if cached is None:
                cached = self._clients["admin"] = self._client(self.access_key, self.secret_key)
            return cached
        return self._client(access_key or self.access_key, secret_key or self.secret_key)

    def _client(self, access_key: str, secret_key: str):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"mode": "standard", "total_max_attempts": 2}))

    def env(self) -> dict[str, str]:
        """The environment a repofs process needs to reach this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": REGION,
                "REPOFS_S3_ATTEMPTS": "3", "AWS_CONFIG_FILE": os.devnull,
                "REPOFS_CACHE_DIR": self.cache_dir,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def new_location(self, locked: bool = False) -> str:
        """A fresh, empty ``s3://bucket/prefix`` for one repository."""
        if self.process is None:  # an external store: a fresh prefix in its bucket
            bucket = self.lock_bucket if locked else self.bucket
            if bucket is None:
                pytest.skip("REPOFS_TEST_S3_LOCK_BUCKET is not set: no Object Lock bucket")
            return f"s3://{bucket}/t-{secrets.token_hex(6)}"
        bucket = f"t-{secrets.token_hex(8)}"
        kwargs = {"ObjectLockEnabledForBucket": True} if locked else {}
        self.client().create_bucket(Bucket=bucket, **kwargs)
        self.made.append(bucket)
        return f"s3://{bucket}/repo"


def _start_moto(tmp: Path) -> S3Server:
    port = free_port()
    log = tmp / "moto.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    import boto3
    iam = boto3.client("iam", endpoint_url=base, region_name=REGION,
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="repofs")
    key = iam.create_access_key(UserName="repofs")["AccessKey"]
    iam.put_user_policy(UserName="repofs", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    gate = Gate(("127.0.0.1", port))
    return S3Server(f"http://127.0.0.1:{gate.port}", key["AccessKeyId"], key["SecretAccessKey"],
                    gate=gate, process=proc, log=log)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's S3 store: moto on loopback, or the store named by REPOFS_TEST_S3_*."""
    endpoint = os.environ.get("REPOFS_TEST_S3_ENDPOINT")
    cache = str(tmp_path_factory.mktemp("s3-cache"))
    if endpoint:
        yield S3Server(endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                       os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                       bucket=os.environ["REPOFS_TEST_S3_BUCKET"],
                       lock_bucket=os.environ.get("REPOFS_TEST_S3_LOCK_BUCKET"), cache_dir=cache)
        return
    server = _start_moto(tmp_path_factory.mktemp("s3"))
    server.cache_dir = cache
    try:
        yield server
    finally:
        if server.gate is not None:
            server.gate.close()
        assert server.process is not None
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The S3 store, with this process's environment pointing at it (and the gate open again
    after the test, whatever the test did to it)."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    # The client's session reads the credentials once per process: one made under another
    # test's environment would sign this test's requests with that test's keys.
    from format import s3backend
    monkeypatch.setattr(s3backend, "_session", None)
    yield s3_server
    if s3_server.gate is not None and s3_server.gate._listener is None:
        s3_server.gate.open()
