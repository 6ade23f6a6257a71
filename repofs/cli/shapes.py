"""The shapes every ``--json`` output shares (docs/cli.md, docs/cli-schema.json).

- sizes: integers of bytes, in fields named ``*_bytes`` (``capacity`` where older output had it);
- times: ``time`` as ISO 8601 UTC to the second (``2026-11-25T14:03:00Z``) with ``time_ns``
  beside it, nanoseconds since the epoch;
- ids: ``vm`` (the VM's name), ``generation`` (the generation's name), ``manifest`` (the
  manifest's hex id, any unique prefix of which names the generation too);
- durations: ``seconds`` as a number.
"""
from __future__ import annotations

import datetime as dt


def iso_time(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_fields(ns: int, prefix: str = "") -> dict:
    return {f"{prefix}time": iso_time(ns), f"{prefix}time_ns": ns}


def generation_ref(g) -> dict:
    """``{"vm", "generation", "manifest", "time", "time_ns"}`` of a ``GenerationView``."""
    return {"vm": g.vm, "generation": g.name, "manifest": g.manifest_name, **time_fields(g.time_ns)}
