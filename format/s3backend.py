"""Repository objects in an S3 bucket (AWS S3 or a compatible store: Ceph RGW, MinIO, …).

The repository format is already a flat namespace of immutable objects, so the mapping is
one object per name: ``s3://bucket/prefix`` stores ``config`` as ``prefix/config``,
``chunks/ab/ab12…`` as ``prefix/chunks/ab/ab12…``. Every object is sealed (encrypted and
authenticated) before it gets here; this module moves bytes, it never sees a key.

What makes it usable over a real network:

- Writes without ``sync`` (the chunks of a backup) are uploaded by a bounded pool of
  threads (``DEFAULT_UPLOADS``, or ``REPOFS_S3_UPLOADS``); ``sync()`` waits for them and
  raises the first failure. At most ``2 × uploads`` objects wait in memory; a writer blocks
  beyond that. A PUT of a chunk sends its body at once, without waiting for
  ``100 Continue`` (a round trip per upload). Once an upload
  failed, further ``put`` calls fail at once, so a backup stops early instead of reading the
  rest of its disk.
- Whether a chunk exists is answered from a listing of ``chunks/`` taken once per backend
  (256 shard listings in parallel, on the first question), plus the chunks this process
  wrote. A chunk another host writes later is unknown here and is uploaded again, which
  is harmless (same name, same bytes). The listing is never kept across processes: a
  process takes it after it started (and after any lease it writes), which is what the
  life-cycle protocol of docs/format.md assumes of every existence check.
- Indexes and manifests never change once written (an index is named by its content, a
  manifest by 32 random hex digits and written once), so they are kept in a local cache
  (``$XDG_CACHE_HOME/repofs/s3/<sha256 of the location>/``, or ``REPOFS_CACHE_DIR``) and
  read from the store only once per host: listing generations then costs one listing
  request instead of one request per generation. The cache is only an accelerator: what
  it returns is authenticated by the repository like anything read from the store, a
  deleted manifest is not listed and so never looked up, and losing the cache costs only
  time. Several hosts share nothing but the bucket.
- Retries with backoff (botocore's "standard" mode: throttling, 5xx, dropped connections);
  errors that no retry cures (wrong credentials, no bucket, access denied) end at once with
  a named error and one line of text. Nothing here logs or raises credentials.
- Object Lock: a repository created with ``--immutable`` writes ``config``, the key store,
  chunks, indexes and manifests with a retention date (``Retention``), deletes specific
  versions (so a locked object really stays and the refusal is reported as
  ``ObjectLocked``), and refuses to replace an existing object (``If-None-Match: *``).

Limits: ``put_new`` (create only if absent, used by leases) relies on the store honouring
``If-None-Match: *`` (AWS since 2024, MinIO, recent Ceph; moto does); the lease reads its
object back to catch a store that ignores it. The listing costs memory in proportion to
the chunks stored (about 150 bytes per chunk).
"""
from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator, TypeVar

from .errors import (ObjectLocked, ObjectMissing, RepoError, RepositoryNotFound,
                     StorageAccessDenied, StorageUnavailable)

SCHEME = "s3://"
RETENTION_OBJECT = "object-lock"
# Objects under retention in an immutable repository: what generations are made of. Leases,
# locks and the life cycle's records are not: they must stay deletable.
RETAINED_PREFIXES = ("config", "keys/", "chunks/", "indexes/", "manifests/", "object-lock")
LISTED_PREFIX = "chunks/"
# Requests in flight: uploads of a backup (and a restore's workers). 32, not 16: a 1 GiB backup
# to moto ran at 104-105 MB/s with 32 and 84-85 with 16 on loopback, 101-103 and 85-97 with
# 50 ms added (bench/bench_s3.py --uploads-sweep). Memory: at most 2 x 32 sealed chunks wait
# (64 MiB with 1 MiB chunks).
DEFAULT_UPLOADS = 32
DEFAULT_ATTEMPTS = 6
EXPECT_CONTINUE_FROM = 2 << 20   # bodies this large wait for "100 Continue" before they are sent
STREAM_ATTEMPTS = 3
MODES = ("COMPLIANCE", "GOVERNANCE")

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "InvalidClientTokenId",
           "403"}
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}

T = TypeVar("T")


@dataclass(frozen=True)
class Retention:
    """How long new objects are locked: ``mode`` COMPLIANCE (nobody can shorten or remove
    it, not even the bucket's owner) or GOVERNANCE (users with
    ``s3:BypassGovernanceRetention`` can), for ``days`` days from their writing."""

    mode: str
    days: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown Object Lock mode {self.mode!r}: use compliance or governance")
        if not 1 <= self.days <= 36500:
            raise ValueError("the retention must be between 1 and 36500 days")

    @property
    def slack_days(self) -> int:
        """Extra days given to every retention date, so that an object written or extended
        recently needs no extension by the next backups (format/immutability.py)."""
        return max(1, self.days // 4)

    def until(self, now: dt.datetime | None = None) -> dt.datetime:
        now = now or dt.datetime.now(dt.timezone.utc)
        return now + dt.timedelta(days=self.days + self.slack_days)

    def encode(self) -> bytes:
        return (json.dumps({"mode": self.mode, "days": self.days}, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> "Retention":
        doc = json.loads(data)
        return cls(str(doc["mode"]), int(doc["days"]))


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); ValueError if malformed."""
    if not url.startswith(SCHEME):
        raise ValueError(f"not an s3:// location: {url!r}")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if not (3 <= len(bucket) <= 63) or not all(c.isalnum() or c in "-." for c in bucket):
        raise ValueError(f"not a valid bucket name in {url!r}")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"not a valid prefix in {url!r}")
    return bucket, (prefix + "/" if prefix else "")


def make_client(endpoint: str | None = None, *, attempts: int | None = None,
                connections: int = 64) -> Any:
    """A botocore S3 client from the usual AWS configuration: ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``,
    ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ~/.aws/config and credentials.
    ``endpoint`` overrides the endpoint; a custom endpoint uses path-style addressing, which
    every S3-compatible store accepts. ``connections``: the pool kept open; it must cover
    every request in flight at once (a mount has up to 16 reads and 32 read-ahead fetches),
    or each one beyond it opens a new connection and pays the handshake's round trips.
    Answers are not checksummed by the client (``response_checksum_validation``): every
    object is authenticated by its AEAD seal when read, and the CRC32 would cost ~1 CPU
    second per GB read."""
    import boto3
    from botocore.config import Config
    attempts = attempts or int(os.environ.get("REPOFS_S3_ATTEMPTS", DEFAULT_ATTEMPTS))
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(retries={"mode": "standard", "total_max_attempts": max(1, attempts)},
                    max_pool_connections=connections, connect_timeout=10, read_timeout=60,
                    response_checksum_validation="when_required",
                    s3={"addressing_style": "path"} if endpoint else None)
    with _session_lock:
        global _session
        if _session is None:
            _session = boto3.session.Session()
        region = _session.region_name or "us-east-1"
        client = _session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    client.meta.events.register("before-send.s3.PutObject", _expect_continue_for_large_bodies)
    return client


def _expect_continue_for_large_bodies(request: Any, **_kwargs: Any) -> None:
    """Send a PUT body at once unless it is large. botocore asks every PutObject to wait for
    the store's ``100 Continue`` before its body, which costs a whole round trip per upload:
    on a 20 ms link a chunk's PUT took 72-80 ms with it and 41-48 ms without (moto behind
    the benchmark's relay, bench/bench_s3.py). What the wait saves — a body sent for nothing
    when the store refuses the request — is at most ``EXPECT_CONTINUE_FROM`` bytes here; AWS's
    SDK for Kotlin draws the line at the same 2 MB by default. ``Expect`` is not signed
    (SigV4 leaves it out), so removing it after signing is safe."""
    headers = request.headers
    if headers.get("Expect") is None:
        return
    length = headers.get("X-Amz-Decoded-Content-Length") or headers.get("Content-Length")
    try:
        small = length is not None and int(length) < EXPECT_CONTINUE_FROM
    except ValueError:
        small = False
    if small:
        del headers["Expect"]


def uploads_from_environment() -> int:
    """``REPOFS_S3_UPLOADS`` (1-256), else ``DEFAULT_UPLOADS``: the requests a backend runs at
    once — uploads, and the workers of a restore. A malformed value is ignored."""
    try:
        return min(256, max(1, int(os.environ.get("REPOFS_S3_UPLOADS", DEFAULT_UPLOADS))))
    except ValueError:
        return DEFAULT_UPLOADS


# One session per process: it loads the service's model once (a new session per client
# costs ~0.1 s); creating clients from it is serialized, as boto3 asks.
_session = None
_session_lock = threading.Lock()


class S3Backend:
    """The repository at ``s3://bucket/prefix``; see the module docstring."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None,
                 endpoint: str | None = None, uploads: int | None = None):
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else make_client(endpoint)
        self.location = f"{SCHEME}{bucket}/{prefix}".rstrip("/")
        uploads = uploads or uploads_from_environment()
        self.parallelism = uploads
        # An S3 PUT stores the whole object or nothing: a chunk that is listed is whole (no
        # power loss leaves a cut file), so its presence in the listing is enough to trust it.
        self.atomic_writes = True
        # Each ranged GET is a round trip: a part of a chunk read as its header and table,
        # then its frames, takes two where the whole chunk takes one (the repository reads
        # chunks whole here).
        self.round_trip_reads = True
        self._pool = ThreadPoolExecutor(uploads, thread_name_prefix="s3-upload")
        self._slots = threading.BoundedSemaphore(uploads * 2)
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        self._failure: BaseException | None = None
        self._listing: dict[str, int] | None = None
        self._listing_lock = threading.Lock()
        self._retention: Retention | None | bool = False   # False: not read yet
        self._retention_lock = threading.Lock()
        self.cache = _ObjectCache.for_location(self.location)
        self.written: set[str] = set()     # names this backend uploaded (retention extension)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "S3Backend":
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, **kwargs)

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- errors ----------------------------------------------------------------------------

    def _call(self, what: str, name: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """``fn(**kwargs)`` with botocore's errors turned into ours."""
        from botocore import exceptions as be
        try:
            return fn(**kwargs)
        except be.ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise RepositoryNotFound(f"no bucket {self.bucket!r} at the S3 endpoint") from None
            if code in _MISSING or status == 404:
                raise ObjectMissing(name) from None
            if code in _PRECONDITION or status == 412:
                raise _Exists(name) from None
            if code in _DENIED or status == 403:
                if what == "delete" and self.retention() is not None:
                    raise ObjectLocked(name) from None
                raise StorageAccessDenied(
                    f"S3 refused to {what} {self._where(name)}: {code or status} "
                    "(check the credentials and the bucket's policy)") from None
            raise StorageUnavailable(f"S3 failed to {what} {self._where(name)}: {code or status}"
                                     f"{': ' + str(err.get('Message')) if err.get('Message') else ''}") from None
        except be.NoCredentialsError:
            raise StorageAccessDenied("no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                      "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from None
        except (be.EndpointConnectionError, be.ConnectionClosedError, be.ReadTimeoutError,
                be.ConnectTimeoutError, be.ResponseStreamingError, be.ProxyConnectionError) as e:
            raise StorageUnavailable(f"cannot reach the S3 endpoint to {what} {self._where(name)} "
                                     f"({type(e).__name__})") from None
        except be.BotoCoreError as e:
            raise StorageUnavailable(f"S3 failed to {what} {self._where(name)} ({type(e).__name__})") from None

    def _where(self, name: str) -> str:
        return f"{self.location}/{name}" if name else self.location

    # -- reads -----------------------------------------------------------------------------

    def get(self, name: str) -> bytes:
        cached = self.cache.get(name) if self.cache else None
        if cached is not None:
            return cached

        def fetch() -> bytes:
            from botocore import exceptions as be
            for attempt in range(1, STREAM_ATTEMPTS + 1):
                answer = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
                try:
                    return answer["Body"].read()
                except (be.ResponseStreamingError, be.IncompleteReadError):
                    # botocore retries requests, not a body cut off while it streams
                    if attempt == STREAM_ATTEMPTS:
                        raise
                    time.sleep(0.2 * attempt)
            raise AssertionError("unreachable")
        data = self._call("read", name, fetch)
        if self.cache:
            self.cache.put(name, data)
        return data

    def object_info(self, name: str) -> dict:
        """The object's metadata (HEAD): size, times, Object Lock retention."""
        return self._call("read", name, self.client.head_object, Bucket=self.bucket, Key=self.key(name))

    def head(self, name: str, n: int) -> tuple[bytes, int]:
        """The first ``n`` bytes of ``name`` and its size (one ranged GET)."""
        return self.read_range(name, 0, n)

    def read_range(self, name: str, offset: int, n: int) -> tuple[bytes, int]:
        """Bytes [offset, offset + n) of ``name`` and its size (one ranged GET)."""
        answer = self._call("read", name, self.client.get_object, Bucket=self.bucket, Key=self.key(name),
                            Range=f"bytes={offset}-{offset + max(0, n - 1)}")
        total = answer.get("ContentRange", "").rpartition("/")[2]
        data = answer["Body"].read(n)        # a server that answers more is not believed
        return data, int(total) if total.isdigit() else offset + len(data)

    def size(self, name: str) -> int:
        listing = self._listed(name)
        if listing is not None:
            size = listing.get(name)
            if size is None:
                raise ObjectMissing(name)
            return size
        return int(self.object_info(name)["ContentLength"])

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except ObjectMissing:
            return False
        return True

    def mtime_ns(self, name: str) -> int:
        return int(self.object_info(name)["LastModified"].timestamp() * 1e9)

    def age(self, name: str) -> float:
        """Seconds since ``name`` was last written, by the storage's own clock (its answer's
        ``Date`` against the object's ``Last-Modified``), so hosts' clocks do not matter."""
        answer = self.object_info(name)
        date = answer["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(date) if date else dt.datetime.now(dt.timezone.utc)
        return (now - answer["LastModified"]).total_seconds()

    def list(self, prefix: str) -> Iterator[str]:
        """Names below the folder ``prefix`` (recursively); ``""``: every name."""
        for name, _size, _mtime in self._list(prefix):
            yield name

    def list_stat(self, prefix: str) -> Iterator[tuple[str, int, int]]:
        """(name, size, mtime_ns) below the folder ``prefix``, from the listing's own
        ``Size`` and ``LastModified``: prune's sweep learns every object's age and size
        without a request per object (``mtime_ns`` would cost a HEAD each)."""
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[tuple[str, int, int]]:
        base = self.key(prefix.strip("/") + "/" if prefix.strip("/") else "")
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": base}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix, self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", ()):
                yield (item["Key"][len(self.prefix):], int(item["Size"]),
                       int(item["LastModified"].timestamp() * 1e9))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def _listed(self, name: str) -> dict[str, int] | None:
        """The listing of chunks (taken on first use) if ``name`` is a chunk, else None."""
        if not name.startswith(LISTED_PREFIX):
            return None
        with self._listing_lock:
            if self._listing is None:
                self._listing = self._list_chunks()
            return self._listing

    def _list_chunks(self) -> dict[str, int]:
        """Every chunk's name and size: one request when there are few, else the 256 shard
        folders listed in parallel (a listing page holds 1000 names)."""
        first = self._call("list", LISTED_PREFIX, self.client.list_objects_v2, Bucket=self.bucket,
                           Prefix=self.key(LISTED_PREFIX))
        if not first.get("IsTruncated"):
            return {item["Key"][len(self.prefix):]: int(item["Size"]) for item in first.get("Contents", ())}
        listing: dict[str, int] = {}
        shards = [f"{LISTED_PREFIX}{i:02x}" for i in range(256)]
        with ThreadPoolExecutor(min(16, self.parallelism), thread_name_prefix="s3-list") as pool:
            for part in pool.map(lambda shard: list(self._list(shard)), shards):
                listing.update((name, size) for name, size, _mtime in part)
        return listing

    # -- writes ----------------------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview, *, sync: bool = True) -> None:
        """Store ``data`` under ``name``. With ``sync=False`` the upload runs in the
        background; ``sync()`` waits for it and raises its failure."""
        if self._failure is not None:
            raise self._failure
        if sync:
            self._upload(name, bytes(data))
            return
        self._slots.acquire()
        try:
            future = self._pool.submit(self._upload, name, bytes(data))
        except BaseException:
            self._slots.release()
            raise
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: Future) -> None:
        self._slots.release()
        with self._pending_lock:
            self._pending.discard(future)
        error = future.exception()
        if error is not None and self._failure is None:
            self._failure = error

    def _upload(self, name: str, data: bytes, *, only_new: bool = False) -> None:
        if self._failure is not None and not only_new:
            raise self._failure
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(name), "Body": data}
        retention = self.retention() if name.startswith(RETAINED_PREFIXES) else None
        if retention is not None:
            kwargs["ObjectLockMode"] = retention.mode
            kwargs["ObjectLockRetainUntilDate"] = retention.until()
        if only_new or retention is not None:
            # a locked repository never replaces an object: a new version of a chunk would be
            # a second locked copy, and a manifest or index must not change once written
            kwargs["IfNoneMatch"] = "*"
        try:
            self._call("write", name, self.client.put_object, **kwargs)
        except _Exists:
            if only_new:
                raise
            # already there under a lock: content-addressed objects have the same bytes
        self._note(name, len(data))

    def _note(self, name: str, size: int) -> None:
        with self._listing_lock:
            self.written.add(name)
            if self._listing is not None and name.startswith(LISTED_PREFIX):
                self._listing[name] = size

    def put_new(self, name: str, data: bytes) -> bool:
        """Create ``name`` only if it does not exist (``If-None-Match: *``); False if it did."""
        try:
            self._upload(name, bytes(data), only_new=True)
        except _Exists:
            return False
        return True

    def replace(self, name: str, data: bytes) -> None:
        """Overwrite ``name`` (leases renew themselves this way); never for retained names."""
        self._call("write", name, self.client.put_object, Bucket=self.bucket, Key=self.key(name),
                   Body=bytes(data))

    def sync(self) -> None:
        """Wait for every background upload; raise the first failure."""
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending:
                break
            for future in pending:
                try:
                    future.result()
                except BaseException:  # noqa: BLE001 (recorded by _settled, raised below)
                    pass
        if self._failure is not None:
            raise self._failure

    def delete(self, name: str, *, known: bool = False) -> None:
        """Remove ``name``. In a versioned (Object Lock) bucket every version is removed, so
        the bytes are really gone — or ``ObjectLocked`` when a retention forbids it.
        ``known``: the caller just saw it exist (no HEAD to tell a missing one)."""
        if self.retention() is None:
            if not known:
                self.object_info(name)  # S3 deletes silently what does not exist; we say so
            self._call("delete", name, self.client.delete_object, Bucket=self.bucket, Key=self.key(name))
            self._forget(name)
            return
        versions = self._versions(name)
        if not versions:
            raise ObjectMissing(name)
        for version in versions:
            self._call("delete", name, self.client.delete_object, Bucket=self.bucket,
                       Key=self.key(name), VersionId=version)
        self._forget(name)

    def delete_many(self, names: builtins.list[str]) -> dict[str, RepoError]:   # (list(): see _versions)
        """Delete ``names`` (all in one folder: prune's trash batch) with one DeleteObjects
        request per 1000 names instead of one request each; returns the failures by name
        (``ObjectLocked`` for what a retention keeps). A name already gone is no failure:
        S3 does not tell. In a versioned bucket the versions come from one listing of the
        folder, and every version is deleted."""
        failures: dict[str, RepoError] = {}
        if not names:
            return failures
        wanted = {self.key(n): n for n in names}
        targets: builtins.list[dict[str, str]]
        if self.retention() is None:
            targets = [{"Key": k} for k in wanted]
        else:
            folder = os.path.commonprefix(list(wanted))
            targets = []
            marker: dict[str, str] = {}
            while True:
                answer = self._call("list", folder[len(self.prefix):], self.client.list_object_versions,
                                    Bucket=self.bucket, Prefix=folder, **marker)
                targets += [{"Key": v["Key"], "VersionId": v["VersionId"]}
                            for kind in ("Versions", "DeleteMarkers") for v in answer.get(kind, ())
                            if v["Key"] in wanted]
                if not answer.get("IsTruncated"):
                    break
                marker = {"KeyMarker": answer["NextKeyMarker"],
                          "VersionIdMarker": answer.get("NextVersionIdMarker", "")}
        for at in range(0, len(targets), 1000):
            part = targets[at:at + 1000]
            answer = self._call("delete", folder_of(part[0]["Key"])[len(self.prefix):],
                                self.client.delete_objects, Bucket=self.bucket,
                                Delete={"Objects": part, "Quiet": True})
            for error in answer.get("Errors", ()):
                name = wanted.get(error.get("Key", ""))
                if name is None:
                    continue
                code = str(error.get("Code", ""))
                if code in _DENIED and self.retention() is not None:
                    failures[name] = ObjectLocked(name)
                elif code in _MISSING:
                    continue
                else:
                    failures[name] = StorageUnavailable(f"S3 failed to delete {self._where(name)}: {code}")
        for name in names:
            if name not in failures:
                self._forget(name)
        return failures

    def _forget(self, name: str) -> None:
        with self._listing_lock:
            self.written.discard(name)
            if self._listing is not None:
                self._listing.pop(name, None)

    def _versions(self, name: str) -> builtins.list[str]:     # (the class's list() shadows the builtin)
        key = self.key(name)
        answer = self._call("list", name, self.client.list_object_versions, Bucket=self.bucket, Prefix=key)
        return [v["VersionId"] for kind in ("Versions", "DeleteMarkers")
                for v in answer.get(kind, ()) if v["Key"] == key]

    def rename(self, name: str, new_name: str) -> None:
        """Copy then delete (S3 has no rename); a locked original stays and raises
        ``ObjectLocked``, after the copy is removed again. A copy into a retained folder
        (prune putting a chunk back) is locked like any object written there; a copy into
        the trash is not, so that it can be deleted."""
        kwargs: dict[str, Any] = {}
        retention = self.retention() if new_name.startswith(RETAINED_PREFIXES) else None
        if retention is not None:
            kwargs = {"ObjectLockMode": retention.mode, "ObjectLockRetainUntilDate": retention.until()}
        self._call("copy", name, self.client.copy_object, Bucket=self.bucket, Key=self.key(new_name),
                   CopySource={"Bucket": self.bucket, "Key": self.key(name)}, **kwargs)
        try:
            self.delete(name, known=True)      # the copy found it
        except ObjectLocked:
            self.delete(new_name)
            raise

    def remove_empty_folders(self, prefix: str) -> None:
        """Nothing to do: S3 has no folders, only names."""

    # -- Object Lock -----------------------------------------------------------------------

    def retention(self) -> Retention | None:
        """The repository's retention (the ``object-lock`` object), read once: the first
        uploads of a backup all ask at the same moment, and one request answers them all."""
        if self._retention is False:
            with self._retention_lock:
                if self._retention is False:
                    self._retention = self._read_retention()
        return self._retention  # type: ignore[return-value]

    def _read_retention(self) -> Retention | None:
        try:
            data = self._call("read", RETENTION_OBJECT, lambda: self.client.get_object(
                Bucket=self.bucket, Key=self.key(RETENTION_OBJECT))["Body"].read())
            return Retention.decode(data)
        except ObjectMissing:
            return None
        except (ValueError, KeyError, TypeError):
            return None

    def enable_retention(self, retention: Retention) -> None:
        """Make this (new, empty) repository immutable: the bucket must have Object Lock."""
        answer = None
        try:
            answer = self._call("read", "", self.client.get_object_lock_configuration, Bucket=self.bucket)
        except (StorageUnavailable, ObjectMissing):
            answer = None
        enabled = answer and answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        if not enabled:
            raise StorageAccessDenied(f"bucket {self.bucket!r} was not created with Object Lock "
                                      "enabled; see docs/s3.md")
        self._retention = retention
        self._upload(RETENTION_OBJECT, retention.encode())

    def retained_until(self, name: str) -> dt.datetime | None:
        """The date the retention of ``name`` ends (None: it has none); one HEAD."""
        return self.object_info(name).get("ObjectLockRetainUntilDate")

    def retain(self, name: str, until: dt.datetime) -> None:
        """Push the retention of ``name`` to ``until`` (never shortens: S3 refuses that)."""
        retention = self.retention()
        if retention is None:
            return
        self._call("lock", name, self.client.put_object_retention, Bucket=self.bucket,
                   Key=self.key(name), Retention={"Mode": retention.mode, "RetainUntilDate": until})

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def folder_of(key: str) -> str:
    """``a/b/c`` -> ``a/b/`` (for error messages)."""
    return key.rpartition("/")[0] + "/"


class _ObjectCache:
    """Local copies of the objects that never change (indexes, manifests), one file each."""

    CACHED = ("indexes/", "manifests/")
    MAX_OBJECT = 64 << 20

    def __init__(self, root: str):
        self.root = root

    @classmethod
    def for_location(cls, location: str) -> "_ObjectCache | None":
        base = os.environ.get("REPOFS_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "repofs")
        if base in ("", "none", "off"):
            return None
        return cls(os.path.join(base, "s3", hashlib.sha256(location.encode()).hexdigest()[:32]))

    def _path(self, name: str) -> str | None:
        if not name.startswith(self.CACHED):
            return None
        folder, _, leaf = name.partition("/")
        if not leaf or not all(c in "0123456789abcdef/" for c in leaf) or ".." in leaf:
            return None   # only names of the format's own shape
        return os.path.join(self.root, folder, leaf.replace("/", "_"))

    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read(self.MAX_OBJECT + 1)
        except OSError:
            return None

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if path is None or len(data) > self.MAX_OBJECT:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            pass   # a cache that cannot be written costs only time


class _Exists(RepoError):
    """Internal: a conditional write found the object already there."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name
