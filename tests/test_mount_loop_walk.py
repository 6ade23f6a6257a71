"""A guest file system loop-mounted over a plain mount's flat file (``losetup -r`` on the
partition's range, ext4 ``ro,noload``) is walked from the metadata copies alone: with every
chunk of the disk's own that is not also a copy removed from the repository, ``find`` still
lists exactly the guest's tree — the kernel's reads (superblock, descriptors, inode tables
with their read-ahead, directories) all fall inside the copied ranges, so a cold walk costs
no chunk of the disk's data. Root only (loop devices, kernel mounts)."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from fixtures_mount import (DISK, PART_OFFSET, PASSPHRASE, VM, MountSource, backup_image, build_image,
                            make_repo, mounted, needs_root_tools)
from format.repository import Repository, chunk_name
from repofs.view.tree import RepositoryView


@pytest.fixture(scope="module")
def walk_source(tmp_path_factory: pytest.TempPathFactory) -> MountSource:
    """A guest shaped like a walk's worst case: many small directories (one block each, made one
    after another), each followed on the disk by its files' data."""
    needs_root_tools("sfdisk", "mkfs.ext4")
    work = tmp_path_factory.mktemp("walk-src")
    rng = random.Random(7)
    tree: dict[str, bytes] = {}
    for i in range(1200):
        rel = f"a{i % 6}/b{i % 5}/c{i % 4}/file {i:05}.txt"
        tree[rel] = rng.randbytes(rng.randrange(300, 6000))
        (work / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / "tree" / rel).write_bytes(tree[rel])
    image = work / "disk0.img"
    build_image(image, work / "tree", seed=7)
    make_repo(work / "repo")
    gen = backup_image(work / "repo", image)
    pw = work / "passphrase"
    pw.write_bytes(PASSPHRASE + b"\n")
    pw.chmod(0o600)
    return MountSource(image, tree, work / "repo", gen, pw, work)


def _without_data_chunks(source: MountSource, dest: Path) -> tuple[MountSource, int]:
    """A copy of the repository without the disk's own chunks (copies' chunks kept); and how
    many were removed."""
    copy = source.copy(dest)
    repo = Repository.open(copy.repo, PASSPHRASE)
    index = RepositoryView(repo).generation(VM).disk(DISK).index
    assert index.copies is not None, "the backup made no metadata copies"
    keep = set(index.copies.ids)
    removed = 0
    for _number, cid in index.stored():
        if cid not in keep:
            path = Path(repo.backend.path(chunk_name(cid)))
            if path.exists():
                path.unlink()
                removed += 1
    return copy, removed


@pytest.mark.parametrize("which", ["mount_source", "walk_source"])
def test_loop_mounted_walk_reads_only_the_metadata_copies(which: str, request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, kernel mounts)")
    needs_root_tools("losetup", "find")
    original: MountSource = request.getfixturevalue(which)
    source, removed = _without_data_chunks(original, tmp_path / "repo")
    assert removed > 0
    guest = tmp_path / "guest"
    guest.mkdir()
    with mounted(source, tmp_path / "mnt") as m:          # default settings: direct I/O
        flat = m.gen_dir / f"{DISK}-flat.vmdk"
        loop = subprocess.run(["losetup", "-r", "-f", "--show", "-o", str(PART_OFFSET), str(flat)],
                              capture_output=True, text=True, check=True).stdout.strip()
        try:
            subprocess.run(["mount", "-t", "ext4", "-o", "ro,noload", loop, str(guest)], check=True)
            try:
                found = subprocess.run(["find", str(guest)], capture_output=True, text=True)
            finally:
                subprocess.run(["umount", str(guest)], check=True)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
    assert found.returncode == 0, found.stderr
    listed = {Path(p).relative_to(guest).as_posix() for p in found.stdout.splitlines()} - {"."}
    expected = {rel for path in original.tree for rel in
                [path] + [p.as_posix() for p in Path(path).parents if p.as_posix() != "."]}
    assert listed - {"lost+found"} == expected
