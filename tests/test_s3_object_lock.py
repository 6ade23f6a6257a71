"""Immutability: an S3 repository created with ``--immutable`` locks what generations are
made of (S3 Object Lock, COMPLIANCE mode), so that the repository's own credentials — what
ransomware on the backup host holds — can neither delete nor overwrite a generation before
its retention ends; a later backup extends the retention of the chunks it reuses; deletion
(what prune does) leaves locked objects and reports them with their date.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import botocore.exceptions
import pytest

from format.errors import ObjectLocked
from format.immutability import delete_unless_locked
from format.location import open_backend
from test_s3 import one_error_line, random_image, s3_cli

CHUNK = 64 << 10
DAYS = 2


def _split(location: str) -> tuple[str, str]:
    bucket, _, prefix = location[len("s3://"):].partition("/")
    return bucket, prefix + "/"


def test_immutable_needs_a_bucket_with_object_lock(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3)
    line = one_error_line(cli.run("init", "--immutable", "7", check=False), 17)
    assert "Object Lock" in line
    local = s3_cli(tmp_path, s3, str(tmp_path / "local"))
    one_error_line(local.run("init", "--immutable", "7", check=False), 2)


def test_locked_generations_survive_the_repositorys_own_credentials(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3, locked=True)
    assert "objects locked 2 days (compliance)" in cli.run(
        "init", "--immutable", str(DAYS), "--chunk-size", str(CHUNK)).stdout
    image = tmp_path / "disk0.img"
    random_image(image, 4, seed=21)
    started = dt.datetime.now(dt.timezone.utc)
    cli.run("backup", f"file:{image}", "--vm", "vm1")
    bucket, prefix = _split(str(cli.repo))
    client = s3.client()          # the very key repofs writes with
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    kinds = ("chunks/", "indexes/", "manifests/", "config", "keys/")
    generation_objects = [k for k in keys if k[len(prefix):].startswith(kinds)]
    assert not [k for k in keys if k[len(prefix):].startswith("locks/")]   # the VM's lock was released
    for key in generation_objects:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] >= started + dt.timedelta(days=DAYS)
    chunk = next(k for k in generation_objects if "/chunks/" in f"/{k[len(prefix):]}")
    manifest = next(k for k in generation_objects if k[len(prefix):].startswith("manifests/"))
    original = client.get_object(Bucket=bucket, Key=chunk)["Body"].read()
    for key in (chunk, manifest):
        version = client.head_object(Bucket=bucket, Key=key)["VersionId"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        assert e.value.response["Error"]["Code"] == "AccessDenied"
    # an overwrite only stacks a new version on top; the locked one stays, byte for byte
    first_version = client.head_object(Bucket=bucket, Key=chunk)["VersionId"]
    client.put_object(Bucket=bucket, Key=chunk, Body=b"ransom note")
    kept = client.get_object(Bucket=bucket, Key=chunk, VersionId=first_version)["Body"].read()
    assert kept == original
    # repofs's own deletion (prune's) refuses and says so
    backend = open_backend(str(cli.repo))
    name = manifest[len(prefix):]
    with pytest.raises(ObjectLocked):
        backend.delete(name)
    deleted, locked = delete_unless_locked(backend, [name, "manifests/" + "0" * 32])
    assert deleted == 1 and [k.name for k in locked] == [name]
    assert locked[0].until is not None and locked[0].until >= started + dt.timedelta(days=DAYS)
    assert cli.run("generations", "--json").stdout.count('"vm": "vm1"') == 1


def test_a_later_backup_extends_the_retention_of_reused_chunks(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3, locked=True)
    cli.run("init", "--immutable", str(DAYS), "--chunk-size", str(CHUNK))
    image = tmp_path / "disk0.img"
    random_image(image, 2, seed=22)
    cli.run("backup", f"file:{image}", "--vm", "vm1")
    bucket, prefix = _split(str(cli.repo))
    client = s3.client()
    chunks = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "chunks/")["Contents"]]
    before = {k: client.head_object(Bucket=bucket, Key=k)["ObjectLockRetainUntilDate"] for k in chunks}
    second_start = dt.datetime.now(dt.timezone.utc)
    report = json.loads(cli.run("backup", f"file:{image}", "--vm", "vm1", "--json").stdout)
    assert sum(d["new_chunks"] for d in report["disks"]) == 0          # every chunk reused
    for key in chunks:
        after = client.head_object(Bucket=bucket, Key=key)["ObjectLockRetainUntilDate"]
        assert after > before[key] and after >= second_start + dt.timedelta(days=DAYS)
