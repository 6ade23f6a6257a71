"""Progress of long operations on stderr: percent, bytes, rate and ETA.

On a terminal: one line redrawn in place (``rich``'s progress bar, refreshed a few times a
second from its own thread). Not on a terminal (a log, a pipe, cron): a plain line every
``REPOFS_PROGRESS_INTERVAL`` seconds (default 10) and one at the end, so a log shows the
operation advancing without a flood. Nothing at all with ``--quiet``.

The callers report ``(label, done, total)`` per disk, from several threads at once (the
disks of a VM are read in parallel); the line shows their sum. Sizes use ``units``' style.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from . import output
from .units import format_duration, format_rate, format_size


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("REPOFS_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


class Progress:
    """``progress(label, done, total)``; ``finish()`` ends the line."""

    def __init__(self, what: str = "progress", enabled: bool | None = None, tty: bool | None = None,
                 unit: str = "bytes"):
        self.what = what
        self.unit = unit                # "bytes", or a noun for counts ("chunks")
        self.enabled = (not output.quiet()) if enabled is None else enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = _interval()
        self._parts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last = self._started
        self._bar: Any = None         # a rich Progress, made at the first update on a terminal
        self._task: Any = None
        self._printed = False

    def _totals(self) -> tuple[int, int]:
        done = sum(d for d, _t in self._parts.values())
        total = sum(t for _d, t in self._parts.values())
        return done, total

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._parts[label] = (done, total)
            if self.tty:
                self._draw()
                return
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._line()

    def _draw(self) -> None:
        done, total = self._totals()
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TaskProgressColumn,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)
            from rich.progress import MofNCompleteColumn
            amount = [DownloadColumn(binary_units=True), TransferSpeedColumn()] if self.unit == "bytes" \
                else [MofNCompleteColumn(), TextColumn(self.unit)]
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), *amount,
                            TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(file=sys.stderr), transient=False,
                            refresh_per_second=5)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=total or None)
        self._bar.update(self._task, completed=done, total=total or None,
                         description=self._description())

    def _description(self) -> str:
        if output.verbose() and len(self._parts) > 1:
            return f"{self.what} ({', '.join(sorted(self._parts))})"
        return self.what

    def text(self) -> str:
        """The plain progress line: ``backup: 45.0% 1.2 GiB of 2.7 GiB, 300.0 MiB/s, ETA 5.0s``."""
        done, total = self._totals()
        elapsed = time.monotonic() - self._started
        pct = f"{100 * done / total:.1f}% " if total else ""
        eta = ""
        if total and done and done < total and elapsed > 0:
            eta = f", ETA {format_duration((total - done) / (done / elapsed))}"
        if self.unit != "bytes":
            rate = f"{done / elapsed:.0f} {self.unit}/s" if elapsed > 0 else ""
            return f"{self._description()}: {pct}{done} of {total} {self.unit}, {rate}{eta}"
        return (f"{self._description()}: {pct}{format_size(done)} of {format_size(total)}, "
                f"{format_rate(done, elapsed)}{eta}")

    def _line(self) -> None:
        sys.stderr.write(self.text() + "\n")
        sys.stderr.flush()
        self._printed = True

    def finish(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            elif self.enabled and not self.tty and self._parts:
                self._line()
            self._parts = {}
            self._started = time.monotonic()
