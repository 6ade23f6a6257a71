"""Sizes, rates, durations and times as people read and type them: one style for every command.

Output: binary units with one decimal (``1.2 GiB``, ``512.0 MiB``, ``17 B``), rates as sizes per
second, durations as ``1h02m``, ``3m05s``, ``4.2s``, times as ``2026-11-25 14:03:00 UTC``.
``--json`` never goes through here: it keeps raw integers (bytes, nanoseconds).

Input: ``parse_size`` takes ``123``, ``512K``, ``1M``, ``2G``, ``1.5GiB``, ``4 MiB`` (powers of
1024, case-insensitive, an optional ``B`` or ``iB``), the same for ``--chunk-size`` and
``--cache-size``; ``parse_duration`` takes ``90``, ``90s``, ``5m``, ``2h``, ``1d``, ``1h30m`` and
returns seconds. Both raise ``ValueError`` with a message that names the accepted forms; the
caller names the option.
"""
from __future__ import annotations

import datetime as dt
import re

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b)?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
MAX_SIZE = 1 << 62          # anything larger is a typo, not a size


def format_size(n: int | float) -> str:
    """``1.2 GiB``: the largest unit under which the number stays >= 1; bytes without decimals."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in _UNITS:
        if n < 1024 or unit == _UNITS[-1]:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(n_bytes: int | float, seconds: float) -> str:
    return f"{format_size(n_bytes / seconds if seconds > 0 else 0)}/s"


def format_duration(seconds: float) -> str:
    """``4.2s`` under a minute, ``3m05s`` under an hour, then ``1h02m``, ``2d03h``."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_time(ns: int) -> str:
    """A time in nanoseconds since the epoch, in UTC, to the second."""
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_ratio(x: float) -> str:
    return f"{x:.2f}x"


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``512K``, ``1M``, ``2G``, ``1.5GiB``, ``4 MiB`` (powers of 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or e.g. 512K, 1M, 2G, 1.5GiB)")
    number, unit = float(m.group(1)), m.group(2).lower()
    value = int(number * (1 << (10 * " kmgtpe".index(unit or " "))))
    if value > MAX_SIZE:
        raise ValueError(f"size too large: {text!r}")
    return value


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``2h``, ``1d``, ``1h30m``, ``2.5s``."""
    t = str(text).strip().lower()
    pos, total = 0, 0.0
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    while pos < len(t):
        m = _DURATION_PART.match(t, pos)
        if not m or (not m.group(2) and m.end() != len(t)):
            raise ValueError(f"not a duration: {text!r} (use seconds or e.g. 90s, 5m, 2h, 1h30m)")
        total += float(m.group(1)) * factor[m.group(2)]
        pos = m.end()
    if not t or total > 10 * 365 * 86400:
        raise ValueError(f"not a duration: {text!r} (use seconds or e.g. 90s, 5m, 2h, 1h30m)")
    return total
