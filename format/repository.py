"""A repository: its config, its keys and its objects, on one backend.

Layout of the object namespace (see docs/format.md for every byte)::

    config                      JSON, in clear: format version, repository id, chunk size, cipher
    keys/repokey                the key store (format/keys.py)
    chunks/<id[:2]>/<id>        sealed chunks, named by the hex keyed BLAKE3 of their plaintext
    indexes/<id[:2]>/<id>       sealed fixed indexes, named by the keyed BLAKE3 of their plaintext
    manifests/<name>            sealed manifests, one per generation; name = 32 random hex digits
    locks/                      advisory lock files (local backend), lock objects (S3: writerlock.py)
    object-lock                 S3 only, in clear: the Object Lock retention of new objects
    forgotten/ protected/ leases/ pending/ trash/ verified/
                                the life cycle (format/marks.py, leases.py, prune.py, verified.py)

The repository exists once ``config`` exists; ``init`` writes it last. Chunks and indexes are
content-addressed, so concurrent writers at worst write the same bytes twice; manifests
have random names. Backups of one VM serialize on a per-VM lock so generation names stay
unique.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

from . import frames
from .backend import Backend, LocalBackend
from .errors import (CorruptObject, EncryptionMismatch, KeyMissing, ObjectMissing, RepoError,
                     RepositoryBusy, RepositoryExists, RepositoryNotFound, UnsupportedFormat)
from .fixedindex import FixedIndex
from .immutability import extend_retention
from .indexobject import index_id, read_index, seal_index
from .keys import CIPHER_AES_GCM, CIPHER_NONE, KeyMaterial, KeySlot, KeyStore, derive_ahead, wrap
from .leases import Lease
from .location import is_remote, open_backend
from .manifest import Manifest
from .marks import forgotten
from .security import KnownRepository
from .writerlock import WriterLock
from .sealed import HEADER, MAGIC_CHUNK, MAGIC_MANIFEST, TAG_SIZE, Sealer

_T = TypeVar("_T")

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
FRAME_TABLES_KEPT = 4096        # ~1.3 KB each in memory: ~5 MiB; all forgotten when full
MAX_MANIFEST_SIZE = 64 << 20   # plaintext; a VM's configuration is a few KiB
MANIFEST_NAME = re.compile(r"[0-9a-f]{32}")
REPO_ID = re.compile(r"[0-9a-f]{32}")

log = logging.getLogger("repofs.repository")


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
            if not isinstance(doc, dict):
                raise TypeError
            if doc.get("format") != REPO_FORMAT:
                raise RepositoryNotFound("not a repofs repository (config has another format)")
            if doc.get("version") != REPO_VERSION:
                raise UnsupportedFormat(f"repository format version {str(doc.get('version'))[:20]} is not supported")
            chunk_size, repo_id, cipher = doc["chunk_size"], doc["id"], doc["cipher"]
            zstd_level = doc.get("zstd_level", 3)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise CorruptObject(CONFIG, "the repository config is unreadable") from None
        if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise CorruptObject(CONFIG, f"chunk size {str(chunk_size)[:20]} out of range")
        if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
            raise CorruptObject(CONFIG, "the repository id is malformed")
        if cipher not in (CIPHER_AES_GCM, CIPHER_NONE):
            raise UnsupportedFormat(f"unknown cipher {str(cipher)[:40]!r} in the config")
        if type(zstd_level) is not int or not 1 <= zstd_level <= 22:
            raise CorruptObject(CONFIG, "the zstd level is out of range")
        return cls(repo_id, chunk_size, cipher, zstd_level)


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
        self._keys = keys
        self.key_slot: str | None = None   # the key slot the passphrase opened
        self._manifests: dict[str, Manifest] = {}
        self._manifest_lock = threading.Lock()
        self._warned: set[str] = set()
        self.known: KnownRepository | None = None  # this client's record (format/security.py)
        self._writer_locks: dict[str, WriterLock] = {}
        # framed chunks' tables read by ``get_chunk_part``, by chunk id: a later part of the
        # same chunk is then one read of its frames
        self._frame_tables: dict[bytes, frames.Layout] = {}

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
    def open(cls, path: str | os.PathLike, passphrase: bytes | None, *,
             security_folder: str | None = None) -> "Repository":
        """Open the repository at ``path``. The key store's cipher must be the config's
        (EncryptionMismatch otherwise). With ``security_folder``, the repository is checked
        against this client's record of it and the record kept up to date (format/security.py)."""
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
        known = KnownRepository(security_folder, config.id, path) if security_folder else None
        if known is not None:
            known.verify(config.cipher)
        keys, slot = KeyStore.decode(keystore).open(config.id, passphrase)
        if keys.cipher != config.cipher:
            raise EncryptionMismatch(f"the key store of {path} says cipher {keys.cipher!r} but the "
                                     f"config says {config.cipher!r}: refusing to open it")
        repository = cls(backend, config, keys, path)
        repository.known = known
        repository.key_slot = slot
        return repository

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
    def config_cipher(path: str | os.PathLike) -> str | None:
        """The cipher the config at ``path`` declares; None when it cannot be read."""
        try:
            return RepoConfig.decode(open_backend(path).get(CONFIG)).cipher
        except Exception:
            return None

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
        """Whether chunk ``cid`` is stored whole: its file holds the header and exactly the
        payload and tag the header declares. A file cut short (what a power loss can leave of
        a chunk written without fsync) or padded counts as absent, so a backup stores it again.
        Costs one open and a 36-byte read; the payload is not authenticated (``get_chunk``
        and ``check --read-data`` do that)."""
        return self.stored_size(cid) is not None

    def stored_size(self, cid: bytes) -> int | None:
        """The size of chunk ``cid``'s object when its file is whole (see ``has_chunk``)."""
        if getattr(self.backend, "atomic_writes", False):
            # object storage: whole or absent, known from one listing (no request per chunk)
            try:
                listed = self.backend.size(chunk_name(cid))
            except ObjectMissing:
                return None
            return listed if listed > HEADER.size else None
        try:
            head, size = self.backend.head(chunk_name(cid), HEADER.size)
        except ObjectMissing:
            return None
        if len(head) < HEADER.size:
            return None
        magic, _v, _c, cipher, _r, _plain, payload_len, _n = HEADER.unpack(head)
        if magic != MAGIC_CHUNK or cipher not in TAG_SIZE:
            return None
        expected = HEADER.size + payload_len + TAG_SIZE[cipher]
        return size if size == expected else None

    def put_chunk(self, cid: bytes, plaintext: bytes | memoryview, *, sync: bool = True) -> int:
        """Seal and store a chunk; returns the stored size. With ``sync=False`` the caller
        calls ``sync()`` before referring to the chunk from an index."""
        sealed = frames.chunk_object(self.sealer, cid, plaintext)
        self.backend.put(chunk_name(cid), sealed, sync=sync)
        return len(sealed)

    def sync(self) -> None:
        self.backend.sync()

    def get_chunk(self, cid: bytes) -> bytes:
        """The verified plaintext of chunk ``cid``: CorruptObject/ObjectMissing otherwise."""
        name = chunk_name(cid)
        plain = frames.open_chunk(self.sealer, cid, self.get_object(name), name, self.config.chunk_size)
        if self.sealer.object_id(plain) != cid:
            raise CorruptObject(name, "content does not match its id")
        return plain

    def get_chunk_part(self, cid: bytes, offset: int, length: int) -> bytes | None:
        """Plaintext bytes [offset, offset + length) of chunk ``cid``, reading only the frames
        that hold them (each authenticated; the chunk's id is not re-computed: the key vouches
        for the frame's place in it) — or None when that cannot be done: the chunk is not
        framed (version 1), the repository not encrypted, or the chunk moved aside by a prune
        (``get_chunk`` reads it whole and looks there too), or the storage answers each read
        after a round trip (object storage: two reads where the whole chunk is one).
        CorruptObject for damage."""
        if not self.sealer.encrypted or self.config.chunk_size <= frames.FRAME_SIZE or \
                getattr(self.backend, "round_trip_reads", False):
            return None
        name = chunk_name(cid)
        if len(self._frame_tables) >= FRAME_TABLES_KEPT:
            self._frame_tables.clear()
        try:
            return frames.open_part(self.sealer, cid, partial(self.backend.read_range, name), name,
                                    self.config.chunk_size, offset, length, self._frame_tables)
        except ObjectMissing:
            return None

    def get_object(self, name: str) -> bytes:
        """The bytes of chunk or index ``name``, also while a prune has it moved aside in a
        trash batch (docs/format.md section 9.3): the original name, each batch, then the
        original name again (a sweep may have moved it back meanwhile)."""
        return self._moved_aside(name, self.backend.get)

    def open_object(self, name: str) -> tuple[BinaryIO, int]:
        """A stream of chunk or index ``name`` and its size, found as ``get_object`` finds it,
        for an object too large to hold whole (the caller closes it). A backend without
        streams (no ``open_stream``) gives the whole object in memory."""
        opener = getattr(self.backend, "open_stream", None)
        if opener is None:
            data = self.get_object(name)
            return io.BytesIO(data), len(data)
        return self._moved_aside(name, opener)

    def _moved_aside(self, name: str, fetch: Callable[[str], _T]) -> _T:
        for _attempt in range(3):   # concurrent prunes may move it on between our looks
            try:
                return fetch(name)
            except ObjectMissing:
                pass
            for batch in self.backend.list("pending"):
                try:
                    return fetch(f"trash/{batch.rsplit('/', 1)[-1]}/{name}")
                except ObjectMissing:
                    continue
        return fetch(name)

    # -- indexes ---------------------------------------------------------------------------

    def put_index(self, index: FixedIndex) -> str:
        """Store ``index`` (sealed in pieces: ``format/indexobject.py``); returns its hex id."""
        iid, sealed = seal_index(self.sealer, index)
        name = index_name(iid.hex())
        if not self.backend.exists(name):
            self.backend.put(name, sealed)
        return iid.hex()

    def get_index(self, hex_id: str) -> FixedIndex:
        """The authenticated index ``hex_id``, read from a stream of its object page by page
        (``format/indexobject.py``): memory follows the disk's allocated slots, not its size."""
        name = index_name(hex_id)
        iid = index_id(hex_id, name)
        stream, size = self.open_object(name)
        with stream:
            return read_index(self.sealer, iid, stream, size, name)

    # -- manifests -------------------------------------------------------------------------

    def stored_manifest_names(self) -> list[str]:
        """Every name below ``manifests/``: forgotten generations and junk included (prune,
        ``check`` reports the junk)."""
        return sorted(n.split("/", 1)[1] for n in self.backend.list("manifests"))

    def manifest_names(self) -> list[str]:
        """The visible generations' manifests: forgotten ones are left out (section 9.1)."""
        hidden = forgotten(self)
        return [n for n in self.stored_manifest_names() if n not in hidden]

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("repofs: warning: %s", text)

    def get_manifest(self, name: str) -> Manifest:
        cached = self._manifests.get(name)
        if cached is not None:
            return cached
        obj = manifest_name(name)
        plain = self.sealer.open(MAGIC_MANIFEST, name.encode(), self.backend.get(obj), obj,
                                 max_plain=MAX_MANIFEST_SIZE)
        manifest = Manifest.decode(plain, obj)
        with self._manifest_lock:
            self._manifests[name] = manifest
        return manifest

    def manifests(self) -> dict[str, Manifest]:
        """Every readable generation's manifest by manifest name (immutable, so cached).

        A damaged manifest, or a file in ``manifests/`` that is not one, costs its own
        generation only: it is left out with a one-line warning (``check`` names it), so
        the other VMs stay readable. With this client's record at hand, a VM whose newest
        generation is older than the newest this client saw or wrote is reported (one line:
        the newest manifests were deleted, a rollback), and newer ones are remembered."""
        out: dict[str, Manifest] = {}
        # the record as it stood before the listing (see KnownRepository.snapshot)
        seen = self.known.snapshot() if self.known is not None else None
        for n in self.manifest_names():
            if not MANIFEST_NAME.fullmatch(n):
                self._warn_once(n, f"manifests/{n!r} is not a manifest name; ignored (see `repofs check`)")
                continue
            try:
                out[n] = self.get_manifest(n)
            except (CorruptObject, UnsupportedFormat) as e:
                self._warn_once(n, f"{e}; its generation is left out (see `repofs check`)")
            except ObjectMissing:
                pass  # deleted since it was listed
        if seen is not None:
            self._note_latest(out.values(), seen)
        return out

    def _note_latest(self, manifests: Iterable[Manifest], seen: dict[str, tuple[int, str]]) -> None:
        assert self.known is not None
        newest: dict[str, Manifest] = {}
        for m in manifests:
            if m.vm not in newest or (m.time_ns, m.generation) > (newest[m.vm].time_ns, newest[m.vm].generation):
                newest[m.vm] = m
        for vm, m in newest.items():
            known = seen.get(vm)
            if known is not None and known[0] > m.time_ns:
                self._warn_once(f"rollback {vm}", f"the newest generation of {vm} is {m.generation}, but this "
                                f"client saw {known[1]} before: newer generations were removed (a rollback?)")
            else:
                self.known.remember(vm, m.time_ns, m.generation)
        for vm in sorted(set(seen).difference(newest)):
            self._warn_once(f"rollback {vm}", f"{vm} has no generation left, but this client saw "
                            f"{seen[vm][1]} before: its generations were removed (a rollback?)")

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
        if self.known is not None:
            self.known.remember(manifest.vm, manifest.time_ns, manifest.generation)
        return name

    def lease(self, kind: str, vm: str | None = None) -> Lease:
        """A lease of this process (format/leases.py), not yet begun: ``with repo.lease(...)``."""
        return Lease(self, kind, vm)

    # -- key slots (passphrases) ----------------------------------------------------------------

    def key_store(self) -> KeyStore:
        return KeyStore.decode(self.backend.get(KEYSTORE))

    @contextlib.contextmanager
    def _key_store_update(self) -> Iterator[KeyStore]:
        """The key store, to change; written back atomically (a crash leaves the old or the
        new document, never a mix), serialized with other key commands."""
        with self._lock_file("keys", "another key command is running"):
            store = self.key_store()
            yield store
            self.backend.put(KEYSTORE, store.encode())

    def add_key(self, passphrase: bytes, kdf: dict | None = None) -> str:
        """A new key slot for ``passphrase``; returns its id."""
        with self._key_store_update() as store:
            taken = {s.id for s in store.slots}
            slot_id = next(i for i in iter(lambda: secrets.token_hex(4), None) if i not in taken)
            store.add(KeySlot.make(self._keys, self.config.id, passphrase, kdf, slot_id, _now()))
        return slot_id

    def change_key(self, slot_id: str, passphrase: bytes, kdf: dict | None = None) -> None:
        """Rewrap slot ``slot_id`` for a new passphrase (the data is not touched)."""
        with self._key_store_update() as store:
            old = store.slot(slot_id)
            store.replace(KeySlot.make(self._keys, self.config.id, passphrase, kdf or old.kdf, slot_id, _now()))

    def remove_key(self, slot_id: str) -> None:
        with self._key_store_update() as store:
            store.remove(slot_id)

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
        with self._lock_file(f"vm-{tag}", f"another backup of {vm} is running"):
            yield

    @contextlib.contextmanager
    def _lock_file(self, name: str, busy: str) -> Iterator[None]:
        if not isinstance(self.backend, LocalBackend):  # object storage: a lock object with expiry
            with WriterLock(self.backend, f"locks/{name}", name):
                yield
            return
        lock_dir = os.path.join(self.location, "locks")
        os.makedirs(lock_dir, exist_ok=True)
        fd = os.open(os.path.join(lock_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RepositoryBusy(busy) from None
            yield
        finally:
            os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
