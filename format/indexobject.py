"""Fixed indexes as sealed objects, written and read in pieces: the one reader of an index
object, for every user (the views of a mount or a restore, a backup's parent, check, prune).

An index's plaintext grows with its disk (32 bytes per slot: 64 MiB for 2 TiB at 1 MiB
chunks), so neither side holds it whole. ``seal_index`` hashes and compresses the encoding
as ``FixedIndex.encoding`` hands it out, page by page; ``read_index`` decrypts and
decompresses a stream of the object page by page (``Sealer.open_pages``) into an
``IndexDecoder``, which keeps the id table in pages and leaves pages of holes out. Memory is
then the sealed object (small for a sparse disk: holes compress to nothing) and the
allocated part of the id table — never a buffer the size of the disk's table.

Nothing decoded is returned before the whole object is authenticated and its content
matches its id: a caller of ``read_index`` sees an index or CorruptObject. Only ``on_ids``
sees pages earlier, unauthenticated — for uses that stay safe if the object turns out
corrupt (prune's marks: extra marks only keep objects, and a corrupt index stops the prune
before it condemns anything).
"""
from __future__ import annotations

from typing import BinaryIO, Callable

from .errors import CorruptObject
from .fixedindex import FixedIndex, IndexDecoder
from .sealed import INDEX_VERSION_GAPS, MAGIC_INDEX, MAX_PLAIN, VERSION, Sealer


def index_id(hex_id: str, label: str) -> bytes:
    """The 32-byte id an index is named by; CorruptObject for a malformed name."""
    try:
        iid = bytes.fromhex(hex_id)
    except ValueError:
        raise CorruptObject(label, "malformed index id") from None
    if len(iid) != 32:
        raise CorruptObject(label, "malformed index id")
    return iid


def seal_index(sealer: Sealer, index: FixedIndex) -> tuple[bytes, bytearray]:
    """(index id, sealed object) of ``index``: version 2 when its copy table has gaps (which
    readers before them cannot follow), else version 1, as every other object."""
    plain_len, parts = index.encoding()
    gapped = index.copies is not None and index.copies.gaps is not None
    return sealer.seal_parts(MAGIC_INDEX, plain_len, parts,
                             version=INDEX_VERSION_GAPS if gapped else VERSION)


def read_index(sealer: Sealer, iid: bytes, stream: BinaryIO, size: int, label: str, *,
               keep_ids: bool = True,
               on_ids: Callable[[bytes | bytearray | memoryview], None] | None = None,
               max_plain: int = MAX_PLAIN) -> FixedIndex:
    """The index sealed in the ``size`` bytes read from ``stream``, named ``iid``. With
    ``keep_ids=False`` its id table holds no ids (a caller that only passes them to
    ``on_ids``); its patch and copy tables are always there."""
    decoder = IndexDecoder(label, keep_ids=keep_ids, on_ids=on_ids)
    malformed: CorruptObject | None = None
    for page in sealer.open_pages(MAGIC_INDEX, iid, stream, size, label, object_id=iid,
                                  max_plain=max_plain):
        if malformed is None:
            try:
                decoder.feed(page)
            except CorruptObject as e:
                # read on: a damaged object is reported as such (its tag), not by what the
                # damage made of its structure
                malformed = e
    # the iteration ended: the tag and the id checked out
    if malformed is not None:
        raise malformed
    return decoder.finish()
