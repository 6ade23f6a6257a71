"""What a vSphere command ends with for each of its targets, and sizes as people read them.

Both directions run many targets in one session and keep going when one fails: ``backup`` and
``restore`` each return one ``Outcome`` per VM, holding the result or the error; the CLI prints
them (repofs/cli/outcomes.py) and chooses the exit status. ``size_text`` is the one way sizes
appear in their reports and plans (binary units, one decimal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass
class Outcome(Generic[R]):
    target: str                       # as given: vm:NAME, vapp:NAME, ivd:NAME
    vm: str | None = None             # the VM it became, when a target names several or none yet
    result: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def size_text(n: int | None) -> str:
    if n is None:
        return "? bytes"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
