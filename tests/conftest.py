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
    "fixtures_boot",
    "fixtures_s3",
    "fixtures_pagecache",
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


# The client's per-user record of repositories (format/security.py) lives in a folder of this
# test session, never in the user's ~/.config: tests create repositories at reused paths.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "REPOFS_SECURITY_DIR" not in os.environ:
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="repofs-test-config-")
    atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)


# A suite started in the background by a shell without job control (`cmd &` in a script, or
# under nohup) inherits SIGINT ignored, and every command it starts would too (Python keeps an
# ignored SIGINT ignored): the tests of Ctrl-C need it as a terminal delivers it. A handler in
# this process is reset to the default in each child at exec.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
