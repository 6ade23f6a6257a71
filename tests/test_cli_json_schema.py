"""Every command's ``--json`` output against docs/cli-schema.json (the shapes docs/cli.md
promises: sizes in bytes, times as ISO 8601 UTC with ``time_ns``, ids as names and hex).

One repository with a guest disk (GPT + ext4) backed up twice, then each command run for
real with ``--json`` and its output validated against ``#/$defs/commands/<command>``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from fixtures_repo import CLI, ROOT, cli_env, make_ext4_image

SCHEMA = json.loads((ROOT / "docs" / "cli-schema.json").read_text())
MiB = 1 << 20


def validate(command: str, doc: object) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    schema = {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/commands/{command}"}
    jsonschema.Draft202012Validator(schema).validate(doc)


class World:
    def __init__(self, cli: CLI, tmp: Path, gens: list[str]):
        self.cli, self.tmp, self.gens = cli, tmp, gens

    def json(self, *args: str) -> object:
        return json.loads(self.cli.run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("schema")
    repo = tmp / "repo"
    cli = CLI(repo, cli_env(tmp, repo))
    cli.run("init", "--chunk-size", "64K")
    tree = tmp / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("web01\n")
    (tree / "notes.txt").write_bytes(os.urandom(3000))
    image = tmp / "web01.img"
    make_ext4_image(image, 16, tree)
    gens = [json.loads(cli.run("backup", f"file:{image}", "--vm", "web01", "--json").stdout)["generation"]]
    (tree / "notes.txt").write_bytes(os.urandom(5000))
    make_ext4_image(image, 16, tree)
    gens.append(json.loads(cli.run("backup", f"file:{image}", "--vm", "web01", "--json",
                                   "--time", "2030-01-01T00:00:00Z").stdout)["generation"])
    return World(cli, tmp, gens)


def test_backup_json_matches_the_schema(world: World) -> None:
    image = world.tmp / "web01.img"
    validate("backup", world.json("backup", f"file:{image}", "--vm", "other"))
    validate("backup", world.json("backup", "--dry-run", f"file:{image}", "--vm", "other"))


@pytest.mark.parametrize("argv", [
    ("generations",), ("generations", "vm:web01"), ("check",), ("check", "--read-data"),
    ("forget", "--keep-last", "1", "--dry-run"), ("prune", "--dry-run"), ("stats",), ("stats", "vm:web01@latest"),
    ("find", "*.txt"), ("find", "etc/host*", "vm:web01"), ("report",),
], ids=lambda a: " ".join(a))
def test_command_json_matches_the_schema(world: World, argv: tuple[str, ...]) -> None:
    validate(argv[0], world.json(*argv))


def test_generation_commands_json_matches_the_schema(world: World) -> None:
    first = world.gens[0]
    validate("protect", world.json("protect", f"vm:web01@{first}"))
    validate("unprotect", world.json("unprotect", f"vm:web01@{first}"))
    validate("diff", world.json("diff", f"vm:web01@{first}", "latest"))
    out = world.tmp / "restored"
    validate("restore", world.json("restore", f"vm:web01@{first}", "--to-dir", str(out)))
    validate("files ls", world.json("files", "ls", "vm:web01"))
    validate("files stat", world.json("files", "stat", "vm:web01:web01/p1/etc/hostname"))
    validate("key list", world.json("key", "list"))


def test_find_reports_each_generation_with_its_size(world: World) -> None:
    doc = world.json("find", "notes.txt", "vm:web01")
    sizes = {g["generation"]: [m["size_bytes"] for m in g["matches"]] for g in doc["generations"]}
    assert sizes == {world.gens[0]: [3000], world.gens[1]: [5000]}
    assert doc["generations"][0]["matches"][0]["path"] == "web01/p1/notes.txt"


def test_times_sizes_and_ids_share_one_shape_across_commands(world: World) -> None:
    """The same generation reads the same in generations, stats, protect and forget."""
    gens = {g["manifest"]: g for g in world.json("generations")}
    stats = world.json("stats")
    for g in stats["vms"][0]["generations"]:
        mine = gens[g["manifest"]]
        assert (g["time_ns"], g["generation"], g["data_bytes"]) == \
            (mine["time_ns"], mine["generation"], mine["logical_bytes"])
    kept = world.json("forget", "--keep-last", "1", "--dry-run")["vms"][0]["keep"][0]
    assert (kept["time"], kept["time_ns"]) == (gens[kept["manifest"]]["time"], gens[kept["manifest"]]["time_ns"])
