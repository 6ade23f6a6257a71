"""What this client remembers about each repository it opened, to notice a storage attacker.

Someone who can write the repository's storage but has no key can still swap files: put in
a key store that declares ``cipher: none`` (so the next backup writes in the clear), replace
the whole repository by another one, or delete the newest manifests (a rollback). Nothing in
the storage can prove those wrong, so the client keeps its own record, outside the storage,
one folder per repository id (like borg's ``~/.config/borg/security/<id>/``)::

    $REPOFS_SECURITY_DIR or $XDG_CONFIG_HOME/repofs/security or ~/.config/repofs/security
        <repository id>/location       the path it was opened at, absolute
        <repository id>/cipher         "aes-256-gcm" or "none", as first seen
        <repository id>/latest/<tag>   newest generation seen of one VM, JSON
                                       {"vm": …, "time_ns": …, "generation": …};
                                       tag = hex SHA-256 of the VM name (names are data, not paths)
        locations/<tag>                the repository id last seen at a location;
                                       tag = hex SHA-256 of the absolute path

Limits: the record is per user and per machine; the first contact with a repository trusts
what it finds (the passphrase rule in ``repofs/cli/common.py`` covers the cipher then). A
damaged or unreadable record is rewritten rather than trusted. Writes are atomic (temporary
file, rename); a lost update only makes the record older, which weakens a check, never fails
one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets

from .errors import RepositoryChanged

MAX_RECORD = 4096

log = logging.getLogger("repofs.security")
_unwritable_warned = False


def default_folder() -> str:
    explicit = os.environ.get("REPOFS_SECURITY_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "repofs", "security")


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD)
        return data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _write(path: str, text: str) -> None:
    """Write one record atomically. A folder that cannot be written (a read-only home) costs
    the protection, not the command: one warning per process."""
    global _unwritable_warned
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except OSError as e:
        if not _unwritable_warned:
            _unwritable_warned = True
            log.warning("repofs: warning: cannot keep this client's record of the repository in %s (%s)",
                        os.path.dirname(path), e.strerror)
        try:
            os.unlink(tmp)
        except OSError:
            pass


class KnownRepository:
    """This client's record of one repository (its id, cipher, newest generations)."""

    def __init__(self, folder: str, repo_id: str, location: str):
        if not repo_id or not all(c in "0123456789abcdef" for c in repo_id) or len(repo_id) > 64:
            raise RepositoryChanged(f"the repository at {location} has a malformed id")
        self.folder = folder
        self.repo_id = repo_id
        self.location = os.path.abspath(location)
        self.dir = os.path.join(folder, repo_id)

    def verify(self, cipher: str) -> None:
        """Raise RepositoryChanged when the repository at this location had another id, or
        this id had another cipher; then remember both."""
        where = os.path.join(self.folder, "locations", _tag(self.location))
        seen_id = _read(where)
        if seen_id is not None and seen_id != self.repo_id:
            raise RepositoryChanged(
                f"the repository at {self.location} has id {self.repo_id}, but this client knew id "
                f"{seen_id} there: it was replaced (if you re-created it, remove "
                f"{os.path.join(self.folder, seen_id)} and {where})")
        seen_cipher = _read(os.path.join(self.dir, "cipher"))
        if seen_cipher is not None and seen_cipher != cipher:
            raise RepositoryChanged(
                f"the repository {self.repo_id} now says cipher {cipher!r}, but this client knew it "
                f"with {seen_cipher!r}: refusing a changed encryption")
        if seen_cipher is None:
            _write(os.path.join(self.dir, "cipher"), cipher)
        if _read(os.path.join(self.dir, "location")) != self.location:
            _write(os.path.join(self.dir, "location"), self.location)
        if seen_id is None:
            _write(where, self.repo_id)

    def adopt(self, cipher: str) -> None:
        """Remember a repository this client just created at its location (replacing the
        record of whatever was there before)."""
        _write(os.path.join(self.dir, "cipher"), cipher)
        _write(os.path.join(self.dir, "location"), self.location)
        _write(os.path.join(self.folder, "locations", _tag(self.location)), self.repo_id)

    def latest(self, vm: str) -> tuple[int, str] | None:
        """(time_ns, generation) of the newest generation of ``vm`` this client saw or wrote."""
        record = self._record(os.path.join(self.dir, "latest", _tag(vm)))
        return (record[1], record[2]) if record and record[0] == vm else None

    @staticmethod
    def _record(path: str) -> tuple[str, int, str] | None:
        text = _read(path)
        try:
            doc = json.loads(text) if text else None
            if isinstance(doc, dict):
                return str(doc["vm"]), int(doc["time_ns"]), str(doc["generation"])
        except (ValueError, KeyError, TypeError):
            pass
        return None

    def snapshot(self) -> dict[str, tuple[int, str]]:
        """Every VM's remembered newest generation, ``{vm: (time_ns, generation)}``, as the
        records stand now. Taken *before* a listing of the manifests, it can name only
        generations that listing must show: a record is written after its manifest, so a
        record written by another process of this client after the snapshot is not compared
        with a listing that could predate its manifest."""
        try:
            names = os.listdir(os.path.join(self.dir, "latest"))
        except OSError:
            return {}
        out: dict[str, tuple[int, str]] = {}
        for name in names:
            record = self._record(os.path.join(self.dir, "latest", name))
            if record:
                out[record[0]] = (record[1], record[2])
        return out

    def lower(self, vm: str, newest: tuple[int, str] | None) -> None:
        """This client forgot generations of ``vm`` itself: what remains newest is ``newest``
        ((time_ns, generation), or None when none remains), not a rollback."""
        path = os.path.join(self.dir, "latest", _tag(vm))
        if newest is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        _write(path, json.dumps({"vm": vm, "time_ns": newest[0], "generation": newest[1]}))

    def remember(self, vm: str, time_ns: int, generation: str) -> None:
        """Remember a generation of ``vm`` when it is newer than the one remembered."""
        known = self.latest(vm)
        if known is not None and known[0] >= time_ns:
            return
        _write(os.path.join(self.dir, "latest", _tag(vm)),
               json.dumps({"vm": vm, "time_ns": time_ns, "generation": generation}))
