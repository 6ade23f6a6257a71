"""Shared pytest set-up. Each harness lives in its own fixtures_*.py module, listed here."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"

pytest_plugins: list[str] = [
    "fixtures_images",
    "fixtures_repo",
    "fixtures_vcsim",
    "fixtures_vddk",
    "fixtures_mount",
    "fixtures_vsphere",
    "fixtures_restore",
    "fixtures_s3",
]

# Property tests and fuzzers: a seeded, repeatable pass in CI (the same examples every run, no
# time-based health checks on a shared 2-core machine); REPOFS_FUZZ=long for the long run.
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", deadline=None, max_examples=20000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("long" if os.environ.get("REPOFS_FUZZ") == "long" else "ci")
