"""Retention policies: which generations of one VM a ``forget`` keeps, and why.

The rules are restic's, stated here so they can be checked: generations are taken newest
first (by time, then name). ``last`` keeps the N newest. ``hourly``/``daily``/``weekly``/
``monthly``/``yearly`` keep, for each of the N most recent periods that hold a generation, the
newest generation of that period; periods are UTC calendar periods (ISO 8601 weeks: week 1 holds
the year's first Thursday, so 31 December may be in week 1 of the next year and 1 January in
week 53 of the previous one). ``within`` keeps every generation younger than the duration,
counted back from the newest generation of the VM (not from now, so an old VM is not emptied
by time alone). A generation kept by several rules lists them all. Protected generations are
kept whatever the rules say. A policy that would keep nothing keeps the newest generation
unless ``allow_empty``; with the restic rules that happens only for the empty policy, which
is refused unless ``allow_empty`` (then every unprotected generation goes: a VM retired).

Pure: no repository access, so the tests feed it tables of times.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from .errors import RepoError

PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


class PolicyError(RepoError, ValueError):
    """A policy that cannot be applied (no rule, a negative count, a bad duration)."""


@dataclass(frozen=True)
class Duration:
    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """``1y6m``, ``30d``, ``12h``, ``2y3m4d5h`` (restic's form)."""
        m = _DURATION.match(text.strip())
        if not text.strip() or not m:
            raise PolicyError(f"not a duration: {text!r} (use e.g. 1y6m, 30d, 12h)")
        return cls(*(int(g or 0) for g in m.groups()))

    def before(self, when: dt.datetime) -> dt.datetime:
        """``when`` minus this duration; months counted on the calendar, an overflowing day
        carried into the next month (31 March minus 1 month is 3 March, or 2 March in a leap
        year), as Go's AddDate does."""
        months = when.year * 12 + (when.month - 1) - self.years * 12 - self.months
        year, month = divmod(months, 12)
        base = when.replace(year=year, month=month + 1, day=1)
        return base + dt.timedelta(days=when.day - 1 - self.days, hours=-self.hours)

    def __str__(self) -> str:
        return "".join(f"{n}{u}" for n, u in ((self.years, "y"), (self.months, "m"),
                                               (self.days, "d"), (self.hours, "h")) if n) or "0h"


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    def __post_init__(self) -> None:
        if min(self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly) < 0:
            raise PolicyError("keep counts must not be negative")

    @property
    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly
                    or self.yearly or self.within)


@dataclass(frozen=True)
class Generation:
    id: str          # manifest name
    name: str        # generation name (for the order of equal times)
    time_ns: int
    protected: bool = False


@dataclass
class Decision:
    generation: Generation
    keep: bool
    reasons: list[str] = field(default_factory=list)


def period_key(rule: str, time_ns: int) -> tuple[int, ...]:
    t = dt.datetime.fromtimestamp(time_ns // 1_000_000_000, dt.timezone.utc)
    if rule == "hourly":
        return (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return (t.year, t.month, t.day)
    if rule == "weekly":
        iso = t.isocalendar()
        return (iso[0], iso[1])
    if rule == "monthly":
        return (t.year, t.month)
    if rule == "yearly":
        return (t.year,)
    raise ValueError(rule)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def apply(policy: Policy, generations: list[Generation], allow_empty: bool = False) -> list[Decision]:
    """A decision per generation of one VM, newest first."""
    if policy.empty and not allow_empty:
        raise PolicyError("no keep rule given: refusing to forget every generation "
                          "(give --keep-last, --keep-daily, … or --keep-within)")
    ordered = sorted(generations, key=lambda g: (g.time_ns, g.name), reverse=True)
    decisions = [Decision(g, False) for g in ordered]
    if not decisions:
        return decisions
    remaining = {rule: getattr(policy, rule) for rule in PERIODS}
    last_key: dict[str, tuple[int, ...] | None] = {rule: None for rule in PERIODS}
    cutoff_ns = None
    if policy.within is not None:
        # In whole nanoseconds: the calendar step on the newest time's whole second, its
        # fraction carried over exactly (through floats, half of all times put the newest
        # generation outside its own "within 0h").
        seconds, fraction = divmod(ordered[0].time_ns, 1_000_000_000)
        newest = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
        back = policy.within.before(newest) - _EPOCH
        cutoff_ns = (back.days * 86_400 + back.seconds) * 1_000_000_000 + fraction
    for i, d in enumerate(decisions):
        g = d.generation
        if g.protected:
            d.reasons.append("protected")
        if i < policy.last:
            d.reasons.append("last")
        for rule in PERIODS:
            if remaining[rule] <= 0:
                continue
            key = period_key(rule, g.time_ns)
            if key != last_key[rule]:
                last_key[rule] = key
                remaining[rule] -= 1
                d.reasons.append(rule)
        if cutoff_ns is not None and g.time_ns >= cutoff_ns:
            d.reasons.append(f"within {policy.within}")
        d.keep = bool(d.reasons)
    if not allow_empty and not any(d.keep for d in decisions):
        decisions[0].keep = True
        decisions[0].reasons.append("newest of the VM")
    return decisions
