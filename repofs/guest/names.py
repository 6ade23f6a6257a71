"""Names that come from a guest — partition, volume group, logical volume, file-system label,
file name — are data, never paths. This module is the one place that turns them into path
components and into text fit for a terminal.

- ``component(name)``: the name as one path component. A name that already is one (not
  empty, not ``.`` or ``..``, no ``/``, no NUL) is returned unchanged, so ordinary names —
  systemd's ``\\x2d`` escapes included — keep their bytes. Any other name is escaped: each
  ``/``, NUL and ``\\`` becomes ``\\xNN``, a name of only dots has its dots as ``\\x2e``, an
  empty name is ``\\x00``. Escaped names are reachable (``repofs files get`` takes them as
  listed) and never leave their folder; two hostile names may collide, and then the first
  listed one is kept.
- ``shown(text)``: text for human output (listings, ``stat``, one-line errors): every
  character Python does not call printable — control characters (C0, DEL, C1), format
  characters such as the bidirectional overrides, line and paragraph separators — and bytes
  that were not UTF-8 (surrogate escapes) are written as ``\\xNN`` / ``\\uNNNN``, so a guest cannot move the
  cursor, retitle the terminal or reorder a line. ``--json`` output keeps the real name.

Paths built from these components are still checked where something is created or mounted
(``repofs files mount``: ``loopmount.inside``).
"""
from __future__ import annotations

_DOTS = frozenset((".", ".."))


def is_component(name: str) -> bool:
    """True when ``name`` is usable as one path component as it is."""
    return bool(name) and name not in _DOTS and "/" not in name and "\0" not in name


def component(name: str) -> str:
    """``name`` as one safe path component (unchanged when it already is one)."""
    if is_component(name):
        return name
    if not name:
        return "\\x00"
    if name in _DOTS:
        return "\\x2e" * len(name)
    return "".join(f"\\x{ord(c):02x}" if c in "/\0\\" else c for c in name)


def _shown_char(c: str) -> str:
    if c.isprintable():                   # letters, marks, symbols, spaces of every script
        return c
    o = ord(c)
    if o < 0x20 or 0x7F <= o < 0xA0:
        return f"\\x{o:02x}"
    if 0xDC80 <= o <= 0xDCFF:              # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"   # format, separators, unassigned


def shown(text: str) -> str:
    """``text`` with every character that could act on a terminal written as an escape."""
    if text.isprintable() and text.isascii():
        return text                       # the common case, no copy
    return "".join(_shown_char(c) for c in text)
