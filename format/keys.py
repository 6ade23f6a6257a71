"""The repository key and its key store (``keys/repokey``).

The key material is 64 random bytes: 32 for AES-256-GCM (sealing every object) and 32 for
the keyed BLAKE3 hash that names chunks. In an encrypted repository the material is wrapped
with AES-256-GCM under a key derived from a passphrase by Argon2id (memory-hard), once per
*key slot*: several passphrases can open one repository, each slot wrapping the same
material with its own salt (``KeyStore``). Changing a passphrase rewraps the material; data
is never re-encrypted. The repository id is the associated data, so a key store cannot be
moved to another repository. An unencrypted repository (only on request) stores the
id-hash key in clear and seals objects with an integrity tag only.

Every field of a key store is checked before it is used: the Argon2id parameters are bounded
(``MAX_*``) before any derivation, sizes of salt, nonce and wrapped key are exact. A key
store that breaks a rule raises ``KeyStoreInvalid``.

The key derivation can be started ahead, on a thread (``derive_ahead``), when a program
knows early which key store and passphrase it will open: Argon2id runs in C without the
GIL, so it overlaps the program's start-up instead of following it. ``unwrap`` then takes
the finished (or finishing) result when its inputs are the same, and derives anew otherwise.
"""
from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import KeyMissing, KeySlotNotFound, KeyStoreInvalid, LastKeySlot, UnsupportedFormat, WrongPassphrase

KEYSTORE_VERSION = 2          # written; version 1 (one passphrase, no slots) is still read
KEYSTORE_VERSIONS = (1, 2)
CIPHER_AES_GCM = "aes-256-gcm"
CIPHER_NONE = "none"

# Argon2id cost: ~0.1-0.3 s and 64 MiB on a current core; stored per key slot.
DEFAULT_KDF = {"name": "argon2id", "time_cost": 3, "memory_kib": 65536, "parallelism": 4}
# What a reader accepts from a key store before deriving anything: the storage is not
# trusted, and Argon2id with its parameters chosen by an attacker is a memory bomb.
MAX_TIME_COST = 64
MAX_MEMORY_KIB = 2 << 20          # 2 GiB
MAX_PARALLELISM = 64
MAX_SLOTS = 32
MAX_KEYSTORE_SIZE = 1 << 20
SALT_SIZE = 16
NONCE_SIZE = 12
WRAPPED_SIZE = 64 + 16            # enc key + id key, and the AES-GCM tag


@dataclass(frozen=True)
class KeyMaterial:
    cipher: str            # CIPHER_AES_GCM or CIPHER_NONE
    enc_key: bytes | None  # 32 bytes for AES-256-GCM; None when unencrypted
    id_key: bytes          # 32 bytes, the BLAKE3 key for chunk ids

    @classmethod
    def generate(cls, encrypted: bool) -> "KeyMaterial":
        if encrypted:
            return cls(CIPHER_AES_GCM, secrets.token_bytes(32), secrets.token_bytes(32))
        return cls(CIPHER_NONE, None, secrets.token_bytes(32))

    def __repr__(self) -> str:  # never show key bytes
        return f"KeyMaterial(cipher={self.cipher!r})"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


def _kdf_params(kdf: object) -> tuple[int, int, int]:
    """(time cost, memory in KiB, parallelism), each checked against its bounds."""
    if not isinstance(kdf, dict):
        raise KeyStoreInvalid("the key store's key derivation is malformed")
    if kdf.get("name") != "argon2id":
        raise UnsupportedFormat(f"unknown key derivation {str(kdf.get('name'))[:40]!r}")
    time_cost, memory_kib, parallelism = (kdf.get(k) for k in ("time_cost", "memory_kib", "parallelism"))
    if not (type(time_cost) is int and type(memory_kib) is int and type(parallelism) is int):
        raise KeyStoreInvalid("the key store's key derivation parameters are not integers")
    if not (1 <= time_cost <= MAX_TIME_COST and 1 <= parallelism <= MAX_PARALLELISM
            and 8 * parallelism <= memory_kib <= MAX_MEMORY_KIB):
        raise KeyStoreInvalid(f"the key store's Argon2id parameters are out of bounds (time cost "
                              f"1..{MAX_TIME_COST}, memory 8*parallelism..{MAX_MEMORY_KIB} KiB, "
                              f"parallelism 1..{MAX_PARALLELISM})")
    return time_cost, memory_kib, parallelism


def _argon2id(passphrase: bytes, params: tuple[int, int, int], salt: bytes) -> bytes:
    time_cost, memory_kib, parallelism = params
    return hash_secret_raw(passphrase, salt, time_cost=time_cost, memory_cost=memory_kib,
                           parallelism=parallelism, hash_len=32, type=Type.ID)


class _Derivation(threading.Thread):
    """One key derivation running ahead of its use (``derive_ahead``)."""

    def __init__(self, passphrase: bytes, params: tuple[int, int, int], salt: bytes):
        super().__init__(name="kdf-ahead", daemon=True)
        self.passphrase, self.params, self.salt = passphrase, params, salt
        self.kek: bytes | None = None

    def matches(self, passphrase: bytes, params: tuple[int, int, int], salt: bytes) -> bool:
        return (self.params == params and self.salt == salt
                and hmac.compare_digest(self.passphrase, passphrase))

    def run(self) -> None:
        try:
            self.kek = _argon2id(self.passphrase, self.params, self.salt)
        except Exception:  # unwrap derives again and reports the error itself
            self.kek = None


_ahead: _Derivation | None = None
_ahead_lock = threading.Lock()


def derive_ahead(document: bytes, passphrase: bytes) -> None:
    """Start deriving the key that opens the first slot of key store ``document`` with
    ``passphrase``, on a thread; a later ``unwrap`` with the same inputs uses the result.
    Quietly does nothing for a key store that needs no derivation or cannot be read
    (``unwrap`` will say why). The result lives only in this process's memory, like the key
    material it unwraps."""
    global _ahead
    try:
        store = KeyStore.decode(document)
        if store.cipher != CIPHER_AES_GCM:
            return
        slot = store.slots[0]
        params = _kdf_params(slot.kdf)
    except Exception:
        return
    with _ahead_lock:
        if _ahead is not None and _ahead.matches(passphrase, params, slot.salt):
            return
        _ahead = _Derivation(passphrase, params, slot.salt)
        _ahead.start()


def _derive(passphrase: bytes, kdf: dict, salt: bytes) -> bytes:
    global _ahead
    params = _kdf_params(kdf)
    with _ahead_lock:
        ahead = _ahead if _ahead is not None and _ahead.matches(passphrase, params, salt) else None
        if ahead is not None:
            _ahead = None  # used once
    if ahead is not None:
        ahead.join()
        if ahead.kek is not None:
            return ahead.kek
    return _argon2id(passphrase, params, salt)


@dataclass(frozen=True)
class KeySlot:
    """One passphrase's wrapping of the key material."""
    id: str          # 8 hex digits, unique in the key store
    kdf: dict        # {"name": "argon2id", "time_cost", "memory_kib", "parallelism"}
    salt: bytes
    nonce: bytes
    wrapped: bytes
    created: str = ""

    @classmethod
    def make(cls, material: KeyMaterial, repo_id: str, passphrase: bytes | None,
             kdf: dict | None = None, slot_id: str | None = None, created: str = "") -> "KeySlot":
        if material.enc_key is None:    # checked first: no passphrase is asked for, or derived
            raise UnsupportedFormat("an unencrypted repository has no passphrases")
        if not passphrase:
            raise WrongPassphrase("an encrypted repository needs a non-empty passphrase")
        kdf = {k: v for k, v in dict(kdf or DEFAULT_KDF).items() if k != "salt"}
        _kdf_params(kdf)
        salt, nonce = secrets.token_bytes(SALT_SIZE), secrets.token_bytes(NONCE_SIZE)
        wrapped = AESGCM(_derive(passphrase, kdf, salt)).encrypt(
            nonce, material.enc_key + material.id_key, repo_id.encode())
        return cls(slot_id or secrets.token_hex(4), kdf, salt, nonce, wrapped, created)

    def open(self, repo_id: str, passphrase: bytes) -> KeyMaterial | None:
        """The key material, or None when ``passphrase`` is not this slot's."""
        try:
            plain = AESGCM(_derive(passphrase, self.kdf, self.salt)).decrypt(
                self.nonce, self.wrapped, repo_id.encode())
        except InvalidTag:
            return None
        return KeyMaterial(CIPHER_AES_GCM, plain[:32], plain[32:])

    def to_json(self) -> dict:
        return {"id": self.id, "kdf": {**self.kdf, "salt": _b64(self.salt)}, "nonce": _b64(self.nonce),
                "wrapped": _b64(self.wrapped), "created": self.created}

    @classmethod
    def from_json(cls, doc: object, slot_id: str = "0") -> "KeySlot":
        """A slot from its JSON (version 2), or from a version 1 key store's top level."""
        if not isinstance(doc, dict) or not isinstance(doc.get("kdf"), dict):
            raise KeyStoreInvalid("a key slot is malformed")
        try:
            kdf = {k: v for k, v in doc["kdf"].items() if k != "salt"}
            salt, nonce = _unb64(doc["kdf"]["salt"]), _unb64(doc["nonce"])
            wrapped = _unb64(doc["wrapped"])
            slot_id = str(doc.get("id", slot_id))
            created = str(doc.get("created", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyStoreInvalid("a key slot is malformed") from None
        _kdf_params(kdf)
        if len(salt) != SALT_SIZE or len(nonce) != NONCE_SIZE or len(wrapped) != WRAPPED_SIZE:
            raise KeyStoreInvalid("a key slot's salt, nonce or wrapped key has the wrong size")
        if not 1 <= len(slot_id) <= 16 or not slot_id.isalnum():
            raise KeyStoreInvalid("a key slot's id is malformed")
        return cls(slot_id, kdf, salt, nonce, wrapped, created)


@dataclass
class KeyStore:
    """The key store document: its cipher, and the id key (cipher none) or the key slots."""
    cipher: str
    slots: list[KeySlot]
    id_key: bytes | None = None   # cipher none only

    @classmethod
    def new(cls, material: KeyMaterial, repo_id: str, passphrase: bytes | None,
            kdf: dict | None = None, created: str = "") -> "KeyStore":
        if material.cipher == CIPHER_NONE:
            return cls(CIPHER_NONE, [], material.id_key)
        return cls(CIPHER_AES_GCM, [KeySlot.make(material, repo_id, passphrase, kdf, created=created)])

    def encode(self) -> bytes:
        if self.cipher == CIPHER_NONE:
            assert self.id_key is not None
            doc: dict = {"version": KEYSTORE_VERSION, "cipher": CIPHER_NONE, "id_key": _b64(self.id_key)}
        else:
            doc = {"version": KEYSTORE_VERSION, "cipher": self.cipher, "slots": [s.to_json() for s in self.slots]}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, document: bytes) -> "KeyStore":
        if len(document) > MAX_KEYSTORE_SIZE:
            raise KeyStoreInvalid(f"the key store is larger than {MAX_KEYSTORE_SIZE} bytes")
        try:
            doc = json.loads(document)
            version = doc["version"]
            cipher = doc["cipher"]
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):
            raise KeyMissing("the key store is unreadable") from None
        if type(version) is not int or version not in KEYSTORE_VERSIONS:
            raise UnsupportedFormat(f"key store version {str(version)[:20]} is not supported")
        if cipher == CIPHER_NONE:
            try:
                id_key = _unb64(doc["id_key"])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise KeyMissing("the key store is unreadable") from None
            if len(id_key) != 32:
                raise KeyStoreInvalid("the key store's id key has the wrong size")
            return cls(CIPHER_NONE, [], id_key)
        if cipher != CIPHER_AES_GCM:
            raise UnsupportedFormat(f"unknown cipher {str(cipher)[:40]!r} in the key store")
        if version == 1:
            return cls(cipher, [KeySlot.from_json(doc)])
        raw = doc.get("slots")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SLOTS:
            raise KeyStoreInvalid(f"the key store must hold 1 to {MAX_SLOTS} key slots")
        slots = [KeySlot.from_json(r) for r in raw]
        if len({s.id for s in slots}) != len(slots):
            raise KeyStoreInvalid("two key slots share an id")
        return cls(cipher, slots)

    def open(self, repo_id: str, passphrase: bytes | None) -> tuple[KeyMaterial, str | None]:
        """The key material and the id of the slot ``passphrase`` opened (None: unencrypted)."""
        if self.cipher == CIPHER_NONE:
            assert self.id_key is not None
            return KeyMaterial(CIPHER_NONE, None, self.id_key), None
        if passphrase is None:
            raise WrongPassphrase("this repository is encrypted and no passphrase was given")
        for slot in self.slots:
            material = slot.open(repo_id, passphrase)
            if material is not None:
                return material, slot.id
        raise WrongPassphrase("wrong passphrase")

    def add(self, slot: KeySlot) -> None:
        if self.cipher != CIPHER_AES_GCM:
            raise UnsupportedFormat("an unencrypted repository has no passphrases")
        if len(self.slots) >= MAX_SLOTS:
            raise KeyStoreInvalid(f"the key store already holds {MAX_SLOTS} key slots")
        self.slots.append(slot)

    def slot(self, slot_id: str) -> KeySlot:
        for s in self.slots:
            if s.id == slot_id:
                return s
        raise KeySlotNotFound(f"no key slot {slot_id!r}")

    def replace(self, slot: KeySlot) -> None:
        self.slots[self.slots.index(self.slot(slot.id))] = slot

    def remove(self, slot_id: str) -> None:
        victim = self.slot(slot_id)
        if len(self.slots) == 1:
            raise LastKeySlot("refusing to remove the last key slot: the repository could not be opened")
        self.slots.remove(victim)


def wrap(material: KeyMaterial, repo_id: str, passphrase: bytes | None, kdf: dict | None = None) -> bytes:
    """A new key store document (JSON bytes) for ``material``, one slot for ``passphrase``."""
    return KeyStore.new(material, repo_id, passphrase, kdf).encode()


def unwrap(document: bytes, repo_id: str, passphrase: bytes | None) -> KeyMaterial:
    return KeyStore.decode(document).open(repo_id, passphrase)[0]
