"""Every command with every malformed input the suite knows: one line, a documented code.

A sweep over the real ``repofs`` process: each case prepares a repository, an input file or
a command line that is wrong in one way, and checks that the command ends with the exit code
docs/cli.md gives for that kind of failure, prints exactly one line ``repofs: error: …`` on
stderr, and never a traceback. Other tests check the behaviour behind each code; this one
checks that no path leaks an exception.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from fixtures_repo import CLI

USAGE, NO_REPOSITORY, REPOSITORY_EXISTS, BAD_PASSPHRASE, KEY_MISSING = 2, 3, 4, 5, 6
REPOSITORY_CHANGED = 15
DAMAGED, NOT_FOUND, SOURCE = 7, 8, 9
OUTPUT_EXISTS = 21
MiB = 1 << 20


@dataclass
class World:
    """A repository with one generation of a small image, and a scratch folder."""
    cli: CLI
    tmp: Path
    image: Path
    generation: str

    def write(self, name: str, data: bytes | str) -> Path:
        p = self.tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from fixtures_repo import cli_env
    tmp = tmp_path_factory.mktemp("sweep")
    repo = tmp / "repo"
    cli = CLI(repo, cli_env(tmp, repo))
    cli.run("init", "--chunk-size", str(64 * 1024))
    image = tmp / "disk.img"
    image.write_bytes(os.urandom(MiB) + bytes(MiB))
    gen = json.loads(cli.run("backup", f"file:{image}", "--vm", "pc", "--json").stdout)["generation"]
    return World(cli, tmp, image, gen)


def _copy_repo(w: World, name: str) -> Path:
    import shutil
    dst = w.tmp / name
    if not dst.exists():
        shutil.copytree(w.cli.repo, dst)
    return dst


# (case id, argv built from the world, expected code); argv may name a repository other than
# the world's with -r, or set up a file first.
Case = tuple[str, Callable[[World], list[str]], int]

CASES: list[Case] = [
    # command line
    ("unknown-command", lambda w: ["frobnicate"], USAGE),
    ("unknown-option", lambda w: ["generations", "--no-such-option"], USAGE),
    ("backup-unknown-source-kind", lambda w: ["backup", "disk:/x", "--vm", "pc"], USAGE),
    ("backup-file-without-vm", lambda w: ["backup", f"file:{w.image}"], USAGE),
    ("restore-bad-target", lambda w: ["restore", "pc", "--to-dir", str(w.tmp / "o1")], USAGE),
    ("restore-bad-format", lambda w: ["restore", "vm:pc", "--to-dir", str(w.tmp / "o2"), "--format", "qcow9"], USAGE),
    ("init-bad-encryption", lambda w: ["init", str(w.tmp / "r-enc"), "--encryption", "rot13"], USAGE),
    ("init-bad-chunk-size", lambda w: ["init", str(w.tmp / "r-cs"), "--chunk-size", "1000"], USAGE),
    ("mount-bad-option", lambda w: ["mount", str(w.tmp / "mnt-none"), "-o", "frob=1"], USAGE),
    # repositories
    ("no-repository", lambda w: ["generations", "-r", str(w.tmp / "nowhere")], NO_REPOSITORY),
    ("init-over-existing", lambda w: ["init", str(w.cli.repo)], REPOSITORY_EXISTS),
    ("wrong-passphrase", lambda w: ["generations", "--password-file", str(w.write("wrong-pw", "nope\n"))], BAD_PASSPHRASE),
    ("empty-password-file", lambda w: ["generations", "--password-file", str(w.write("empty-pw", "\n"))], BAD_PASSPHRASE),
    ("missing-password-file", lambda w: ["generations", "--password-file", str(w.tmp / "no-pw")], BAD_PASSPHRASE),
    ("key-store-missing", lambda w: _without_key(w), KEY_MISSING),
    ("config-junk", lambda w: _with_config(w, "junk-config", b"\x00\xffnot json"), DAMAGED),
    ("config-wrong-types", lambda w: _with_config(w, "typed-config", json.dumps(
        {"format": "repofs-repository", "version": 1, "id": 7, "chunk_size": "big", "cipher": "aes-256-gcm"}).encode()), DAMAGED),
    # names that are not there
    ("unknown-vm", lambda w: ["generations", "nosuchvm"], NOT_FOUND),
    ("unknown-generation", lambda w: ["restore", "vm:pc", "--to-dir", str(w.tmp / "o3"), "--generation", "1999-01-01T000000Z"], NOT_FOUND),
    ("files-unknown-vm", lambda w: ["files", "ls", "vm:nosuchvm"], NOT_FOUND),
    # sources
    ("source-missing", lambda w: ["backup", f"file:{w.tmp / 'absent.img'}", "--vm", "pc"], SOURCE),
    ("source-is-a-directory", lambda w: ["backup", f"file:{w.tmp}", "--vm", "pc"], SOURCE),
    ("vmdk-descriptor-junk", lambda w: ["backup", f"file:{w.write('bad.vmdk', '# Disk DescriptorFile' + chr(10) + 'version=1' + chr(10) + 'RW notanumber FLAT x 0' + chr(10))}", "--vm", "pc"], SOURCE),
    ("sparse-vmdk-junk-header", lambda w: ["backup", f"file:{w.write('sparse.vmdk', b'KDMV' + bytes(508))}", "--vm", "pc"], SOURCE),
    ("change-list-not-json", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--changed-extents", str(w.write("cl1.json", "[[0, 1"))], SOURCE),
    ("change-list-wrong-shape", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--changed-extents", str(w.write("cl2.json", '{"a": 1}'))], SOURCE),
    ("change-list-huge-float", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--changed-extents", str(w.write("cl3.json", "[[0, 1e400]]"))], SOURCE),
    ("change-list-booleans", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--changed-extents", str(w.write("cl4.json", "[[true, 4096]]"))], SOURCE),
    ("change-list-past-the-end", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--changed-extents", str(w.write("cl5.json", f"[[{4 * MiB}, 4096]]"))], SOURCE),
    ("change-list-deep-nesting", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--changed-extents", str(w.write("cl6.json", "[" * 100000 + "]" * 100000))], SOURCE),
    # the key store, written by someone without the key
    ("kdf-memory-bomb", lambda w: _with_kdf(w, "kdf-mem", memory_kib=1 << 40), KEY_MISSING),
    ("kdf-not-a-number", lambda w: _with_kdf(w, "kdf-str", time_cost="many"), KEY_MISSING),
    ("keystore-says-unencrypted", lambda w: _keystore_none(w), REPOSITORY_CHANGED),
    # life cycle and the other commands
    ("backup-time-not-a-time", lambda w: ["backup", f"file:{w.image}", "--vm", "pc", "--time", "yesterday-ish"], USAGE),
    ("forget-without-a-rule", lambda w: ["forget", "vm:pc"], USAGE),
    ("protect-unknown-generation", lambda w: ["protect", "vm:pc@1999-01-01T000000Z"], NOT_FOUND),
    ("check-bad-subset", lambda w: ["check", "--read-data-subset", "3/2"], USAGE),
    ("key-remove-unknown-slot", lambda w: ["key", "remove", "nosuchslot"], NOT_FOUND),
    ("serve-bad-listen-address", lambda w: ["serve", "vm:pc", "--listen", "nowhere:notaport"], USAGE),
    ("files-mount-with-a-path", lambda w: ["files", "mount", "vm:pc:disk/p1/etc", str(w.tmp / "fm")], USAGE),
    # naming VMs and generations (repofs/view/targets.py)
    ("target-without-vm-prefix", lambda w: ["stats", "pc@latest"], USAGE),
    ("target-empty-generation", lambda w: ["protect", "vm:pc@"], USAGE),
    ("protect-without-generation", lambda w: ["protect", "vm:pc"], USAGE),
    ("generations-with-a-generation", lambda w: ["generations", "vm:pc@latest"], USAGE),
    ("backup-vm-name-with-at", lambda w: ["backup", f"file:{w.image}", "--vm", "pc@2"], USAGE),
    ("backup-vm-name-with-colon", lambda w: ["backup", f"file:{w.image}", "--vm", "db:1"], USAGE),
    ("unknown-generation-prefix", lambda w: ["stats", "vm:pc@zzz"], NOT_FOUND),
    ("unknown-vm-close-name", lambda w: ["find", "x", "vm:pcc"], NOT_FOUND),
    # conventions
    ("repository-is-a-file", lambda w: ["check", "-r", str(w.write("not-a-repo", "x"))], NO_REPOSITORY),
    ("repository-below-a-file", lambda w: ["generations", "-r", str(w.write("plain", "x")) + "/repo"], NO_REPOSITORY),
    ("global-repository-is-a-file", lambda w: ["-r", str(w.write("not-a-repo2", "x")), "generations"], NO_REPOSITORY),
    ("chunk-size-not-a-size", lambda w: ["init", str(w.tmp / "r-cs2"), "--chunk-size", "lots"], USAGE),
    ("password-command-fails", lambda w: ["--password-command", "false", "generations"], BAD_PASSPHRASE),
    ("password-command-missing", lambda w: ["--password-command", "/nonexistent/pw", "generations"], BAD_PASSPHRASE),
    ("report-without-output", lambda w: ["report"], USAGE),
    ("report-over-existing-file", lambda w: ["report", "--html", str(w.write("exists.html", "mine"))], OUTPUT_EXISTS),
    ("restore-over-existing-file", lambda w: _over_existing(w), OUTPUT_EXISTS),
    ("find-bad-max-entries", lambda w: ["find", "x", "--max-entries", "0"], USAGE),
]


def _with_kdf(w: World, name: str, **kdf) -> list[str]:
    repo = _copy_repo(w, f"r-{name}")
    key = repo / "keys" / "repokey"
    doc = json.loads(key.read_text())
    for slot in doc.get("slots", [doc]):  # version 2 key stores hold slots, version 1 one KDF
        slot["kdf"].update(kdf)
    key.write_text(json.dumps(doc))
    return ["generations", "-r", str(repo)]


def _keystore_none(w: World) -> list[str]:
    repo = _copy_repo(w, "r-none")
    (repo / "keys" / "repokey").write_text(json.dumps({"version": 1, "cipher": "none", "id_key": "A" * 43 + "="}))
    return ["generations", "-r", str(repo)]

def _over_existing(w: World) -> list[str]:
    out = w.tmp / "o-exists"
    out.mkdir(exist_ok=True)
    (out / "disk.raw").write_bytes(b"keep")
    return ["restore", "vm:pc", "--to-dir", str(out)]


def _without_key(w: World) -> list[str]:
    repo = _copy_repo(w, "r-nokey")
    key = repo / "keys" / "repokey"
    if key.exists():
        key.unlink()
    return ["generations", "-r", str(repo)]


def _with_config(w: World, name: str, data: bytes) -> list[str]:
    repo = _copy_repo(w, f"r-{name}")
    (repo / "config").write_bytes(data)
    return ["generations", "-r", str(repo)]


@pytest.mark.parametrize("case_id,argv,code", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_ends_with_one_line_and_its_code(world: World, case_id: str, argv, code: int) -> None:
    proc = world.cli.run(*argv(world), check=False, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    errors = [line for line in err if line.startswith("repofs: error: ")]
    assert len(errors) == 1 and re.match(r"repofs: error: \S", errors[0]), proc.stderr
    assert len(errors[0]) < 400  # one line a person reads, not a dump
