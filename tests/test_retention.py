"""Retention policies against tables of generation times (all UTC), as restic's tests do:
the expected kept set and the rules that keep each, including calendar edges — ISO week 53,
leap days, month ends — and the CLI's ``forget --json`` on a real repository."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from fixtures_lifecycle import small_cli

from format.retention import Duration, Generation, Policy, PolicyError, apply




def ns(text: str) -> int:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(when.timestamp()) * 1_000_000_000


TIMES = [
    "2019-12-30T10:00:00Z",   # ISO 2020-W01 (a Monday of the previous calendar year)
    "2020-02-29T23:59:59Z",   # leap day
    "2020-03-01T00:00:00Z",
    "2020-12-27T12:00:00Z",   # ISO 2020-W52 (Sunday)
    "2020-12-31T08:00:00Z",   # ISO 2020-W53
    "2021-01-01T08:00:00Z",   # ISO 2020-W53 as well
    "2021-01-03T23:00:00Z",   # ISO 2020-W53, the week's last day
    "2021-01-04T00:00:00Z",   # ISO 2021-W01
    "2021-01-04T00:30:00Z",   # same hour
    "2021-01-04T01:10:00Z",
    "2024-02-29T12:00:00Z",   # leap day
    "2024-03-31T12:00:00Z",
]


def table(protected: tuple[str, ...] = ()) -> list[Generation]:
    return [Generation(f"m{i:02d}", t.replace(":", ""), ns(t), t in protected) for i, t in enumerate(TIMES)]


def kept(policy: Policy, protected: tuple[str, ...] = (), allow_empty: bool = False) -> dict[str, list[str]]:
    return {TIMES[int(d.generation.id[1:])]: d.reasons
            for d in apply(policy, table(protected), allow_empty) if d.keep}


CASES = [
    (Policy(last=3), {
        "2024-03-31T12:00:00Z": ["last"], "2024-02-29T12:00:00Z": ["last"], "2021-01-04T01:10:00Z": ["last"]}),
    (Policy(hourly=3), {
        "2024-03-31T12:00:00Z": ["hourly"], "2024-02-29T12:00:00Z": ["hourly"],
        "2021-01-04T01:10:00Z": ["hourly"]}),
    (Policy(hourly=4), {
        "2024-03-31T12:00:00Z": ["hourly"], "2024-02-29T12:00:00Z": ["hourly"],
        "2021-01-04T01:10:00Z": ["hourly"], "2021-01-04T00:30:00Z": ["hourly"]}),
    (Policy(daily=4), {
        "2024-03-31T12:00:00Z": ["daily"], "2024-02-29T12:00:00Z": ["daily"],
        "2021-01-04T01:10:00Z": ["daily"], "2021-01-03T23:00:00Z": ["daily"]}),
    # ISO weeks: 2021-01-03, 2021-01-01 and 2020-12-31 are all 2020-W53: one kept for it
    (Policy(weekly=5), {
        "2024-03-31T12:00:00Z": ["weekly"], "2024-02-29T12:00:00Z": ["weekly"],
        "2021-01-04T01:10:00Z": ["weekly"], "2021-01-03T23:00:00Z": ["weekly"],
        "2020-12-27T12:00:00Z": ["weekly"]}),
    (Policy(monthly=5), {
        "2024-03-31T12:00:00Z": ["monthly"], "2024-02-29T12:00:00Z": ["monthly"],
        "2021-01-04T01:10:00Z": ["monthly"], "2020-12-31T08:00:00Z": ["monthly"],
        "2020-03-01T00:00:00Z": ["monthly"]}),
    (Policy(yearly=10), {
        "2024-03-31T12:00:00Z": ["yearly"], "2021-01-04T01:10:00Z": ["yearly"],
        "2020-12-31T08:00:00Z": ["yearly"], "2019-12-30T10:00:00Z": ["yearly"]}),
    # 2024-03-31 minus one month is "2024-02-31", carried to 2024-03-02: the leap day is out
    (Policy(within=Duration.parse("1m")), {"2024-03-31T12:00:00Z": ["within 1m"]}),
    (Policy(within=Duration.parse("1m3d")), {
        "2024-03-31T12:00:00Z": ["within 1m3d"], "2024-02-29T12:00:00Z": ["within 1m3d"]}),
    (Policy(last=1, monthly=2, yearly=2), {
        "2024-03-31T12:00:00Z": ["last", "monthly", "yearly"], "2024-02-29T12:00:00Z": ["monthly"],
        "2021-01-04T01:10:00Z": ["yearly"]}),
]


@pytest.mark.parametrize("policy,expected", CASES, ids=[str(p) for p, _ in CASES])
def test_policy_table(policy: Policy, expected: dict) -> None:
    assert kept(policy) == expected


def test_protected_survive_every_policy() -> None:
    got = kept(Policy(last=1), protected=("2019-12-30T10:00:00Z", "2021-01-01T08:00:00Z"))
    assert got == {"2024-03-31T12:00:00Z": ["last"], "2019-12-30T10:00:00Z": ["protected"],
                   "2021-01-01T08:00:00Z": ["protected"]}


def test_keep_within_counts_from_the_newest_generation_not_from_now() -> None:
    # years after the last backup, keep-within still keeps the newest period
    assert "2024-03-31T12:00:00Z" in kept(Policy(within=Duration.parse("1d")))


def test_empty_policy_is_refused_and_last_generation_kept() -> None:
    with pytest.raises(PolicyError):
        apply(Policy(), table())
    gens = [Generation("m0", "a", ns("2021-01-01T00:00:00Z")), Generation("m1", "b", ns("2021-01-02T00:00:00Z"))]
    keep_none = Policy(within=Duration(hours=0))          # keeps only generations at the newest's time
    assert [d.keep for d in apply(keep_none, gens)] == [True, False]
    assert [d.reasons for d in apply(keep_none, gens)][0] == ["within 0h"]
    # the empty policy forgets a whole VM only when asked, and never a protected generation
    gens.append(Generation("m2", "c", ns("2020-01-01T00:00:00Z"), protected=True))
    assert [(d.generation.id, d.keep) for d in apply(Policy(), gens, allow_empty=True)] == \
        [("m1", False), ("m0", False), ("m2", True)]
    with pytest.raises(PolicyError):
        Duration.parse("5w")
    with pytest.raises(PolicyError):
        Policy(last=-1)


def test_duration_arithmetic_on_calendar_edges() -> None:
    utc = dt.timezone.utc
    assert Duration.parse("1m").before(dt.datetime(2023, 3, 31, tzinfo=utc)) == dt.datetime(2023, 3, 3, tzinfo=utc)
    assert Duration.parse("1y").before(dt.datetime(2024, 2, 29, tzinfo=utc)) == dt.datetime(2023, 3, 1, tzinfo=utc)
    assert (Duration.parse("1d12h").before(dt.datetime(2024, 3, 1, 6, tzinfo=utc))
            == dt.datetime(2024, 2, 28, 18, tzinfo=utc))


def test_forget_cli_json_against_the_table(tmp_path) -> None:
    """The real command: generations written with ``backup --time`` at the table's times,
    ``forget --keep-weekly 5 --dry-run --json`` agrees with the table, then ``forget`` hides
    exactly the removed ones, and the last generation of a VM survives a policy that keeps
    nothing of it unless --allow-empty."""
    cli = small_cli(tmp_path)
    image = tmp_path / "disk.img"
    image.write_bytes(b"\1" * 200_000)
    for t in TIMES:
        cli.run("backup", f"file:{image}", "--vm", "web", "--time", t)
    out = json.loads(cli.run("forget", "vm:web", "--keep-weekly", "5", "--dry-run", "--json").stdout)
    (vm,) = out["vms"]
    expected = dict(CASES[4][1])
    got = {k["time"]: k["reasons"] for k in vm["keep"]}      # ISO 8601 UTC, the shared shape
    assert got == expected
    assert len(vm["remove"]) == len(TIMES) - len(expected)
    listed = json.loads(cli.run("generations", "--json").stdout)
    assert len(listed) == len(TIMES)          # a dry run changes nothing
    cli.run("forget", "vm:web", "--keep-weekly", "5")
    listed = json.loads(cli.run("generations", "--json").stdout)
    assert sorted(g["time"][:19] + "Z" for g in listed) == sorted(expected)
    bad = cli.run("forget", "vm:web", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("repofs: error: ") and "keep rule" in bad.stderr
