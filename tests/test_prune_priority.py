"""``repofs prune`` runs below backups on the CPU (niceness 10 by default, ``--nice N``), so
that a backup beside it keeps its speed (docs/performance.md, "Backups beside a prune"); a
bad ``--nice`` is a usage error.

The prune is a real process held in its last step by a backup lease this test owns
(``--wait``), so its priority is read while it certainly runs, not raced.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from format.repository import Repository

ROOT = Path(__file__).resolve().parent.parent


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])      # field 19: nice


def _prune(repo: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPOFS_REPOSITORY": str(repo),
           "REPOFS_SECURITY_DIR": str(repo.parent / "security")}
    return subprocess.Popen([sys.executable, "-m", "repofs.cli", "prune", "--wait", "300", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("args, expected", [((), 10), (("--nice", "15"), 15)])
def test_prune_runs_at_a_lowered_priority(tmp_path: Path, args: tuple[str, ...], expected: int) -> None:
    if os.getpriority(os.PRIO_PROCESS, 0) >= expected:
        pytest.skip("this test process is already that nice")
    repo = tmp_path / "repo"
    r = Repository.init(repo, None, encrypted=False, chunk_size=64 << 10)
    lease = r.lease("backup", "vm").begin()     # the prune waits for this backup to end
    proc = _prune(repo, *args)
    try:
        seen = None
        while proc.poll() is None and seen != expected:
            seen = _nice(proc.pid)
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert seen == expected
    finally:
        lease.end()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def test_a_nice_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    Repository.init(repo, None, encrypted=False, chunk_size=64 << 10)
    proc = _prune(repo, "--nice", "20")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    [line] = err.splitlines()
    assert line.startswith("repofs: error: ") and "--nice must be between 0 and 19" in line
