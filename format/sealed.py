"""Sealed objects: the framing shared by chunks, indexes and manifests.

An object on the backend is ``header || payload || tag`` (all integers little-endian)::

    0   4  magic            b"RFCK" chunk, b"RFIX" index, b"RFMF" manifest
    4   1  version          1
    5   1  compression      0 none, 1 zstd (one frame, content size recorded)
    6   1  cipher           0 none, 1 AES-256-GCM
    7   1  reserved         0
    8   8  plain length     bytes after decompression
    16  8  payload length   bytes of payload (compressed, encrypted), tag excluded
    24  12 nonce            random per object; zero when cipher is none
    36  …  payload
    …   16 tag (AES-256-GCM) or 32 (cipher none: BLAKE3(aad || payload))

The associated data (``aad``) is the 36 header bytes followed by the object's name as bytes
(a chunk's 32-byte id, an index's 32-byte id, a manifest's name in ASCII), so an object
cannot be renamed or have its header altered without detection. Chunk ids are a keyed
BLAKE3 hash of the plaintext and are re-checked by the reader of a chunk.

A reader bounds what it allocates before decompressing: the header's plain length must not
exceed what the caller allows (a chunk: the repository's chunk size), and a zstd frame must
record its content size, equal to the header's plain length (python-zstandard sizes its
output from the frame and ignores ``max_output_size`` when the frame records one).

zstd compressor/decompressor objects are not safe to share between threads (a shared one
crashed Python here): each thread gets its own.
"""
from __future__ import annotations

import secrets
import struct
import threading

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CorruptObject, UnsupportedFormat
from .keys import CIPHER_AES_GCM, KeyMaterial

MAGIC_CHUNK = b"RFCK"
MAGIC_INDEX = b"RFIX"
MAGIC_MANIFEST = b"RFMF"
VERSION = 1
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
CIPHER_ID_NONE = 0
CIPHER_ID_AES_GCM = 1
HEADER = struct.Struct("<4sBBBBQQ12s")
assert HEADER.size == 36
TAG_SIZE = {CIPHER_ID_NONE: 32, CIPHER_ID_AES_GCM: 16}
ZERO_NONCE = bytes(12)
ID_SIZE = 32
# The largest plaintext a reader accepts unless its caller says less: 4 GiB (an index of a
# 64 TiB disk at 1 MiB chunks is 2 GiB).
MAX_PLAIN = 1 << 32


class Sealer:
    """Seals and opens objects with one repository's keys. Safe to use from many threads."""

    def __init__(self, keys: KeyMaterial, zstd_level: int = 3):
        self._keys = keys
        self._cipher = CIPHER_ID_AES_GCM if keys.cipher == CIPHER_AES_GCM else CIPHER_ID_NONE
        self._aead = AESGCM(keys.enc_key) if keys.enc_key else None
        self._level = zstd_level
        self._local = threading.local()

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def object_id(self, data: bytes | memoryview) -> bytes:
        """The keyed BLAKE3-256 of ``data``: the name of a chunk or an index."""
        return blake3.blake3(data, key=self._keys.id_key).digest()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self._level, write_content_size=True)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def seal(self, magic: bytes, name: bytes, plaintext: bytes | memoryview) -> bytes:
        compressed = self._compressor().compress(plaintext)
        if len(compressed) < len(plaintext):
            compression, payload = COMPRESSION_ZSTD, compressed
        else:
            compression, payload = COMPRESSION_NONE, bytes(plaintext)
        nonce = secrets.token_bytes(12) if self._aead else ZERO_NONCE
        header = HEADER.pack(magic, VERSION, compression, self._cipher, 0,
                             len(plaintext), len(payload), nonce)
        aad = header + name
        if self._aead is not None:
            return header + self._aead.encrypt(nonce, payload, aad)
        return b"".join((header, payload, blake3.blake3(aad + payload).digest()))

    def open(self, magic: bytes, name: bytes, data: bytes, label: str, max_plain: int = MAX_PLAIN) -> bytes:
        """The plaintext of ``data``; raises CorruptObject naming ``label`` on any mismatch
        (UnsupportedFormat for another format version). At most ``max_plain`` bytes."""
        if len(data) < HEADER.size:
            raise CorruptObject(label, "shorter than its header")
        m, version, compression, cipher, _reserved, plain_len, payload_len, nonce = \
            HEADER.unpack_from(data)
        if m != magic:
            raise CorruptObject(label, f"bad magic {m!r}")
        if version != VERSION:
            raise UnsupportedFormat(f"object {label} has format version {version}")
        if cipher != self._cipher:
            raise CorruptObject(label, f"sealed with cipher {cipher}, repository uses {self._cipher}")
        if plain_len > max_plain:
            raise CorruptObject(label, f"plaintext length {plain_len} exceeds {max_plain}")
        tag_size = TAG_SIZE[cipher]
        if len(data) != HEADER.size + payload_len + tag_size:
            raise CorruptObject(label, f"size {len(data)} does not match its header")
        aad = data[:HEADER.size] + name
        body = memoryview(data)[HEADER.size:]
        payload: bytes | memoryview
        if self._aead is not None:
            try:
                payload = self._aead.decrypt(nonce, body, aad)
            except InvalidTag:
                raise CorruptObject(label, "authentication failed") from None
        else:
            payload = body[:payload_len]
            if blake3.blake3(aad + payload).digest() != bytes(body[payload_len:]):
                raise CorruptObject(label, "integrity tag mismatch")
        if compression == COMPRESSION_ZSTD:
            try:
                declared = zstandard.frame_content_size(payload)
            except zstandard.ZstdError:
                raise CorruptObject(label, "payload is not a zstd frame") from None
            if declared != plain_len:
                raise CorruptObject(label, f"zstd frame declares {declared} bytes, header {plain_len}")
            try:
                plain = self._decompressor().decompress(payload, max_output_size=plain_len)
            except zstandard.ZstdError as e:
                raise CorruptObject(label, f"decompression failed ({e})") from None
        elif compression == COMPRESSION_NONE:
            plain = bytes(payload)
        else:
            raise CorruptObject(label, f"unknown compression {compression}")
        if len(plain) != plain_len:
            raise CorruptObject(label, "plaintext length does not match its header")
        return plain
