"""The repository life-cycle tests' harness: the real ``repofs`` entry point run in-process on
a small unencrypted repository (64 KiB chunks)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

from fixtures_repo import CLI, cli_env


class InProcessCLI(CLI):
    """The real ``repofs`` entry point (``main``: parsing, errors, exit codes) called in this
    process with the repository's environment: a command costs milliseconds instead of an
    interpreter start, which keeps these tests inside CI's budget. The mount test and the
    prune tests use real separate processes."""

    def run(self, *args: str, check: bool = True, **_kw) -> subprocess.CompletedProcess:
        from repofs.cli.app import main
        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main(list(args))
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 0
        finally:
            os.environ.clear()
            os.environ.update(saved)
        proc = subprocess.CompletedProcess(["repofs", *args], code, out.getvalue(), err.getvalue())
        if check and code != 0:
            raise AssertionError(f"repofs {' '.join(args)} exited {code}:\n{proc.stdout}\n{proc.stderr}")
        return proc


def small_cli(tmp_path: Path) -> CLI:
    repo = tmp_path / "repo"
    env = cli_env(tmp_path, repo)
    env.pop("REPOFS_PASSWORD_FILE")  # an unencrypted repository is refused when a passphrase is given
    c = InProcessCLI(repo, env)
    c.run("init", "--chunk-size", str(64 << 10), "--encryption", "none")   # no KDF per command: fast
    return c


