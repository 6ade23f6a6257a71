"""The repofs command on an S3 repository (moto on loopback, tests/fixtures_s3.py): backup,
incremental, restore, check, mount and guest files work as on a local one; the store's
failures end in one line and a documented exit code; a store that goes away in the middle
of a backup or a restore loses nothing and the next run succeeds.
"""
from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_mount import build_image, mounted, MountSource, seeded_tree
from fixtures_repo import CLI, cli_env

CHUNK = 64 << 10


def s3_cli(tmp: Path, s3, location: str | None = None, *, locked: bool = False) -> CLI:
    location = location or s3.new_location(locked=locked)
    env = cli_env(tmp, location)       # type: ignore[arg-type]
    env.update(s3.env())
    return CLI(location, env)          # type: ignore[arg-type]


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    # progress lines (plain, periodic: stderr is not a terminal) may come before the error
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("repofs")]
    assert len(lines) == 1 and lines[0].startswith("repofs: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def random_image(path: Path, mib: int, seed: int, holes: bool = True) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(bytes(1 << 20) if holes and i % 5 == 4 else rng.randbytes(1 << 20))


@pytest.mark.slow
def test_backup_incremental_restore_check_mount_files_on_s3(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3)
    out = cli.run("init", "--chunk-size", str(CHUNK)).stdout
    assert "created an encrypted repository at s3://" in out
    tree_dir = tmp_path / "tree"
    tree = seeded_tree(tree_dir, seed=5)
    image = tmp_path / "disk0.img"
    build_image(image, tree_dir, seed=5)
    first = image.read_bytes()
    cli.run("backup", f"file:{image}", "--vm", "vm1")
    # change 3 blocks, back up again: an incremental that stores only what changed
    with open(image, "r+b") as f:
        for off in (3 << 20, 17 << 20, 30 << 20):
            f.seek(off)
            f.write(random.Random(off).randbytes(4096))
    second = image.read_bytes()
    report = json.loads(cli.run("backup", f"file:{image}", "--vm", "vm1", "--json").stdout)
    assert 0 < sum(d["new_chunks"] for d in report["disks"]) <= 6, report
    gens = json.loads(cli.run("generations", "--json").stdout)
    assert [g["vm"] for g in gens] == ["vm1", "vm1"]
    for gen, expected in zip(gens, (first, second), strict=True):
        out = tmp_path / f"out-{gen['generation']}"
        cli.run("restore", "vm:vm1", "--to-dir", str(out), "--generation", gen["generation"])
        assert (out / "disk0.raw").read_bytes() == expected
    assert "OK: 2 generations" in cli.run("check", "--read-data").stdout
    listing = cli.run("files", "ls", "vm:vm1@latest:disk0/p1/d1/s1").stdout
    assert "f1.dat" in listing
    got = tmp_path / "f1.dat"
    cli.run("files", "get", "vm:vm1:disk0/p1/d1/s1/f1.dat", str(got))
    assert got.read_bytes() == tree["d1/s1/f1.dat"]
    source = MountSource(image, tree, cli.repo, gens[1]["generation"],
                         Path(cli.env["REPOFS_PASSWORD_FILE"]), tmp_path)
    with mounted(source, tmp_path / "mnt") as m:
        flat = m.path / "vm1" / gens[1]["generation"] / "disk0-flat.vmdk"
        assert flat.read_bytes() == second


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_mount_streams_a_disk_larger_than_its_cache_in_256_mib(tmp_path: Path, s3) -> None:
    """Default settings on object storage: a sequential read through the mount of a disk
    with more data than the chunk cache holds (read-ahead deepening while the reader waits,
    fetches in flight) gives the disk byte for byte, and the daemon's peak resident memory
    stays within 256 MiB (docs/mount.md)."""
    cli = s3_cli(tmp_path, s3)
    cli.run("init")                                    # the default 1 MiB chunks
    image = tmp_path / "big.img"
    random_image(image, 320, seed=11)                  # 256 MiB of data, 64 of holes
    cli.run("backup", f"file:{image}", "--vm", "big")
    gen = json.loads(cli.run("generations", "--json").stdout)[0]["generation"]
    source = MountSource(image, {}, cli.repo, gen, Path(cli.env["REPOFS_PASSWORD_FILE"]), tmp_path)
    with mounted(source, tmp_path / "mnt") as m, open(image, "rb") as want:
        with open(m.path / "big" / gen / "big-flat.vmdk", "rb", buffering=0) as got:
            at = 0
            while True:
                data = got.read(1 << 20)
                assert data == want.read(1 << 20), f"differs in the MiB at {at}"
                if not data:
                    break
                at += len(data)
        assert at == image.stat().st_size
        peak = _peak_rss(m.proc.pid)
    assert peak <= 256 << 20, f"peak RSS {peak >> 20} MiB"


def test_wrong_credentials_are_one_line(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3)
    cli.run("init")
    cli.env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-key-0123456789"
    line = one_error_line(cli.run("generations", check=False), 17)
    assert "refused" in line and "not-the-secret" not in line
    cli.env["AWS_ACCESS_KEY_ID"] = "AKIAUNKNOWNUNKNOWN00"
    one_error_line(cli.run("backup", "file:/dev/null", "--vm", "x", check=False), 17)


def test_missing_bucket_and_no_repository(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3, "s3://no-such-bucket-here/r")
    line = one_error_line(cli.run("generations", check=False), 3)
    assert "no bucket 'no-such-bucket-here'" in line
    empty = s3_cli(tmp_path, s3)
    assert "no repository at s3://" in one_error_line(empty.run("generations", check=False), 3)
    bad = s3_cli(tmp_path, s3, "s3://x/r")
    one_error_line(bad.run("generations", check=False), 2)


def test_unreachable_store_is_one_line(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3)
    cli.run("init")
    assert s3.gate is not None or pytest.skip("needs the loopback server")
    s3.gate.close()
    line = one_error_line(cli.run("generations", check=False), 16)
    assert "cannot reach the S3 endpoint" in line


def _wait_for_objects(s3, location: str, prefix: str, count: int, proc: subprocess.Popen) -> None:
    bucket, _, base = location[len("s3://"):].partition("/")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{base}/{prefix}", MaxKeys=count)
        if page.get("KeyCount", 0) >= count:
            return
        assert proc.poll() is None, "the command ended before the store was stopped"
        time.sleep(0.05)
    raise AssertionError("the command wrote nothing")


@pytest.mark.slow
def test_store_stopped_during_backup_then_next_backup_succeeds(tmp_path: Path, s3) -> None:
    if s3.gate is None:
        pytest.skip("needs the loopback server")
    cli = s3_cli(tmp_path, s3)
    cli.run("init", "--chunk-size", str(CHUNK))
    small = tmp_path / "small.img"
    random_image(small, 4, seed=1)
    cli.run("backup", f"file:{small}", "--vm", "vm0")
    image = tmp_path / "disk0.img"
    random_image(image, 40, seed=2)
    proc = subprocess.Popen([*__import__("fixtures_repo").REPOFS, "backup", f"file:{image}", "--vm", "vm1"],
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_objects(s3, cli.repo, "chunks/", 40, proc)
    s3.gate.close()
    _out, err = proc.communicate(timeout=300)
    one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, _out, err), 16)
    s3.gate.open()
    gens = json.loads(cli.run("generations", "--json").stdout)
    assert [g["vm"] for g in gens] == ["vm0"]           # nothing half-written became a generation
    assert "OK: 1 generations" in cli.run("check").stdout
    cli.run("backup", f"file:{image}", "--vm", "vm1")   # the lock of the failed run is stale
    out = tmp_path / "out"
    cli.run("restore", "vm:vm1", "--to-dir", str(out))
    assert (out / "disk0.raw").read_bytes() == image.read_bytes()


def test_store_stopped_during_restore_leaves_no_file_then_restore_succeeds(tmp_path: Path, s3) -> None:
    if s3.gate is None:
        pytest.skip("needs the loopback server")
    cli = s3_cli(tmp_path, s3)
    cli.run("init", "--chunk-size", str(CHUNK))
    image = tmp_path / "disk0.img"
    random_image(image, 64, seed=3)
    cli.run("backup", f"file:{image}", "--vm", "vm1")
    out = tmp_path / "out"
    proc = subprocess.Popen([*__import__("fixtures_repo").REPOFS, "restore", "vm:vm1", "--to-dir", str(out)],
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def partials() -> list[Path]:   # the restore's private temporary name (repofs/view/export.py)
        return list(out.glob(".disk0.raw.*.repofs-partial")) if out.exists() else []
    deadline = time.monotonic() + 120
    while not any(p.stat().st_blocks > 0 for p in partials() if p.exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "restore ended too early"
        time.sleep(0.01)
    s3.gate.close()
    _out, err = proc.communicate(timeout=300)
    one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, _out, err), 16)
    assert not (out / "disk0.raw").exists() and not partials()
    s3.gate.open()
    cli.run("restore", "vm:vm1", "--to-dir", str(out))
    assert (out / "disk0.raw").read_bytes() == image.read_bytes()


def test_indexes_and_manifests_are_read_once_per_host(tmp_path: Path, s3, monkeypatch) -> None:
    from format.location import open_backend
    monkeypatch.setenv("REPOFS_CACHE_DIR", str(tmp_path / "cache"))
    location = s3.new_location()
    writer = open_backend(location)
    name = "manifests/" + "ab" * 16
    writer.put(name, b"sealed manifest bytes")
    writer.put("chunks/ab/" + "ab" * 32, b"chunk")
    reader = open_backend(location)
    assert reader.get(name) == b"sealed manifest bytes"
    bucket, _, prefix = location[len("s3://"):].partition("/")
    s3.client().delete_object(Bucket=bucket, Key=f"{prefix}/{name}")
    s3.client().delete_object(Bucket=bucket, Key=f"{prefix}/chunks/ab/{'ab' * 32}")
    assert open_backend(location).get(name) == b"sealed manifest bytes"   # from this host's cache
    from format.errors import ObjectMissing
    with pytest.raises(ObjectMissing):
        open_backend(location).get(f"chunks/ab/{'ab' * 32}")              # chunks never cached
    monkeypatch.setenv("REPOFS_CACHE_DIR", "off")
    with pytest.raises(ObjectMissing):
        open_backend(location).get(name)


def test_endpoint_option_and_init_over_a_repository(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3)
    endpoint = cli.env.pop("AWS_ENDPOINT_URL")
    cli.run("--s3-endpoint", endpoint, "init")
    assert cli.run("--s3-endpoint", endpoint, "generations", "--json").stdout.strip() == "[]"
    cli.env.pop("REPOFS_PASSWORD_FILE")      # refused before any passphrase is asked for
    line = one_error_line(cli.run("--s3-endpoint", endpoint, "init", check=False), 4)
    assert "already exists" in line


def test_uploads_of_a_chunk_do_not_wait_for_100_continue(tmp_path: Path, s3) -> None:
    """A chunk's PUT sends its body at once (no ``Expect: 100-continue``: that wait costs a
    round trip per upload); a body of 2 MiB or more still asks first. Both arrive whole."""
    from format.location import open_backend
    backend = open_backend(s3.new_location())
    sent: dict[str, bytes | None] = {}

    def record(request, **_kwargs) -> None:    # registered after the backend's own handler
        expect = request.headers.get("Expect")
        sent[request.url.rpartition("/")[2]] = expect.encode() if isinstance(expect, str) else expect
    backend.client.meta.events.register("before-send.s3.PutObject", record)
    small, large = random.Random(1).randbytes(1 << 20), random.Random(2).randbytes(3 << 20)
    backend.put("chunks/ab/" + "ab" * 32, small)
    backend.put("chunks/cd/" + "cd" * 32, large)
    backend.put("chunks/ef/" + "ef" * 32, small, sync=False)
    backend.sync()
    assert sent == {"ab" * 32: None, "cd" * 32: b"100-continue", "ef" * 32: None}
    again = open_backend(backend.location)
    assert again.get("chunks/ab/" + "ab" * 32) == small
    assert again.get("chunks/cd/" + "cd" * 32) == large
    assert again.get("chunks/ef/" + "ef" * 32) == small


@pytest.mark.parametrize("locked", [False, True], ids=["plain", "immutable"])
def test_parallel_uploads_read_the_retention_once(tmp_path: Path, s3, locked: bool) -> None:
    """The first uploads of a backup all need the repository's retention at once: one GET of
    the ``object-lock`` object answers them all (each upload thread used to send its own)."""
    from format.location import open_backend
    from format.s3backend import RETENTION_OBJECT, Retention
    location = s3.new_location(locked=locked)
    if locked:
        open_backend(location).enable_retention(Retention("GOVERNANCE", 1))
    backend = open_backend(location)
    asked: list[str] = []
    backend.client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_kw: asked.append(params["Key"]))
    data = {f"chunks/{i:02x}/{i:02x}" + "0" * 62: random.Random(i).randbytes(4096) for i in range(48)}
    for name, body in data.items():
        backend.put(name, body, sync=False)
    backend.sync()
    assert [key for key in asked if key.endswith(RETENTION_OBJECT)] == [backend.key(RETENTION_OBJECT)]
    if locked:
        name = next(iter(data))
        assert backend.retained_until(name) is not None
    assert all(open_backend(location).get(name) == body for name, body in data.items())
