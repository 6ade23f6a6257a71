"""Sealed objects: the framing shared by chunks, indexes and manifests.

An object on the backend is ``header || payload || tag`` (all integers little-endian)::

    0   4  magic            b"RFCK" chunk, b"RFIX" index, b"RFMF" manifest
    4   1  version          1; 2 for an index whose copy table has gaps (``format.fixedindex``)
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
from typing import BinaryIO, Iterable, Iterator

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext, Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CorruptObject, UnsupportedFormat
from .keys import CIPHER_AES_GCM, KeyMaterial

MAGIC_CHUNK = b"RFCK"
MAGIC_INDEX = b"RFIX"
MAGIC_MANIFEST = b"RFMF"
VERSION = 1
INDEX_VERSION_GAPS = 2
# the versions a reader follows, for objects with more than version 1 (any other: UnsupportedFormat)
VERSIONS = {MAGIC_INDEX: (VERSION, INDEX_VERSION_GAPS)}
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
# What ``open_pages`` reads, decrypts and hands out at a time.
PAGE = 1 << 20
ZSTD_FRAME_HEADER_MAX = 18     # the largest zstd frame header: enough to read its content size
# The largest zstd window ``open_pages`` accepts. Its frame is decompressed before the tag is
# checked, so a forged frame can make it allocate this much before the object is refused
# (zstd's own default limit; the sealer's levels use 8 MiB at most).
MAX_PAGED_WINDOW = 1 << 27


# The compression decision. Whole chunks of media, archives or encrypted guest data do not
# compress, and zstd spends about a quarter of its time on them for nothing (docs/performance.md,
# "Compression decision"). A sample of SAMPLES pieces of SAMPLE_SIZE bytes spread over the
# plaintext is compressed at zstd's fastest level first: when it does not shrink below
# SAMPLE_RATIO of itself the object is stored uncompressed (compression 0 in its header, which
# every reader already follows). Small objects are always tried whole.
SAMPLE_SIZE = 4096
SAMPLES = 8
SAMPLE_RATIO = 0.97
SAMPLE_MIN = 64 * 1024
_sampler = threading.local()


def worth_compressing(plaintext: bytes | memoryview) -> bool:
    """Whether a sample of ``plaintext`` compresses well enough to compress all of it."""
    n = len(plaintext)
    if n < SAMPLE_MIN:
        return True
    step = n // SAMPLES
    view = memoryview(plaintext)
    sample = b"".join(view[i * step:i * step + SAMPLE_SIZE] for i in range(SAMPLES))
    c = getattr(_sampler, "c", None)
    if c is None:
        c = _sampler.c = zstandard.ZstdCompressor(level=1, write_content_size=False)
    return len(c.compress(sample)) < len(sample) * SAMPLE_RATIO


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

    def seal(self, magic: bytes, name: bytes, plaintext: bytes | memoryview,
             compress: bool | None = None) -> bytearray:
        """``header || payload || tag`` in one buffer: the payload is compressed only when
        that pays (``worth_compressing``, or ``compress`` when the caller has asked it), and
        encrypted straight into the buffer, so a 1 MiB chunk is not copied once more to join
        the header to its ciphertext."""
        payload: bytes | memoryview = plaintext
        compression = COMPRESSION_NONE
        if compress is None:
            compress = worth_compressing(plaintext)
        if compress:
            compressed = self._compressor().compress(plaintext)
            if len(compressed) < len(plaintext):
                compression, payload = COMPRESSION_ZSTD, compressed
        return self._seal_payload(magic, name, compression, len(plaintext), payload)

    def seal_parts(self, magic: bytes, plain_len: int,
                   parts: Iterable[bytes | bytearray | memoryview], *,
                   version: int = VERSION) -> tuple[bytes, bytearray]:
        """(object id, sealed object) of an object named by its id (an index) whose
        plaintext of ``plain_len`` bytes comes in ``parts``, for plaintexts too large to join
        (the index of a 2 TiB disk is 64 MiB, mostly holes). The parts are hashed and
        compressed as they come, so memory is the compressed payload and the sealed object,
        never the plaintext whole. Always compressed: one zstd frame recording its content
        size (64 MiB of random ids grow by 1.5 KB, 0.002%; 64 MiB of holes shrink to 2 KB).
        ``open`` and ``open_pages`` read it like any other object."""
        hasher = blake3.blake3(key=self._keys.id_key)
        # a compressor of its own: a compressobj holds its context until the flush, and the
        # thread's compressor is the one chunks are sealed with
        cobj = zstandard.ZstdCompressor(level=self._level, write_content_size=True).compressobj(size=plain_len)
        out = []
        total = 0
        for part in parts:
            hasher.update(part)
            total += len(part)
            out.append(cobj.compress(part))
        out.append(cobj.flush())
        if total != plain_len:
            raise ValueError(f"the parts hold {total} bytes, not {plain_len}")
        payload = b"".join(out)
        del out
        oid = hasher.digest()
        return oid, self._seal_payload(magic, oid, COMPRESSION_ZSTD, plain_len, payload, version)

    def _seal_payload(self, magic: bytes, name: bytes, compression: int, plain_len: int,
                      payload: bytes | memoryview, version: int = VERSION) -> bytearray:
        if version not in VERSIONS.get(magic, (VERSION,)):
            raise ValueError(f"no version {version} of {magic!r} objects")
        nonce = self.new_nonce()
        out = bytearray(HEADER.size + len(payload) + TAG_SIZE[self._cipher])
        HEADER.pack_into(out, 0, magic, version, compression, self._cipher, 0,
                         plain_len, len(payload), nonce)
        self.seal_into(nonce, payload, bytes(out[:HEADER.size]) + name, memoryview(out)[HEADER.size:])
        return out

    @property
    def cipher(self) -> int:
        """The cipher id objects are sealed with (``CIPHER_ID_*``)."""
        return self._cipher

    def new_nonce(self) -> bytes:
        return secrets.token_bytes(12) if self._aead else ZERO_NONCE

    def seal_into(self, nonce: bytes, data: bytes | memoryview, aad: bytes,
                  dest: memoryview) -> None:
        """``data ‖ tag`` into ``dest`` (exactly that long): encrypted and authenticated with
        ``aad`` (cipher 1), or as is with ``BLAKE3(aad ‖ data)`` (cipher 0)."""
        if self._aead is not None:
            self._aead.encrypt_into(nonce, data, aad, dest)
        else:
            dest[:len(data)] = data
            dest[len(data):] = blake3.blake3(aad).update(data).digest()

    def open_sealed(self, nonce: bytes, body: bytes | memoryview, aad: bytes, label: str) -> bytes | memoryview:
        """The data of ``body`` (``data ‖ tag``, as ``seal_into`` made it), CorruptObject
        naming ``label`` unless its tag holds."""
        if self._aead is not None:
            try:
                return self._aead.decrypt(nonce, body, aad)
            except InvalidTag:
                raise CorruptObject(label, "authentication failed") from None
        cut = len(body) - TAG_SIZE[CIPHER_ID_NONE]
        data = memoryview(body)[:max(0, cut)]
        # (the data hashed where it lies: ``aad + data`` would copy it first)
        if cut < 0 or blake3.blake3(aad).update(data).digest() != bytes(memoryview(body)[cut:]):
            raise CorruptObject(label, "integrity tag mismatch")
        return data

    def open_sealed_into(self, nonce: bytes, body: bytes | memoryview, aad: bytes, label: str,
                         dest: memoryview) -> None:
        """``open_sealed`` into ``dest``, exactly as long as the data (no buffer of its own)."""
        if self._aead is not None:
            try:
                self._aead.decrypt_into(nonce, body, aad, dest)
            except InvalidTag:
                raise CorruptObject(label, "authentication failed") from None
        else:
            dest[:] = self.open_sealed(nonce, body, aad, label)

    def decompress(self, data: bytes | memoryview, plain_len: int, label: str) -> bytes:
        """One zstd frame that records its content size, equal to ``plain_len`` (checked
        first, so it bounds the allocation), decompressed."""
        _check_frame_size(data, plain_len, label)
        try:
            plain = self._decompressor().decompress(data, max_output_size=plain_len)
        except zstandard.ZstdError as e:
            raise CorruptObject(label, f"decompression failed ({e})") from None
        if len(plain) != plain_len:
            raise CorruptObject(label, "plaintext length does not match its header")
        return plain

    def compress(self, data: bytes | memoryview) -> bytes:
        """One zstd frame recording its content size, at the sealer's level."""
        return self._compressor().compress(data)

    def check_header(self, magic: bytes, head: bytes | memoryview, size: int, label: str,
                     max_plain: int, versions: tuple[int, ...] | None = None
                     ) -> tuple[int, int, int, int, bytes]:
        """The header's (compression, cipher, plain length, payload length, nonce) once every
        rule ``open`` and ``open_pages`` share holds for an object of ``size`` bytes, its
        version one of ``versions`` (by default those ``VERSIONS`` gives its magic)."""
        if len(head) < HEADER.size:
            raise CorruptObject(label, "shorter than its header")
        m, version, compression, cipher, _reserved, plain_len, payload_len, nonce = \
            HEADER.unpack_from(head)
        if m != magic:
            raise CorruptObject(label, f"bad magic {m!r}")
        allowed = versions if versions is not None else VERSIONS.get(magic, (VERSION,))
        if version not in allowed:
            raise UnsupportedFormat(f"object {label} has format version {version}")
        if compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD):
            raise CorruptObject(label, f"unknown compression {compression}")
        if cipher != self._cipher:
            raise CorruptObject(label, f"sealed with cipher {cipher}, repository uses {self._cipher}")
        if _reserved != 0:
            raise CorruptObject(label, f"reserved header byte is {_reserved}, not 0")
        if plain_len > max_plain:
            raise CorruptObject(label, f"plaintext length {plain_len} exceeds {max_plain}")
        if size != HEADER.size + payload_len + TAG_SIZE[cipher]:
            raise CorruptObject(label, f"size {size} does not match its header")
        return compression, cipher, plain_len, payload_len, nonce

    def open(self, magic: bytes, name: bytes, data: bytes, label: str, max_plain: int = MAX_PLAIN) -> bytes:
        """The plaintext of ``data``; raises CorruptObject naming ``label`` on any mismatch
        (UnsupportedFormat for another format version). At most ``max_plain`` bytes."""
        compression, _cipher, plain_len, payload_len, nonce = \
            self.check_header(magic, data[:HEADER.size], len(data), label, max_plain)
        payload = self.open_sealed(nonce, memoryview(data)[HEADER.size:], data[:HEADER.size] + name, label)
        if compression == COMPRESSION_ZSTD:
            plain = self.decompress(payload, plain_len, label)
        elif compression == COMPRESSION_NONE:
            plain = bytes(payload)
        else:
            raise CorruptObject(label, f"unknown compression {compression}")
        if len(plain) != plain_len:
            raise CorruptObject(label, "plaintext length does not match its header")
        return plain

    def open_pages(self, magic: bytes, name: bytes, stream: BinaryIO, size: int, label: str, *,
                   object_id: bytes | None = None, max_plain: int = MAX_PLAIN,
                   page: int = PAGE) -> Iterator[bytes]:
        """The plaintext of the object of ``size`` bytes read from ``stream``, in pages of at
        most ``page`` bytes, for objects too large to hold whole (the index of a 10 TiB disk at
        1 MiB chunks is 320 MB): memory is a few pages whatever the object's size. The checks
        are ``open``'s, and with ``object_id`` the keyed hash of the plaintext must be it —
        but the tag and the hash can only be checked after the last page: **what the pages
        hold is unauthenticated until the iteration ends without CorruptObject.** A caller may
        only use them in ways that stay safe if the object turns out corrupt (prune adds the
        ids to its marks: extra marks only keep objects, and a corrupt index stops the prune
        before it condemns anything)."""
        head = stream.read(HEADER.size)
        compression, _cipher, plain_len, payload_len, nonce = \
            self.check_header(magic, head, size, label, max_plain)
        payload = _PayloadReader(stream, payload_len, head + name, nonce, self._keys.enc_key, label)
        hasher = blake3.blake3(key=self._keys.id_key) if object_id is not None else None
        total = 0
        pages: Iterator[bytes]
        if compression == COMPRESSION_ZSTD:
            first = payload.read(ZSTD_FRAME_HEADER_MAX)
            _check_frame_size(first, plain_len, label)
            payload.unread(first)
            # the frame is decompressed before its tag is checked: its window is bounded here
            dctx = zstandard.ZstdDecompressor(max_window_size=MAX_PAGED_WINDOW)
            # read_to_iter takes any object with read(); its stub asks for IO[bytes]
            pages = dctx.read_to_iter(payload, read_size=page, write_size=page)  # type: ignore[arg-type]
        elif compression == COMPRESSION_NONE:
            pages = iter(lambda: payload.read(page), b"")
        else:
            raise CorruptObject(label, f"unknown compression {compression}")
        try:
            for out in pages:
                total += len(out)
                if total > plain_len:
                    raise CorruptObject(label, "plaintext length does not match its header")
                if hasher is not None:
                    hasher.update(out)
                yield out
        except zstandard.ZstdError as e:
            raise CorruptObject(label, f"decompression failed ({e})") from None
        payload.finish()
        if total != plain_len:
            raise CorruptObject(label, "plaintext length does not match its header")
        if hasher is not None and hasher.digest() != object_id:
            raise CorruptObject(label, "content does not match its id")


class _PayloadReader:
    """The payload of a sealed object read from a stream and decrypted as it goes (AES-256-GCM
    in streaming mode, or the BLAKE3 tag of an unencrypted object hashed as it goes);
    ``finish`` checks the tag. A file-like ``read`` for zstd's streaming decompressor."""

    def __init__(self, stream: BinaryIO, length: int, aad: bytes, nonce: bytes,
                 enc_key: bytes | None, label: str) -> None:
        self._stream, self._left, self._label = stream, length, label
        self._back = b""
        self._dec: AEADDecryptionContext | None
        if enc_key is not None:
            self._dec = Cipher(algorithms.AES(enc_key), modes.GCM(nonce)).decryptor()
            self._dec.authenticate_additional_data(aad)
            self._mac = None
        else:
            self._dec = None
            self._mac = blake3.blake3(aad)

    def unread(self, data: bytes) -> None:
        self._back = data + self._back

    def read(self, n: int = -1) -> bytes:
        if self._back:
            cut = len(self._back) if n < 0 else n
            out, self._back = self._back[:cut], self._back[cut:]
            return out
        want = self._left if n < 0 else min(n, self._left)
        if want <= 0:
            return b""
        data = self._stream.read(want)
        if len(data) != want:
            raise CorruptObject(self._label, "shorter than its header says")
        self._left -= want
        if self._dec is not None:
            return self._dec.update(data)
        assert self._mac is not None        # __init__ sets one of the two
        self._mac.update(data)
        return data

    def finish(self) -> None:
        """Check the tag after the whole payload was read (CorruptObject otherwise)."""
        if self._left:
            raise CorruptObject(self._label, "payload not read to its end")
        tag = self._stream.read(TAG_SIZE[CIPHER_ID_AES_GCM if self._dec is not None else CIPHER_ID_NONE])
        if self._dec is not None:
            try:
                self._dec.finalize_with_tag(tag)
            except (InvalidTag, ValueError):
                raise CorruptObject(self._label, "authentication failed") from None
        elif self._mac is None or self._mac.digest() != tag:     # (__init__ sets one of the two)
            raise CorruptObject(self._label, "integrity tag mismatch")


def _check_frame_size(frame: bytes | memoryview, plain_len: int, label: str) -> None:
    """A zstd frame must record its content size, equal to the header's plaintext length:
    checked before decompressing, so a frame cannot make a reader allocate more."""
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise CorruptObject(label, "payload is not a zstd frame") from None
    if declared != plain_len:
        raise CorruptObject(label, f"zstd frame declares {declared} bytes, header {plain_len}")
