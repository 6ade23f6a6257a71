"""Boot verification records: did a generation boot, how long to its sign of life, why not.

One sealed object per verification run of one generation (docs/format.md, "Boot
verification records")::

    verifications/<manifest name>/<32 random hex digits>

sealed with magic ``b"RFBV"`` (``format/sealed.py`` framing); the name bound into the
associated data is ``<manifest name>/<random>`` in ASCII, so a record cannot be moved to
another generation or renamed. The plaintext is a UTF-8 JSON object of at most
``MAX_RECORD`` bytes:

    format      "repofs.boot-verification/1"
    manifest    the manifest name (must equal the one in the object's name)
    time_ns     when the run ended (ns since the epoch, UTC)
    passed      true / false
    seconds     from QEMU's start to the sign of life (null when none came)
    check       what was waited for, e.g. "serial /REPOFS-GUEST-UP/"
    reason      one line: why it failed ("" when it passed)
    accel       "kvm" or "tcg"

Records are only ever added: a generation's verification state is its newest record.
Generations are immutable, so a record never changes what a generation holds.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass

from .errors import CorruptObject
from .repository import Repository

MAGIC_VERIFICATION = b"RFBV"
FORMAT = "repofs.boot-verification/1"
PREFIX = "verifications"
MAX_RECORD = 64 << 10


@dataclass(frozen=True)
class Verification:
    manifest: str
    time_ns: int
    passed: bool
    seconds: float | None
    check: str
    reason: str
    accel: str

    def encode(self) -> bytes:
        data = json.dumps({"format": FORMAT} | asdict(self), sort_keys=True).encode()
        if len(data) > MAX_RECORD:
            raise ValueError("verification record too large")
        return data

    @classmethod
    def decode(cls, data: bytes, manifest: str, label: str) -> "Verification":
        if len(data) > MAX_RECORD:
            raise CorruptObject(label, "record too large")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise CorruptObject(label, "not a JSON document") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CorruptObject(label, "not a boot verification record")
        if doc.get("manifest") != manifest:
            raise CorruptObject(label, "names another generation")
        try:
            rec = cls(manifest, int(doc["time_ns"]), doc["passed"], doc["seconds"], str(doc["check"]),
                      str(doc["reason"]), str(doc["accel"]))
        except (KeyError, TypeError, ValueError):
            raise CorruptObject(label, "missing or malformed fields") from None
        if not isinstance(rec.passed, bool) or not (rec.seconds is None or isinstance(rec.seconds, (int, float))):
            raise CorruptObject(label, "malformed fields")
        return rec


def _check_manifest_name(manifest: str) -> None:
    if not manifest or len(manifest) > 64 or not all(c in "0123456789abcdef" for c in manifest):
        raise ValueError(f"not a manifest name: {manifest!r}")


def put_verification(repo: Repository, record: Verification) -> str:
    """Seal and store ``record``; returns its object name."""
    _check_manifest_name(record.manifest)
    bound = f"{record.manifest}/{secrets.token_hex(16)}"
    name = f"{PREFIX}/{bound}"
    repo.backend.put(name, repo.sealer.seal(MAGIC_VERIFICATION, bound.encode(), record.encode()))
    return name


def verifications(repo: Repository, manifest: str) -> list[Verification]:
    """Every record of one generation, oldest first; a damaged record raises CorruptObject."""
    _check_manifest_name(manifest)
    out = []
    for name in repo.backend.list(f"{PREFIX}/{manifest}"):
        bound = name[len(PREFIX) + 1:]
        if bound.count("/") != 1 or not bound.startswith(manifest + "/"):
            raise CorruptObject(name, "unexpected name")
        plain = repo.sealer.open(MAGIC_VERIFICATION, bound.encode(), repo.backend.get(name), name)
        out.append(Verification.decode(plain, manifest, name))
    return sorted(out, key=lambda v: v.time_ns)


def latest(repo: Repository, manifest: str) -> Verification | None:
    recs = verifications(repo, manifest)
    return recs[-1] if recs else None
