"""How much a command says: ``--quiet`` (errors only), normal, ``--verbose`` (more detail).

One process-wide level, set by the options before or after the command (``-q``/``-v``) or by
``REPOFS_QUIET=1``. Also the one way a command reports that it was interrupted: ``interrupted``
turns Ctrl-C (or SIGTERM, which the CLI raises as ``KeyboardInterrupt``) into an
``OperationInterrupted`` carrying one sentence of what was stopped and what state it left,
which ``app.main`` prints as ``repofs: error: interrupted: ...``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level: int | None = None


def set_level(*, quiet: bool = False, verbose: bool = False) -> None:
    global _level
    _level = QUIET if quiet else VERBOSE if verbose else NORMAL


def level() -> int:
    if _level is not None:
        return _level
    return QUIET if os.environ.get("REPOFS_QUIET", "") not in ("", "0") else NORMAL


def quiet() -> bool:
    return level() == QUIET


def verbose() -> bool:
    return level() == VERBOSE


class OperationInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during an operation; ``state`` says what it left behind."""

    def __init__(self, state: str, terminated: bool):
        super().__init__(state)
        self.state = state
        self.terminated = terminated


@contextlib.contextmanager
def interrupted(state: str) -> Iterator[None]:
    """Re-raise Ctrl-C/SIGTERM inside the block as ``OperationInterrupted(state)``."""
    try:
        yield
    except OperationInterrupted:
        raise
    except KeyboardInterrupt as e:
        terminated = type(e).__name__ == "Terminated"
        raise OperationInterrupted(state, terminated) from None
