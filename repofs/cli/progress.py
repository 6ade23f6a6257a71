"""Progress lines on stderr, only when stderr is a terminal (scripts get clean output)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool | None = None, interval: float = 0.2):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and done < total:
            return
        self._last = now
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        sys.stderr.write(f"\r{label}: {pct} {done / 2**20:10.1f} MiB ")
        sys.stderr.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            self._shown = False
