"""Which guest files differ between two generations of a disk (ext2/3/4 volumes).

Both trees are walked through ``GuestGeneration`` (the rootless readers); an entry is
*added*, *removed*, or *changed* when its type, size, mtime or inode number differ. Only
volumes present in both generations under the same name and holding an ext file system are
compared. Guest bytes are untrusted: paths are data (joined with ``/`` for display, never
opened on the host), each walk stops at ``MAX_ENTRIES`` entries and never enters a directory
inode twice (a hostile directory graph with loops ends).
"""
from __future__ import annotations

import stat as st

from .guestfs import GuestError, GuestGeneration, GuestStat

MAX_ENTRIES = 1_000_000


class TooManyEntries(GuestError):
    """A guest tree has more entries than a diff walks."""


def _walk(guest: GuestGeneration, root: str) -> dict[str, GuestStat]:
    out: dict[str, GuestStat] = {}
    seen_dirs: set[int] = set()
    stack = [""]
    while stack:
        inner = stack.pop()
        for name, info in guest.listdir(f"{root}/{inner}" if inner else root):
            if name in (".", "..") or "/" in name:
                continue
            path = f"{inner}/{name}" if inner else name
            out[path] = info
            if len(out) > MAX_ENTRIES:
                raise TooManyEntries(f"more than {MAX_ENTRIES} entries under {root}: diff stopped")
            if info.is_dir and info.ino not in seen_dirs:
                seen_dirs.add(info.ino)
                stack.append(path)
    return out


def _kind(mode: int) -> int:
    return st.S_IFMT(mode)


def diff_files(old_gen, new_gen, label: str) -> list[dict]:
    """[{"change": "added"|"removed"|"changed", "path": "<volume>/<path>", ...}] for disk
    ``label`` of two generations (``GenerationView``s), sorted by path."""
    a, b = GuestGeneration(old_gen), GuestGeneration(new_gen)
    try:
        vols_a = {v.name: v for v in a.volumes(label) if v.fstype == "ext"}
        vols_b = {v.name: v for v in b.volumes(label) if v.fstype == "ext"}
    except GuestError:
        return []
    changes: list[dict] = []
    for name in sorted(set(vols_a) & set(vols_b)):
        root = f"{label}/{name}"
        try:
            old, new = _walk(a, root), _walk(b, root)
        except TooManyEntries:
            raise
        except GuestError:
            continue
        for path in sorted(set(old) | set(new)):
            x, y = old.get(path), new.get(path)
            shown = f"{name}/{path}"
            if x is None:
                assert y is not None            # the path came from one side or the other
                changes.append({"change": "added", "path": shown, "size": y.size})
            elif y is None:
                changes.append({"change": "removed", "path": shown, "size": x.size})
            elif (_kind(x.mode), x.size, x.mtime_ns, x.ino) != (_kind(y.mode), y.size, y.mtime_ns, y.ino):
                what = [k for k, p, q in (("type", _kind(x.mode), _kind(y.mode)), ("size", x.size, y.size),
                                          ("mtime", x.mtime_ns, y.mtime_ns), ("inode", x.ino, y.ino)) if p != q]
                changes.append({"change": "changed", "path": shown, "size": y.size, "what": what})
    return changes
