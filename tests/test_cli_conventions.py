"""The conventions an operator brings: one way to name VMs and generations, options in the
usual places, human output, and no data put at risk by a typo.

Each test runs the real ``repofs`` process against a real repository.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_repo import CLI, REPOFS, cli_env

MiB = 1 << 20


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("conv")
    repo = tmp / "repo"
    cli = CLI(repo, cli_env(tmp, repo))
    cli.run("init", "--chunk-size", "64K")
    image = tmp / "web01.img"
    image.write_bytes(os.urandom(MiB) + bytes(MiB) + os.urandom(MiB // 2))
    gens = []
    for when in ("2025-01-31T02:00:00Z", "2025-02-28T02:00:00Z", "2025-03-31T02:00:00Z"):
        gens.append(json.loads(cli.run("backup", f"file:{image}", "--vm", "web01", "--time", when,
                                       "--json").stdout))
    return cli, tmp, image, gens


def _objects(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}


# -- data at risk -------------------------------------------------------------------------

def test_backup_dry_run_of_files_writes_nothing(world) -> None:
    cli, tmp, image, _gens = world
    before = _objects(cli.repo)
    out = cli.run("backup", "--dry-run", f"file:{image}", "--vm", "newvm")
    assert "dry run, nothing written" in out.stdout and "would read" in out.stdout
    assert _objects(cli.repo) == before
    assert cli.run("generations", "vm:newvm", check=False).returncode == 8


def test_restore_to_dir_refuses_to_overwrite_and_never_follows_a_planted_symlink(world) -> None:
    cli, tmp, image, gens = world
    out = tmp / "out-refuse"
    out.mkdir()
    kept = out / "web01.raw"
    kept.write_bytes(b"precious")
    victim = tmp / "victim"
    (out / "link").mkdir()
    os.symlink(victim, out / "link" / "web01.raw")
    proc = cli.run("restore", "vm:web01", "--to-dir", str(out), check=False)
    assert proc.returncode == 21 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert kept.read_bytes() == b"precious"
    proc = cli.run("restore", "vm:web01", "--to-dir", str(out / "link"), check=False)
    assert proc.returncode == 21 and not victim.exists()
    # --force replaces the name itself (the symlink), never what it points to
    cli.run("restore", "vm:web01", "--to-dir", str(out / "link"), "--force")
    assert not victim.exists() and not (out / "link" / "web01.raw").is_symlink()
    restored = out / "link" / "web01.raw"
    assert restored.read_bytes() == image.read_bytes()
    assert restored.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (out / "link").iterdir()) == ["web01.raw"]   # no temporary left


def test_a_repository_path_that_is_a_file_is_not_a_damaged_repository(world) -> None:
    cli, tmp, _image, _gens = world
    not_repo = tmp / "typo.txt"
    not_repo.write_text("x")
    for argv in (["check"], ["generations"]):
        proc = cli.run(*argv, "-r", str(not_repo), check=False)
        assert proc.returncode == 3 and "is a file, not a repository" in proc.stderr, proc.stderr


def test_check_says_how_much_is_unreferenced(world) -> None:
    cli, _tmp, _image, _gens = world
    doc = json.loads(cli.run("check", "--json").stdout)
    assert doc["unreferenced_chunks"] == 0 and doc["unreferenced_bytes"] == 0


# -- one way to name a VM and a generation -------------------------------------------------

def test_generations_are_named_by_name_prefix_id_prefix_and_latest(world) -> None:
    cli, tmp, image, gens = world
    names = [g["generation"] for g in gens]

    def restored(target: str) -> str:
        doc = json.loads(cli.run("stats", target, "--json").stdout)
        return doc["vms"][0]["generations"][0]["generation"]
    assert restored("vm:web01@latest") == names[-1]
    assert restored(f"vm:web01@{names[0]}") == names[0]
    assert restored("vm:web01@2025-02") == names[1]                       # unique name prefix
    assert restored(f"vm:web01@{gens[0]['manifest'][:8]}") == names[0]    # unique id prefix
    for command in (["restore", "vm:web01@2025-02", "--to-dir", str(tmp / "pfx")],
                    ["files", "ls", "vm:web01@2025-02"], ["protect", "vm:web01@2025-02"],
                    ["unprotect", "vm:web01@2025-02"], ["diff", "vm:web01@2025-01", "2025-02"]):
        cli.run(*command)


def test_an_ambiguous_prefix_lists_the_candidates(world) -> None:
    cli, *_ = world
    proc = cli.run("restore", "vm:web01@2025", "--to-dir", "/nonexistent", check=False)
    assert proc.returncode == 8 and "ambiguous" in proc.stderr and "2025-01-31T020000Z" in proc.stderr


def test_a_mistyped_vm_or_generation_gets_the_closest_names(world) -> None:
    cli, *_ = world
    for argv in (["generations", "vm:web1"], ["restore", "vm:webo1", "--to-dir", "/nonexistent"],
                 ["files", "ls", "vm:web1"], ["stats", "vm:wb01"], ["forget", "vm:web-01", "--keep-last", "1"]):
        proc = cli.run(*argv, check=False)
        assert proc.returncode == 8, (argv, proc.stderr)
        assert "did you mean vm:web01" in proc.stderr and "repofs generations" in proc.stderr, proc.stderr
    proc = cli.run("stats", "vm:web01@2025-13", check=False)
    assert proc.returncode == 8 and "repofs generations vm:web01" in proc.stderr


@pytest.mark.parametrize("name", ["a@b", "db:prod", "tab\there", " lead"])
def test_names_the_syntax_cannot_carry_are_refused_at_backup(world, name: str) -> None:
    cli, tmp, image, _gens = world
    before = _objects(cli.repo)
    proc = cli.run("backup", f"file:{image}", "--vm", name, check=False)
    assert proc.returncode == 2 and proc.stderr.count("repofs: error:") == 1, proc.stderr
    assert _objects(cli.repo) == before


# -- conventions ---------------------------------------------------------------------------

def test_bare_command_version_and_short_help(world) -> None:
    cli, *_ = world
    bare = cli.run()
    assert bare.returncode == 0 and "Usage: repofs" in bare.stdout and "backup" in bare.stdout
    version = cli.run("--version")
    assert re.fullmatch(r"repofs \d+\.\d+\.\d+\S*\n", version.stdout)
    assert cli.run("restore", "-h").stdout == cli.run("restore", "--help").stdout


def test_repository_before_or_after_the_command(world) -> None:
    cli, tmp, _image, _gens = world
    env = {k: v for k, v in cli.env.items() if k != "REPOFS_REPOSITORY"}
    elsewhere = CLI(cli.repo, env)
    before = elsewhere.run("-r", str(cli.repo), "generations", "--json").stdout
    after = elsewhere.run("generations", "-r", str(cli.repo), "--json").stdout
    assert json.loads(before) == json.loads(after) and len(json.loads(before)) >= 3


def test_password_command(world) -> None:
    cli, tmp, _image, _gens = world
    env = {k: v for k, v in cli.env.items() if k != "REPOFS_PASSWORD_FILE"}
    pw = cli.env["REPOFS_PASSWORD_FILE"]
    ok = CLI(cli.repo, env).run("--password-command", f"cat {pw}", "generations", "--json")
    assert len(json.loads(ok.stdout)) >= 3
    bad = CLI(cli.repo, env).run("--password-command", "false", "generations", check=False)
    assert bad.returncode == 5 and "exited with status 1" in bad.stderr


def test_sizes_are_accepted_with_units(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    cli = CLI(repo, cli_env(tmp_path, repo))
    cli.run("init", "--chunk-size", "1M")
    config = json.loads((repo / "config").read_text())
    assert config["chunk_size"] == 1 << 20
    proc = cli.run("init", str(tmp_path / "r2"), "--chunk-size", "1Q", check=False)
    assert proc.returncode == 2 and "--chunk-size" in proc.stderr


def test_short_options_mean_one_thing_everywhere() -> None:
    from repofs.cli.app import command
    meaning: dict[str, set[str]] = {}

    def walk(cmd, path: str) -> None:
        for p in cmd.params:
            longs = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
            for short in (o for o in p.opts if re.fullmatch(r"-\w", o)):
                meaning.setdefault(short, set()).update(longs[:1] or [p.name])
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")
    walk(command(), "repofs")
    clashes = {k: v for k, v in meaning.items() if len(v) > 1}
    assert not clashes, clashes


def test_help_shows_no_internal_type_names_and_keeps_brackets() -> None:
    from repofs.cli.app import command

    def walk(cmd, argv: list[str]):
        yield argv
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*argv, name])
    import click  # noqa: F401  (typer's own copy is what renders; we read its text)
    for argv in walk(command(), []):
        proc = subprocess.run([*REPOFS, *argv, "--help"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert proc.returncode == 0, (argv, proc.stderr)
        assert not re.search(r"<(str|int|float|bool|list\[str\])>|\{\S+\}", proc.stdout), (argv, proc.stdout)
    files_ls = subprocess.run([*REPOFS, "files", "ls", "-h"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert "vm:NAME[@GEN][:DISK[/VOLUME[/path]]]" in files_ls.stdout


def test_generations_is_a_table_and_an_empty_repository_says_so(world, tmp_path: Path) -> None:
    cli, _tmp, _image, gens = world
    out = cli.run("generations").stdout.splitlines()
    assert out[0].split() == ["VM", "GENERATION", "TIME", "(UTC)", "KIND", "LOGICAL", "NEW", "STORED", "FLAGS"]
    latest = [line for line in out if gens[-1]["generation"] in line][0]
    assert f"{gens[-1]['generation']} *" in latest and "1.5 MiB" in latest   # zeros are holes
    repo = tmp_path / "empty"
    empty = CLI(repo, cli_env(tmp_path, repo))
    empty.run("init")
    assert "no generations yet" in empty.run("generations").stdout


def test_backup_ends_with_a_summary(world) -> None:
    cli, tmp, image, _gens = world
    out = cli.run("backup", f"file:{image}", "--vm", "summary").stdout
    assert "kind:        full (first backup of this VM)" in out
    assert "read:        2.5 MiB" in out and "stored new:" in out and "dedup:" in out and "compression:" in out
    assert re.search(r"duration: +\d+\.\ds at [\d.]+ [KMG]?i?B/s", out), out
    assert cli.run("backup", f"file:{image}", "--vm", "summary", "--quiet").stdout == ""


def test_sigterm_has_its_own_exit_code(world) -> None:
    """A process stopped by SIGTERM (here waiting for its --password-command) exits 143."""
    cli, tmp, _image, _gens = world
    env = {k: v for k, v in cli.env.items() if k != "REPOFS_PASSWORD_FILE"}
    marker = tmp / "asked"
    # the sleep must not hold the test's stderr pipe: communicate() would wait for its end
    proc = subprocess.Popen([*REPOFS, "--password-command", f"sh -c 'touch {marker}; exec sleep 60 2>/dev/null'",
                             "generations"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if marker.exists():
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "repofs: error: terminated" in err, err
    assert "Traceback" not in err


def test_lock_wait_retries_while_another_backup_holds_the_vm(world) -> None:
    """The lock is held here, in the test's process, until the CLI says it waits for it."""
    from format.repository import Repository
    cli, tmp, image, _gens = world
    repository = Repository.open(str(cli.repo), Path(cli.env["REPOFS_PASSWORD_FILE"]).read_text().rstrip("\n").encode())
    with repository.vm_lock("locked"):
        refused = cli.run("backup", f"file:{image}", "--vm", "locked", check=False)
        assert refused.returncode == 11 and "another backup of locked" in refused.stderr
        proc = subprocess.Popen([*REPOFS, "backup", f"file:{image}", "--vm", "locked", "--lock-wait", "10m"],
                                env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            assert line.startswith("waiting up to 10m00s for another backup of locked"), line
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "generation" in out


def test_mount_refuses_a_non_empty_folder(world) -> None:
    cli, tmp, _image, _gens = world
    folder = tmp / "full"
    folder.mkdir()
    (folder / "mine").write_text("x")
    proc = cli.run("mount", str(folder), check=False)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert (folder / "mine").read_text() == "x"
