"""The repository key and its key store (``keys/repokey``).

The key material is 64 random bytes: 32 for AES-256-GCM (sealing every object) and 32 for
the keyed BLAKE3 hash that names chunks. In an encrypted repository the material is wrapped
with AES-256-GCM under a key derived from the passphrase by Argon2id (memory-hard); the
repository id is the associated data, so a key store cannot be moved to another repository.
An unencrypted repository (only on request) stores the id-hash key in clear and seals
objects with an integrity tag only.

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

from .errors import KeyMissing, UnsupportedFormat, WrongPassphrase

KEYSTORE_VERSION = 1
CIPHER_AES_GCM = "aes-256-gcm"
CIPHER_NONE = "none"

# Argon2id cost: ~0.1-0.3 s and 64 MiB on a current core; stored per key store.
DEFAULT_KDF = {"name": "argon2id", "time_cost": 3, "memory_kib": 65536, "parallelism": 4}


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


def _kdf_params(kdf: dict) -> tuple[int, int, int]:
    if kdf.get("name") != "argon2id":
        raise UnsupportedFormat(f"unknown key derivation {kdf.get('name')!r}")
    return int(kdf["time_cost"]), int(kdf["memory_kib"]), int(kdf["parallelism"])


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
    """Start deriving the key that opens key store ``document`` with ``passphrase``, on a
    thread; a later ``unwrap`` with the same inputs uses the result. Quietly does nothing
    for a key store that needs no derivation or cannot be read (``unwrap`` will say why).
    The result lives only in this process's memory, like the key material it unwraps."""
    global _ahead
    try:
        doc = _load(document)
        if doc["cipher"] != CIPHER_AES_GCM:
            return
        kdf, salt, _nonce, _sealed = _wrapped_fields(doc)
        params = _kdf_params(kdf)
    except Exception:
        return
    with _ahead_lock:
        if _ahead is not None and _ahead.matches(passphrase, params, salt):
            return
        _ahead = _Derivation(passphrase, params, salt)
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


def wrap(material: KeyMaterial, repo_id: str, passphrase: bytes | None, kdf: dict | None = None) -> bytes:
    """The key store document (JSON bytes) for ``material``."""
    if material.cipher == CIPHER_NONE:
        doc = {"version": KEYSTORE_VERSION, "cipher": CIPHER_NONE, "id_key": _b64(material.id_key)}
    else:
        if not passphrase:
            raise WrongPassphrase("an encrypted repository needs a non-empty passphrase")
        kdf = dict(kdf or DEFAULT_KDF)
        salt = secrets.token_bytes(16)
        nonce = secrets.token_bytes(12)
        kek = _derive(passphrase, kdf, salt)
        assert material.enc_key is not None
        sealed = AESGCM(kek).encrypt(nonce, material.enc_key + material.id_key, repo_id.encode())
        doc = {"version": KEYSTORE_VERSION, "cipher": CIPHER_AES_GCM,
               "kdf": {**kdf, "salt": _b64(salt)}, "nonce": _b64(nonce), "wrapped": _b64(sealed)}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _load(document: bytes) -> dict:
    """The key store's JSON document, its version checked."""
    try:
        doc = json.loads(document)
        version = doc["version"]
        doc["cipher"]
    except (ValueError, KeyError, TypeError):
        raise KeyMissing("the key store is unreadable") from None
    if version != KEYSTORE_VERSION:
        raise UnsupportedFormat(f"key store version {version} is not supported")
    return doc


def _wrapped_fields(doc: dict) -> tuple[dict, bytes, bytes, bytes]:
    """(kdf, salt, nonce, wrapped key material) of an encrypted key store."""
    try:
        kdf = doc["kdf"]
        return kdf, _unb64(kdf["salt"]), _unb64(doc["nonce"]), _unb64(doc["wrapped"])
    except (KeyError, TypeError, ValueError):
        raise KeyMissing("the key store is unreadable") from None


def unwrap(document: bytes, repo_id: str, passphrase: bytes | None) -> KeyMaterial:
    doc = _load(document)
    cipher = doc["cipher"]
    if cipher == CIPHER_NONE:
        try:
            return KeyMaterial(CIPHER_NONE, None, _unb64(doc["id_key"]))
        except (KeyError, TypeError, ValueError):
            raise KeyMissing("the key store is unreadable") from None
    if cipher != CIPHER_AES_GCM:
        raise UnsupportedFormat(f"unknown cipher {cipher!r} in the key store")
    kdf, salt, nonce, sealed = _wrapped_fields(doc)
    if passphrase is None:
        raise WrongPassphrase("this repository is encrypted and no passphrase was given")
    kek = _derive(passphrase, kdf, salt)
    try:
        plain = AESGCM(kek).decrypt(nonce, sealed, repo_id.encode())
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase") from None
    if len(plain) != 64:
        raise KeyMissing("the key store holds key material of the wrong size")
    return KeyMaterial(CIPHER_AES_GCM, plain[:32], plain[32:])
