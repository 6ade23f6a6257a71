"""The repository key and its key store (``keys/repokey``).

The key material is 64 random bytes: 32 for AES-256-GCM (sealing every object) and 32 for
the keyed BLAKE3 hash that names chunks. In an encrypted repository the material is wrapped
with AES-256-GCM under a key derived from the passphrase by Argon2id (memory-hard); the
repository id is the associated data, so a key store cannot be moved to another repository.
An unencrypted repository (only on request) stores the id-hash key in clear and seals
objects with an integrity tag only.
"""
from __future__ import annotations

import base64
import json
import secrets
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


def _derive(passphrase: bytes, kdf: dict, salt: bytes) -> bytes:
    if kdf.get("name") != "argon2id":
        raise UnsupportedFormat(f"unknown key derivation {kdf.get('name')!r}")
    return hash_secret_raw(passphrase, salt, time_cost=int(kdf["time_cost"]),
                           memory_cost=int(kdf["memory_kib"]), parallelism=int(kdf["parallelism"]),
                           hash_len=32, type=Type.ID)


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


def unwrap(document: bytes, repo_id: str, passphrase: bytes | None) -> KeyMaterial:
    try:
        doc = json.loads(document)
        version = doc["version"]
        cipher = doc["cipher"]
    except (ValueError, KeyError, TypeError):
        raise KeyMissing("the key store is unreadable") from None
    if version != KEYSTORE_VERSION:
        raise UnsupportedFormat(f"key store version {version} is not supported")
    try:
        if cipher == CIPHER_NONE:
            return KeyMaterial(CIPHER_NONE, None, _unb64(doc["id_key"]))
        if cipher != CIPHER_AES_GCM:
            raise UnsupportedFormat(f"unknown cipher {cipher!r} in the key store")
        kdf = doc["kdf"]
        salt, nonce, sealed = _unb64(kdf["salt"]), _unb64(doc["nonce"]), _unb64(doc["wrapped"])
    except (KeyError, TypeError, ValueError):
        raise KeyMissing("the key store is unreadable") from None
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
