"""Progress as an operator sees it, on a real pseudo-terminal: one line redrawn in place with
percent, bytes, rate and ETA; plain periodic lines when stderr is not a terminal; nothing with
``--quiet``; and Ctrl-C saying what it stopped and what it left.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_repo import CLI, REPOFS, cli_env

MiB = 1 << 20


def run_on_pty(argv: list[str], env: dict, until: str | None = None, then_signal: int | None = None,
               timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with its stdin/stdout/stderr on a pty; optionally send a signal once the
    output contains ``until``. Returns (exit code, everything written)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*REPOFS, *argv], env={**env, "TERM": "xterm", "COLUMNS": "120"},
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:          # the pty closed: the process ended
                    break
                if not chunk:
                    break
                out += chunk
            if until and not sent and until.encode() in out:
                proc.send_signal(then_signal)
                sent = True
            if proc.poll() is not None and not ready:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


@pytest.fixture
def repo(tmp_path: Path) -> CLI:
    cli = CLI(tmp_path / "repo", cli_env(tmp_path, tmp_path / "repo"))
    cli.run("init", "--chunk-size", "1M")
    return cli


def test_progress_is_one_line_redrawn_on_a_terminal(repo: CLI, tmp_path: Path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(os.urandom(48 * MiB))
    rc, out = run_on_pty(["backup", f"file:{image}", "--vm", "web01"], repo.env)
    assert rc == 0, out
    assert "backup web01" in out and "100%" in out and "48.0/48.0 MiB" in out and "ETA" in out, out
    assert re.search(r"[\d.]+ [KMG]?B/s", out), out
    # drawn in place: the bar's text never takes one line per update
    assert out.count("backup web01") > 0 and out.count("\n") < 15, out
    assert "kind:        full (first backup of this VM)" in out


def test_quiet_prints_nothing_and_a_pipe_gets_plain_lines(repo: CLI, tmp_path: Path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(os.urandom(8 * MiB))
    rc, out = run_on_pty(["backup", f"file:{image}", "--vm", "web01", "--quiet"], repo.env)
    assert rc == 0 and out.strip() == "", out
    image.write_bytes(os.urandom(8 * MiB))
    proc = subprocess.run([*REPOFS, "backup", f"file:{image}", "--vm", "web01"], capture_output=True, text=True,
                          env={**repo.env, "REPOFS_PROGRESS_INTERVAL": "0"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    shape = r"backup web01: [\d.]+% [\d.]+ [KMG]?i?B of 8\.0 MiB, [\d.]+ [KMG]?i?B/s(, ETA \S+)?"
    assert lines and all(re.fullmatch(shape, line) for line in lines), proc.stderr
    assert lines[-1].startswith("backup web01: 100.0% 8.0 MiB of 8.0 MiB")
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr


def test_ctrl_c_says_what_it_stopped_and_what_it_left(repo: CLI, tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        for _ in range(384):
            f.write(os.urandom(MiB))
    # Ctrl-C once the progress line shows: the backup is under way
    rc, out = run_on_pty(["backup", f"file:{image}", "--vm", "web01"], repo.env,
                         until="backup web01", then_signal=signal.SIGINT)
    assert rc == 130, out
    assert "repofs: error: interrupted; backup of VM 'web01' stopped; no generation was written" in out, out
    assert "repofs prune" in out and "Traceback" not in out
    assert json.loads(repo.run("generations", "--json").stdout) == []
    # what it left is unreferenced data that check reports and prune frees
    doc = json.loads(repo.run("check", "--json").stdout)
    assert doc["ok"] and doc["unreferenced_chunks"] > 0
    repo.run("prune")
    assert json.loads(repo.run("check", "--json").stdout)["unreferenced_chunks"] == 0


def test_init_warns_and_asks_again_on_a_mismatch(tmp_path: Path) -> None:
    """The passphrase prompt on a real terminal (the pty is the process's controlling one)."""
    import fcntl
    import termios
    env = {k: v for k, v in cli_env(tmp_path, tmp_path / "repo").items()
           if k not in ("REPOFS_PASSWORD_FILE", "REPOFS_PASSWORD")}
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    proc = subprocess.Popen([*REPOFS, "init", str(tmp_path / "repo")], env={**env, "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_tty)
    os.close(slave)
    out = b""
    answers = [b"first\n", b"other\n", b"second\n", b"second\n"]

    def read_until(marker: bytes, count: int = 1) -> None:
        nonlocal out
        while out.count(marker) < count:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, out
            out += os.read(master, 4096)
    try:
        read_until(b"the data is lost")
        for i, answer in enumerate(answers):
            read_until(b"passphrase: ", i + 1)      # each prompt ends so: answer it once shown
            os.write(master, answer)
        proc.wait(timeout=120)
        try:
            while True:
                ready, _, _ = select.select([master], [], [], 1)
                if not ready:
                    break
                out += os.read(master, 4096)
        except OSError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "do not match; try again" in text and "created an encrypted repository" in text
    assert "first" not in text and "second" not in text          # never echoed
    ok = subprocess.run([*REPOFS, "generations", "-r", str(tmp_path / "repo")], capture_output=True, text=True,
                        env={**env, "REPOFS_PASSWORD": "second"}, timeout=120)
    assert ok.returncode == 0 and "no generations yet" in ok.stdout, ok.stderr
