"""A repository: its config, its keys and its objects, on one backend.

Layout of the object namespace (see docs/format.md for every byte)::

    config                      JSON, in clear: format version, repository id, chunk size, cipher
    keys/repokey                the key store (format/keys.py)
    chunks/<id[:2]>/<id>        sealed chunks, named by the hex keyed BLAKE3 of their plaintext
    indexes/<id[:2]>/<id>       sealed fixed indexes, named by the keyed BLAKE3 of their plaintext
    manifests/<name>            sealed manifests, one per generation; name = 32 random hex digits
    locks/                      advisory lock files (local backend), lock objects (S3: writerlock.py)
    object-lock                 S3 only, in clear: the Object Lock retention of new objects

The repository exists once ``config`` exists; ``init`` writes it last. Chunks and indexes are
content-addressed, so concurrent writers at worst write the same bytes twice; manifests
have random names. Backups of one VM serialize on a per-VM lock so generation names stay
unique.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from .backend import Backend, LocalBackend
from .location import is_remote, open_backend
from .errors import (CorruptObject, KeyMissing, ObjectMissing, RepoError, RepositoryBusy,
                     RepositoryExists,
                     RepositoryNotFound, UnsupportedFormat)
from .fixedindex import FixedIndex
from .keys import KeyMaterial, derive_ahead, unwrap, wrap
from .immutability import extend_retention
from .manifest import Manifest
from .writerlock import WriterLock
from .sealed import HEADER, MAGIC_CHUNK, MAGIC_INDEX, MAGIC_MANIFEST, TAG_SIZE, Sealer

REPO_FORMAT = "repofs-repository"
REPO_VERSION = 1
# 1 MiB: see docs/format.md ("Chunk size") for the measurement behind it.
DEFAULT_CHUNK_SIZE = 1 << 20
# zstd level 2: on the benchmark data set 1.45x faster than level 3 for 0.25% more bytes
# (docs/performance.md); a repository keeps the level it was made with.
DEFAULT_ZSTD_LEVEL = 2
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 16 << 20
CONFIG = "config"
KEYSTORE = "keys/repokey"
GENERATION_TIME_FORMAT = "%Y-%m-%dT%H%M%SZ"
MIN_OBJECT_SIZE = HEADER.size + min(TAG_SIZE.values())


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunk_size: int
    cipher: str
    zstd_level: int = DEFAULT_ZSTD_LEVEL

    def encode(self) -> bytes:
        doc = {"format": REPO_FORMAT, "version": REPO_VERSION, "id": self.id,
               "chunk_size": self.chunk_size, "cipher": self.cipher, "zstd_level": self.zstd_level}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> "RepoConfig":
        try:
            doc = json.loads(data)
            if doc.get("format") != REPO_FORMAT:
                raise RepositoryNotFound("not a repofs repository (config has another format)")
            if doc.get("version") != REPO_VERSION:
                raise UnsupportedFormat(f"repository format version {doc.get('version')} is not supported")
            chunk_size = int(doc["chunk_size"])
            if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
                raise CorruptObject(CONFIG, f"chunk size {chunk_size} out of range")
            return cls(str(doc["id"]), chunk_size, str(doc["cipher"]), int(doc.get("zstd_level", 3)))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CorruptObject(CONFIG, "the repository config is unreadable") from None


def chunk_name(cid: bytes) -> str:
    h = cid.hex()
    return f"chunks/{h[:2]}/{h}"


def index_name(hex_id: str) -> str:
    return f"indexes/{hex_id[:2]}/{hex_id}"


def manifest_name(name: str) -> str:
    return f"manifests/{name}"


class Repository:
    def __init__(self, backend: Backend, config: RepoConfig, keys: KeyMaterial, location: str):
        self.backend = backend
        self.config = config
        self.location = location
        self.sealer = Sealer(keys, config.zstd_level)
        self._manifests: dict[str, Manifest] = {}
        self._manifest_lock = threading.Lock()
        self._writer_locks: dict[str, WriterLock] = {}

    # -- creation and opening --------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike, passphrase: bytes | None, *, encrypted: bool = True,
             chunk_size: int = DEFAULT_CHUNK_SIZE, kdf: dict | None = None,
             retention: object | None = None) -> "Repository":
        """A new repository at ``path`` (a directory or ``s3://bucket/prefix``); ``retention``
        (an ``s3backend.Retention``) makes an S3 repository immutable (docs/s3.md)."""
        path = os.fspath(path)
        if is_remote(path):
            return cls._init_remote(path, passphrase, encrypted, chunk_size, kdf, retention)
        if retention is not None:
            raise ValueError("Object Lock retention needs an s3:// repository")
        if os.path.exists(os.path.join(path, CONFIG)) or (os.path.isdir(path) and os.listdir(path)):
            raise RepositoryExists(f"{path} already exists and is not empty")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 4096:
            raise ValueError(f"chunk size must be a multiple of 4 KiB between "
                             f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
        os.makedirs(path, exist_ok=True)
        backend = LocalBackend(path)
        keys = KeyMaterial.generate(encrypted)
        config = RepoConfig(secrets.token_hex(16), chunk_size, keys.cipher)
        backend.put(KEYSTORE, wrap(keys, config.id, passphrase, kdf))
        for folder in ("chunks", "indexes", "manifests", "locks"):
            os.makedirs(os.path.join(path, folder), exist_ok=True)
        backend.put(CONFIG, config.encode())
        return cls(backend, config, keys, path)

    @classmethod
    def _init_remote(cls, location: str, passphrase: bytes | None, encrypted: bool,
                     chunk_size: int, kdf: dict | None, retention: object | None) -> "Repository":
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 4096:
            raise ValueError(f"chunk size must be a multiple of 4 KiB between "
                             f"{MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
        backend = open_backend(location)
        if next(iter(backend.list("")), None) is not None:
            raise RepositoryExists(f"{location} already exists and is not empty")
        if retention is not None:
            backend.enable_retention(retention)  # type: ignore[attr-defined]
        keys = KeyMaterial.generate(encrypted)
        config = RepoConfig(secrets.token_hex(16), chunk_size, keys.cipher)
        backend.put(KEYSTORE, wrap(keys, config.id, passphrase, kdf))
        backend.put(CONFIG, config.encode())
        return cls(backend, config, keys, location)

    @classmethod
    def open(cls, path: str | os.PathLike, passphrase: bytes | None) -> "Repository":
        path = os.fspath(path)
        backend = open_backend(path)
        try:
            config = RepoConfig.decode(backend.get(CONFIG))
        except ObjectMissing:
            raise RepositoryNotFound(f"no repository at {path}") from None
        except IsADirectoryError:
            raise RepositoryNotFound(f"no repository at {path}") from None
        try:
            keystore = backend.get(KEYSTORE)
        except ObjectMissing:
            raise KeyMissing(f"the key store of {path} is missing") from None
        keys = unwrap(keystore, config.id, passphrase)
        return cls(backend, config, keys, path)

    @staticmethod
    def derive_key_ahead(path: str | os.PathLike, passphrase: bytes) -> None:
        """Start the passphrase's key derivation for the repository at ``path`` on a thread,
        for an ``open`` that follows (format/keys.py, ``derive_ahead``); silent on any error."""
        try:
            document = open_backend(path).get(KEYSTORE)
        except (ObjectMissing, OSError, ValueError, RepoError):
            return
        derive_ahead(document, passphrase)

    @staticmethod
    def is_encrypted(path: str | os.PathLike) -> bool:
        """Whether the repository at ``path`` needs a passphrase (False if unreadable)."""
        try:
            return RepoConfig.decode(open_backend(path).get(CONFIG)).cipher != "none"
        except Exception:
            return False

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    # -- chunks ----------------------------------------------------------------------------

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return self.sealer.object_id(data)

    def has_chunk(self, cid: bytes) -> bool:
        """Whether chunk ``cid`` is stored. A file too short to be an object (what a power
        loss can leave of a chunk written without fsync) counts as absent."""
        try:
            return self.backend.size(chunk_name(cid)) >= MIN_OBJECT_SIZE
        except ObjectMissing:
            return False

    def put_chunk(self, cid: bytes, plaintext: bytes | memoryview, *, sync: bool = True) -> int:
        """Seal and store a chunk; returns the stored size. With ``sync=False`` the caller
        calls ``sync()`` before referring to the chunk from an index."""
        sealed = self.sealer.seal(MAGIC_CHUNK, cid, plaintext)
        self.backend.put(chunk_name(cid), sealed, sync=sync)
        return len(sealed)

    def sync(self) -> None:
        self.backend.sync()

    def get_chunk(self, cid: bytes) -> bytes:
        """The verified plaintext of chunk ``cid``: CorruptObject/ObjectMissing otherwise."""
        name = chunk_name(cid)
        plain = self.sealer.open(MAGIC_CHUNK, cid, self.backend.get(name), name)
        if self.sealer.object_id(plain) != cid:
            raise CorruptObject(name, "content does not match its id")
        return plain

    # -- indexes ---------------------------------------------------------------------------

    def put_index(self, index: FixedIndex) -> str:
        plain = index.encode()
        iid = self.sealer.object_id(plain)
        name = index_name(iid.hex())
        if not self.backend.exists(name):
            self.backend.put(name, self.sealer.seal(MAGIC_INDEX, iid, plain))
        return iid.hex()

    def get_index(self, hex_id: str) -> FixedIndex:
        name = index_name(hex_id)
        try:
            iid = bytes.fromhex(hex_id)
        except ValueError:
            raise CorruptObject(name, "malformed index id") from None
        plain = self.sealer.open(MAGIC_INDEX, iid, self.backend.get(name), name)
        if self.sealer.object_id(plain) != iid:
            raise CorruptObject(name, "content does not match its id")
        return FixedIndex.decode(plain, name)

    # -- manifests -------------------------------------------------------------------------

    def manifest_names(self) -> list[str]:
        return sorted(n.split("/", 1)[1] for n in self.backend.list("manifests"))

    def get_manifest(self, name: str) -> Manifest:
        cached = self._manifests.get(name)
        if cached is not None:
            return cached
        obj = manifest_name(name)
        plain = self.sealer.open(MAGIC_MANIFEST, name.encode(), self.backend.get(obj), obj)
        manifest = Manifest.decode(plain, obj)
        with self._manifest_lock:
            self._manifests[name] = manifest
        return manifest

    def manifests(self) -> dict[str, Manifest]:
        """Every generation's manifest by manifest name (immutable, so cached)."""
        return {n: self.get_manifest(n) for n in self.manifest_names()}

    def new_generation_name(self, vm: str, when_ns: int) -> str:
        base = time.strftime(GENERATION_TIME_FORMAT, time.gmtime(when_ns // 1_000_000_000))
        taken = {m.generation for m in self.manifests().values() if m.vm == vm}
        name, n = base, 0
        while name in taken:
            n += 1
            name = f"{base}.{n}"
        return name

    def put_manifest(self, manifest: Manifest) -> str:
        """Write ``manifest``; from this moment the generation exists. Returns its name."""
        if getattr(self.backend, "retention", lambda: None)() is not None:
            extend_retention(self.backend, self.generation_objects(manifest))
        writer = self._writer_locks.get(manifest.vm)
        if writer is not None:
            writer.assert_held()
        name = secrets.token_hex(16)
        sealed = self.sealer.seal(MAGIC_MANIFEST, name.encode(), manifest.encode())
        self.backend.put(manifest_name(name), sealed)
        with self._manifest_lock:
            self._manifests[name] = manifest
        return name

    def generation_objects(self, manifest: Manifest) -> Iterator[str]:
        """Every object a generation needs besides its manifest: config, key store, its
        indexes and every chunk they name."""
        yield CONFIG
        yield KEYSTORE
        for disk in manifest.disks:
            yield index_name(disk.index)
            for _offset, cid in self.get_index(disk.index).references():
                yield chunk_name(cid)

    # -- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def vm_lock(self, vm: str) -> Iterator[None]:
        """Exclusive per-VM lock held while a generation of ``vm`` is written: a ``flock``
        file in a local repository, a lock object with expiry elsewhere (format/writerlock.py)."""
        tag = self.sealer.object_id(vm.encode()).hex()[:24]
        if not isinstance(self.backend, LocalBackend):
            with WriterLock(self.backend, f"locks/vm-{tag}", vm) as writer:
                self._writer_locks[vm] = writer
                try:
                    yield
                finally:
                    self._writer_locks.pop(vm, None)
            return
        lock_dir = os.path.join(self.location, "locks")
        os.makedirs(lock_dir, exist_ok=True)
        fd = os.open(os.path.join(lock_dir, f"vm-{tag}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RepositoryBusy(f"another backup of {vm} is running") from None
            yield
        finally:
            os.close(fd)
