"""Small sealed JSON records of the life cycle: tombstones, protections, leases, prune
batches, verification records (docs/format.md section 9).

A record ``<folder>/<name>`` is a sealed object (format/sealed.py) whose name bytes are the
ASCII of ``name`` and whose plaintext is a JSON object with sorted keys. Records are small
(a few hundred bytes, verification shards excepted); ``get`` refuses anything over
``MAX_RECORD`` so a hostile store cannot make a reader allocate without bound.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterator

from .errors import CorruptObject, ObjectMissing

MAGIC_TOMBSTONE = b"RFFG"
MAGIC_PROTECTION = b"RFPR"
MAGIC_LEASE = b"RFLS"
MAGIC_BATCH = b"RFPB"
MAGIC_VERIFIED = b"RFVR"
MAX_RECORD = 64 << 20
_NAME = re.compile(r"[0-9a-f]{2,64}")     # whole names only (fullmatch): "$" would allow a "\n"


def put(repo: Any, folder: str, name: str, magic: bytes, doc: dict) -> None:
    plain = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    repo.backend.put(f"{folder}/{name}", repo.sealer.seal(magic, name.encode(), plain))


def get(repo: Any, folder: str, name: str, magic: bytes) -> dict:
    """The record ``folder/name``: ObjectMissing if absent, CorruptObject if damaged."""
    label = f"{folder}/{name}"
    if not _NAME.fullmatch(name):
        raise CorruptObject(label, "malformed record name")
    if repo.backend.size(label) > MAX_RECORD:
        raise CorruptObject(label, "record too large")
    plain = repo.sealer.open(magic, name.encode(), repo.backend.get(label), label)
    try:
        doc = json.loads(plain)
    except ValueError:
        raise CorruptObject(label, "record is not JSON") from None
    if not isinstance(doc, dict):
        raise CorruptObject(label, "record is not a JSON object")
    return doc


def names(repo: Any, folder: str) -> list[str]:
    """Names of the records in ``folder`` (malformed names are not records)."""
    out = []
    for full in repo.backend.list(folder):
        name = full.split("/", 1)[1] if "/" in full else full
        if _NAME.fullmatch(name):
            out.append(name)
    return sorted(out)


def delete(repo: Any, folder: str, name: str) -> bool:
    try:
        repo.backend.delete(f"{folder}/{name}")
        return True
    except ObjectMissing:
        return False


def read_all(repo: Any, folder: str, magic: bytes) -> Iterator[tuple[str, dict]]:
    """(name, record) of every readable record in ``folder``; damaged or vanished ones are
    skipped (a record vanishes when its owner deletes it while we list)."""
    for name in names(repo, folder):
        try:
            yield name, get(repo, folder, name, magic)
        except (ObjectMissing, CorruptObject):
            continue
