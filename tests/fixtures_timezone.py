"""A local time zone for one test: the repository's times must not depend on it."""
from __future__ import annotations

import time


def in_time_zone(monkeypatch, zone: str):
    """Generator for a fixture: local time is ``zone`` (a TZ value) for the test's duration."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
