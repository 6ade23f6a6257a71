"""The verification record: which chunks ``check --read-data`` verified, and when
(docs/format.md section 9.4), so that a schedule verifies each chunk once per period.

One record per first hex byte of chunk ids (``verified/<p>``, 256 at most), each a sorted
list of ``[16 hex digits of the id, verified_ns]``. A record is only a hint for choosing
what to read: a lost or damaged record makes its chunks count as unverified (read again),
never as verified.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

from . import records
from .errors import CorruptObject, ObjectMissing

FOLDER = "verified"
PREFIX_HEX = 16


def load(repo: Any) -> dict[bytes, int]:
    """id prefix (8 bytes) -> when it was last verified."""
    out: dict[bytes, int] = {}
    for _name, doc in records.read_all(repo, FOLDER, records.MAGIC_VERIFIED):
        for item in doc.get("chunks", ()):
            try:
                prefix, when = bytes.fromhex(item[0]), int(item[1])
            except (TypeError, ValueError, IndexError):
                continue
            if len(prefix) == PREFIX_HEX // 2:
                out[prefix] = max(when, out.get(prefix, 0))
    return out


def record(repo: Any, verified: Iterable[bytes], when_ns: int | None = None) -> None:
    """Add ``verified`` chunk ids (verified now) to the record, one shard at a time."""
    when = time.time_ns() if when_ns is None else when_ns
    shards: dict[str, list[bytes]] = {}
    for cid in verified:
        shards.setdefault(cid[:1].hex(), []).append(cid[:PREFIX_HEX // 2])
    for shard, prefixes in shards.items():
        try:
            doc = records.get(repo, FOLDER, shard, records.MAGIC_VERIFIED)
            entries = {bytes.fromhex(p): int(t) for p, t in doc.get("chunks", ())}
        except (ObjectMissing, CorruptObject, TypeError, ValueError):
            entries = {}
        for p in prefixes:
            entries[p] = when
        records.put(repo, FOLDER, shard, records.MAGIC_VERIFIED,
                    {"shard": shard, "chunks": [[p.hex(), t] for p, t in sorted(entries.items())]})


def due(cid: bytes, seen: dict[bytes, int], older_than_ns: int | None, now_ns: int) -> bool:
    """Whether chunk ``cid`` should be read: never verified, or (with ``older_than_ns``)
    verified longer ago than that."""
    when = seen.get(cid[:PREFIX_HEX // 2])
    if when is None:
        return True
    return older_than_ns is not None and now_ns - when > older_than_ns
