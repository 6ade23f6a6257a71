"""The parts of a server's answer an operation cannot do without.

pyVmomi types every field of an answer as optional (a server may leave any of them out);
``required(value, what)`` is the one place where an operation says it needs one: the value
itself, or ``AnswerIncomplete`` naming what the server left out. Not for fields an operation
can do without: those are checked where they are read.
"""
from __future__ import annotations

from typing import TypeVar

from .errors import AnswerIncomplete

T = TypeVar("T")


def required(value: T | None, what: str) -> T:
    """``value``, or ``AnswerIncomplete`` when the server left ``what`` out."""
    if value is None:
        raise AnswerIncomplete(f"the server's answer has no {what}")
    return value
