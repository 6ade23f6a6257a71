"""``repofs verify --boot`` with every sign of life: the serial marker, a guest port answering
through the isolated network, the administrator's script; several generations at once.

The test guest (tests/fixtures_boot.py) serves a page over HTTP on port 8080 when its data
partition asks for it (``serving_image``). VM ``app`` has two generations serving "healthy",
VM ``broken`` serves "broken", VM ``guest`` serves nothing and powers off after its marker.
Two verify runs of two and three boots (``--parallel 2``); under TCG ~25 s a boot.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fixtures_boot import MARKER, SERVE_PORT, serving_image
from fixtures_repo import REPOFS

# slow: five boots in QEMU (outside the developer loop, -m "not slow"; CI runs them)
pytestmark = pytest.mark.slow

TIMEOUT = "300"

# the administrator's check: the page on the guest's port must say "healthy"; it also notes
# the environment it got, one file per generation, for the test to read
HEALTH = f"""#!{sys.executable}
import os, sys, time, urllib.request
env = {{k: v for k, v in os.environ.items() if k.startswith("REPOFS_")}}
notes = os.path.join(os.environ["HEALTH_NOTES"], os.environ["REPOFS_VM"] + "@" + os.environ["REPOFS_GENERATION"])
with open(notes, "w") as f:
    f.write(repr(env))
while True:
    try:
        url = "http://127.0.0.1:" + os.environ["REPOFS_GUEST_PORT"] + "/"
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        break
    except OSError:
        time.sleep(0.5)
if "healthy" not in page:
    sys.exit("the page says " + page.strip())
"""


@pytest.fixture(scope="module")
def app(boot_repo, tmp_path_factory):
    """VM ``app`` with two generations, VM ``broken``; returns app's generation names."""
    tmp = tmp_path_factory.mktemp("app")
    for i, (vm, page) in enumerate([("app", "healthy v1"), ("app", "healthy v2"), ("broken", "broken v3")]):
        img = serving_image(boot_repo.source, tmp / f"{vm}{i}.img", page)
        boot_repo.run("backup", f"file:{img}", "--vm", vm)
    gens = [r["generation"] for r in _rows(boot_repo) if r["vm"] == "app"]
    assert len(gens) == 2
    return gens


def _rows(cli) -> list[dict]:
    return json.loads(cli.run("generations", "--json").stdout)


def _recorded(cli) -> dict[tuple[str, str], dict]:
    return {(r["vm"], r["generation"]): r["boot_verification"] for r in _rows(cli)}


def _health(tmp_path) -> tuple[str, dict]:
    script = tmp_path / "health.py"
    script.write_text(HEALTH)
    script.chmod(0o755)
    notes = tmp_path / "notes"
    notes.mkdir()
    return str(script), {"HEALTH_NOTES": str(notes)}


def test_a_forwarded_port_is_no_answer_until_the_guest_answers(boot_repo, boot_accel):
    # QEMU accepts every connection to the forwarded port from its first instant; within 5 s
    # the guest has not even loaded its kernel, so nothing may count as an answer
    r = boot_repo.run("verify", "--boot", "vm:guest", "--expect-port", "8081", "--timeout", "5",
                      "--accel", boot_accel, "--json", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    [row] = json.loads(r.stdout)
    assert row["passed"] is False and row["reason"] in (
        "no sign of life (port 8081) within 5 s", "the guest powered off without the sign (port 8081)")
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("repofs: error: guest "), r.stderr


def test_verify_two_generations_in_parallel_by_serial_port_and_script(boot_repo, boot_accel, app, tmp_path):
    script, extra = _health(tmp_path)
    env = dict(boot_repo.env, **extra)
    r = subprocess.run([*REPOFS, "verify", "--boot", *(f"vm:app@{g}" for g in app), "--parallel", "2",
                        "--expect-serial", MARKER, "--expect-port", str(SERVE_PORT), "--script", script,
                        "--timeout", TIMEOUT, "--accel", boot_accel, "--json"],
                       env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(row["generation"] for row in rows) == sorted(app)
    check = f"serial /{MARKER}/ and port {SERVE_PORT} and script health.py"
    for row in rows:
        assert row["passed"] is True and row["reason"] == "" and row["check"] == check, row
    recorded = _recorded(boot_repo)
    for g in app:
        rec = recorded[("app", g)]
        assert rec["passed"] is True and rec["check"] == check and rec["accel"] == boot_accel
        # what the script was given: the serial log, the forwarded port, which generation;
        # not the repository's password file
        env_seen = eval((tmp_path / "notes" / f"app@{g}").read_text())   # noqa: S307 (our own repr)
        assert env_seen["REPOFS_VM"] == "app" and env_seen["REPOFS_GENERATION"] == g
        assert env_seen["REPOFS_GUEST_PORT"].isdigit() and env_seen["REPOFS_SERIAL_LOG"].endswith("serial.log")
        assert "REPOFS_PASSWORD_FILE" not in env_seen


def test_verify_mix_names_the_failed_ones_and_records_all(boot_repo, boot_accel, app, tmp_path):
    script, extra = _health(tmp_path)
    env = dict(boot_repo.env, **extra)
    r = subprocess.run([*REPOFS, "verify", "--boot", f"vm:app@{app[0]}", "vm:broken", "vm:guest",
                        "--parallel", "2", "--expect-port", str(SERVE_PORT), "--script", script,
                        "--timeout", TIMEOUT, "--accel", boot_accel, "--json"],
                       env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 1
    # one line naming both failures, each with its reason; app passed and is not named
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("repofs: error: "), r.stderr
    assert "broken " in r.stderr and "guest " in r.stderr and "app " not in r.stderr
    rows = {row["vm"]: row for row in json.loads(r.stdout)}
    assert rows["app"]["passed"] is True
    # the script's verdict: its exit status and its last line
    assert rows["broken"]["passed"] is False
    assert rows["broken"]["reason"] == "the script exited with status 1: the page says broken v3"
    # nobody listens on the port in "guest" (QEMU's forwarder accepting is not an answer)
    assert rows["guest"]["passed"] is False
    assert rows["guest"]["reason"].startswith("the guest powered off without the sign (port 8080"), rows["guest"]
    recorded = _recorded(boot_repo)
    assert recorded[("app", app[0])]["passed"] is True
    for vm in ("broken", "guest"):
        [(gen, rec)] = [(g, rec) for (v, g), rec in recorded.items() if v == vm]
        assert rec["passed"] is False and rec["reason"] == rows[vm]["reason"]
