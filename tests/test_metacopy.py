"""A backup keeps the guests' ext metadata copied in each disk's index (repofs.metacopy): the
copies are the generation's own bytes, a walk of the guest's tree reads nothing else, an
incremental keeps them when the metadata did not change and rebuilds them from the generation
(not from the source) when it did, and damage to them is found."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from fixtures_images import PASSPHRASE as GUEST_PASSPHRASE
from fixtures_repo import CLI, PASSPHRASE, cli_env, diff_extents, make_ext4_image, write_tree

from format.fixedindex import HOLE
from format.repository import Repository
from repofs.guest.guestfs import GuestGeneration
from repofs.view.tree import RepositoryView

MiB = 1 << 20


class CountingStore:
    """A repository whose chunk reads are recorded."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.fetched: list[bytes] = []

    def manifests(self):
        return self.repo.manifests()

    def get_index(self, hex_id: str):
        return self.repo.get_index(hex_id)

    def get_chunk(self, cid: bytes) -> bytes:
        self.fetched.append(cid)
        return self.repo.get_chunk(cid)

    def get_chunk_part(self, cid: bytes, offset: int, length: int) -> bytes | None:
        self.fetched.append(cid)
        return self.repo.get_chunk_part(cid, offset, length)


def open_view(cli: CLI) -> tuple[RepositoryView, CountingStore]:
    store = CountingStore(Repository.open(cli.repo, PASSPHRASE.encode()))
    return RepositoryView(store), store


def backup(cli: CLI, img: Path, changes: list[tuple[int, int]] | None = None) -> dict:
    args = ["backup", f"file:{img}", "--vm", "vm", "--json"]
    if changes is not None:
        cl = img.parent / "changes.json"
        cl.write_text(json.dumps([list(c) for c in changes]))
        args += ["--changed-extents", str(cl)]
    return json.loads(cli.run(*args).stdout)


def by_chunks(disk, off: int, n: int) -> bytes:
    """The disk's bytes from its slots alone (the copies not consulted)."""
    return disk._gather(off, n, disk._chunk)


def walk(gen) -> dict[str, int]:
    guest = GuestGeneration(gen)
    root = f"{gen.disks[0].label}/p1"
    out, stack = {}, [root]
    while stack:
        d = stack.pop()
        for name, s in guest.listdir(d):
            out[f"{d}/{name}"[len(root) + 1:]] = s.size if not s.is_dir else -1
            if s.is_dir:
                stack.append(f"{d}/{name}")
    return out


def ext4_backup(cli: CLI, tmp_path: Path, seed: int, files: int, size_mib: int
                ) -> tuple[Path, dict[str, bytes], dict]:
    """An image with a GPT and ext4 holding a seeded tree, backed up: (image, files, report)."""
    src = tmp_path / "tree"
    tree = write_tree(src, seed=seed, files=files)
    img = tmp_path / "disk.img"
    make_ext4_image(img, size_mib, src)
    return img, tree, backup(cli, img)


def test_copies_are_the_disks_bytes_and_serve_a_walk(cli: CLI, tmp_path: Path):
    img, files, report = ext4_backup(cli, tmp_path, seed=3, files=120, size_mib=64)
    assert report["disks"][0]["copied_bytes"] > 0

    view, store = open_view(cli)
    gen = view.generation("vm")
    disk = gen.disks[0]
    copies = disk.index.copies
    assert copies is not None and copies.ranges[0] == (0, 128 << 10)
    image = img.read_bytes()
    for off, n in copies.ranges:
        assert off % 4096 == 0 and n % 4096 == 0
        assert disk.read(off, n) == image[off:off + n]            # served by the copies
        assert by_chunks(disk, off, n) == image[off:off + n]      # the same as the slots

    # a walk of the whole tree, listing and stat-ing every entry, fetches only copy chunks
    view, store = open_view(cli)
    gen = view.generation("vm")
    assert walk(gen) == walk_of_source(tmp_path / "tree")
    assert store.fetched and set(store.fetched) <= set(copies.ids)
    # and file contents still come from the disk's chunks, byte for byte
    guest = GuestGeneration(gen)
    disk = gen.disks[0]
    some = sorted(files)[::17]
    for path in some:
        assert guest.open(f"{disk.label}/p1/{path}").read(0, len(files[path]) + 1) == files[path]


def test_incremental_keeps_copies_when_metadata_is_unchanged(cli: CLI, tmp_path: Path):
    img, _files, _report = ext4_backup(cli, tmp_path, seed=4, files=60, size_mib=64)
    view, _ = open_view(cli)
    first = view.generation("vm").disks[0].index.copies
    # bytes changed outside every copied range (file data, free space)
    end = first.ranges[-1][0] + first.ranges[-1][1]
    change = (max(end, 40 * MiB), 8192)
    with open(img, "r+b") as f:
        f.seek(change[0])
        f.write(b"\x5a" * change[1])
    report = backup(cli, img, [change])
    assert report["disks"][0]["copied_bytes"] == first.stream_size
    view, _ = open_view(cli)
    second = view.generation("vm").disks[0]
    assert second.index.copies.ranges == first.ranges and second.index.copies.ids == first.ids
    assert second.read(*change) == b"\x5a" * change[1]


@pytest.mark.slow
def test_incremental_copies_are_the_generations_bytes(cli: CLI, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_tree(one, seed=5, files=60)
    write_tree(two, seed=6, files=150)
    (two / "new folder ü").mkdir()
    (two / "new folder ü" / "x").write_bytes(b"hello")
    img, img2 = tmp_path / "disk.img", tmp_path / "disk2.img"
    make_ext4_image(img, 64, one)
    make_ext4_image(img2, 64, two)
    backup(cli, img)
    changes = diff_extents(img, img2)
    v1 = tmp_path / "v1.img"
    shutil.copyfile(img, v1)
    shutil.copyfile(img2, img)
    # a change the list leaves out, inside the metadata: the generation does not have it,
    # so neither may its copies
    view, _ = open_view(cli)
    stray = next(page for off, n in view.generation("vm").disks[0].index.copies.ranges
                 for page in range(off, off + n, 4096)
                 if not any(o < page + 4096 and page < o + n for o, n in changes))
    with open(img, "r+b") as f:
        f.seek(stray)
        f.write(b"\xee" * 512)
    backup(cli, img, changes)

    view, _ = open_view(cli)
    old, new = view.generations("vm")
    disk = new.disks[0]
    copies = disk.index.copies
    assert copies != old.disks[0].index.copies
    for off, n in copies.ranges:
        assert disk.read(off, n) == by_chunks(disk, off, n)
    assert disk.read(stray, 512) != b"\xee" * 512
    assert walk(new) == walk_of_source(two)
    assert walk(old) != walk(new)
    for off, n in old.disks[0].index.copies.ranges:               # the old generation is intact
        assert old.disks[0].read(off, n) == v1.read_bytes()[off:off + n]


def walk_of_source(root: Path) -> dict[str, int]:
    out = {"lost+found": -1}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = -1 if p.is_dir() else p.stat().st_size
    return out


def test_incremental_does_not_keep_copies_that_name_a_lost_chunk(cli: CLI, tmp_path: Path):
    """The copies' own chunks are the previous generation's too: one deleted, the copies are
    made anew rather than kept (a new index never names a chunk the backup has not seen whole)."""
    img, _files, _report = ext4_backup(cli, tmp_path, seed=4, files=60, size_mib=64)
    view, _ = open_view(cli)
    first = view.generation("vm").disks[0].index.copies
    lost = first.ids[-1]
    assert lost not in {c for _, c in view.generation("vm").disks[0].index.stored()}
    (cli.repo / "chunks" / lost.hex()[:2] / lost.hex()).unlink()
    end = first.ranges[-1][0] + first.ranges[-1][1]
    change = (max(end, 40 * MiB), 8192)     # outside every copied range: the copies would be kept
    with open(img, "r+b") as f:
        f.seek(change[0])
        f.write(b"\x5a" * change[1])
    report = backup(cli, img, [change])
    assert report["disks"][0]["copied_bytes"] == first.stream_size
    repo = Repository.open(cli.repo, PASSPHRASE.encode())
    view, _ = open_view(cli)
    second = view.generation("vm").disks[0]
    assert second.index.copies.ranges == first.ranges
    assert all(repo.stored_size(cid) is not None for _o, cid in second.index.references())
    image = img.read_bytes()
    for off, n in second.index.copies.ranges:
        assert second.read(off, n) == image[off:off + n]


def test_check_finds_a_damaged_copy(cli: CLI, tmp_path: Path):
    ext4_backup(cli, tmp_path, seed=7, files=30, size_mib=32)
    view, _ = open_view(cli)
    disk = view.generation("vm").disks[0]
    cid = disk.index.copies.ids[0]
    assert cid not in {c for _, c in disk.index.stored()}       # a chunk of its own
    path = cli.repo / "chunks" / cid.hex()[:2] / cid.hex()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = cli.run("check", "--read-data", check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"disk {disk.label}, offset 0: chunks/{cid.hex()[:2]}/{cid.hex()}" in proc.stdout + proc.stderr
    # the copies only repeat the disk: its files stay readable from the slots
    listing = cli.run("files", "ls", "vm:vm:disk/p1").stdout.split()
    assert sorted(listing) == sorted(["dir0", "dir1", "dir2", "dir3", "dir4", "lost+found"])
    view, store = open_view(cli)
    assert walk(view.generation("vm")) == walk_of_source(tmp_path / "tree")
    assert cid in store.fetched


def test_walks_of_guest_images_read_only_copies(guest_repo):
    """The GPT + ext4 and the LVM images of the guest test set: every ext volume's walk reads
    the copies' chunks and none of the disk's own chunks."""
    def fresh():
        store = CountingStore(Repository.open(guest_repo.path, GUEST_PASSPHRASE.encode()))
        gen = RepositoryView(store).generation("guest")
        return store, gen, GuestGeneration(gen)

    walked = 0
    for label in ("gpt_ext4", "gpt_lvm"):
        if label not in guest_repo.disks:
            continue
        _, _, guest = fresh()
        for name in [v.name for v in guest.volumes(label) if v.fstype == "ext"]:
            store, gen, guest = fresh()
            stack = [f"{label}/{name}"]
            while stack:
                d = stack.pop()
                stack += [f"{d}/{entry}" for entry, s in guest.listdir(d) if s.is_dir]
            walked += 1
            index = gen.disk(label).index
            own = {cid for _, cid in index.stored()} - set(index.copies.ids)
            assert set(store.fetched) & set(index.copies.ids), name
            assert not set(store.fetched) & own, name        # (an LVM scan reads other disks too)
    assert walked >= 2


def test_check_finds_copies_that_differ_from_the_disk(cli: CLI, tmp_path: Path):
    """A copy whose chunk is sound but whose bytes are not the disk's (a writer's bug) is
    found by ``check --read-data`` and named by its disk offset."""
    ext4_backup(cli, tmp_path, seed=8, files=30, size_mib=32)
    assert cli.run("check", "--read-data").returncode == 0
    repo = Repository.open(cli.repo, PASSPHRASE.encode())
    (name, manifest), = repo.manifests().items()
    index = repo.get_index(manifest.disks[0].index)
    wrong = bytearray(repo.get_chunk(index.copies.ids[0]))
    wrong[5000] ^= 1
    cid = repo.chunk_id(bytes(wrong))
    repo.put_chunk(cid, bytes(wrong))
    index.copies.ids[0] = cid
    manifest.disks[0].index = repo.put_index(index)
    repo.put_manifest(manifest)
    proc = cli.run("check", "--read-data", check=False)
    assert proc.returncode == 1
    assert "offset 5000: copy table: the copied bytes differ" in proc.stdout + proc.stderr
    assert cli.run("check").returncode == 0          # the structure is sound


def test_a_small_whole_disk_ext_volume(cli: CLI, tmp_path: Path):
    """An ext2 file system straight on a disk smaller than the 128 KiB copied from a disk's
    start: the copies stay inside the disk, and the generation reads back."""
    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_bytes(b"tiny\n")
    img = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext2", "-q", "-F", "-b", "1024", "-N", "16", "-d", str(src), str(img), "100k"],
                   check=True, capture_output=True)
    assert img.stat().st_size == 100 * 1024
    backup(cli, img)
    view, _ = open_view(cli)
    disk = view.generation("vm").disks[0]
    ranges = disk.index.copies.ranges
    assert ranges[-1][0] + ranges[-1][1] <= disk.capacity
    assert disk.read(0, disk.capacity) == img.read_bytes()
    assert cli.run("files", "cat", "vm:vm:disk/whole/d/f.txt").stdout == "tiny\n"


@pytest.mark.parametrize("store_threads", [False, True], ids=["local", "object-storage"])
def test_reading_the_copied_ranges_loads_each_slot_once(cli: CLI, tmp_path: Path, monkeypatch,
                                                        store_threads: bool):
    """The second pass over the copied ranges (after the search) loads each slot once, ahead of
    the reader, even when it needs more slots than are kept: a slot is not dropped before it
    is read, and one read is not kept to be loaded again. On object storage (a backend with
    ``parallelism``) several loads are in flight at once; the bytes are the image's either way."""
    from repofs.ingest import metacopy
    src = tmp_path / "tree"
    write_tree(src, seed=6, files=40)
    img = tmp_path / "disk.img"
    make_ext4_image(img, 48, src)
    with open(img, "r+b") as f:        # every slot holds data, so every slot is a load
        for k in range(48):
            f.seek(k * MiB + MiB - 2048)
            f.write(k.to_bytes(4, "big") * 512)
    backup(cli, img)
    repo = Repository.open(cli.repo, PASSPHRASE.encode())
    if store_threads:
        monkeypatch.setattr(repo.backend, "parallelism", 16, raising=False)
    index = RepositoryView(repo).generation("vm").disks[0].index
    loads: list[bytes] = []
    fetch = repo.get_chunk
    # on object storage the first 8 loads must be in flight together (each waits for the
    # others, as a store's answers wait for a round trip); two at a time would never get there
    together = threading.Barrier(8 if store_threads else 1, timeout=30)

    def counted(cid: bytes) -> bytes:
        loads.append(cid)
        if len(loads) <= together.parties:
            together.wait()
        return fetch(cid)
    monkeypatch.setattr(repo, "get_chunk", counted)
    # per slot: two small ranges and one across the boundary with the next slot
    ranges = sorted((k * MiB + o, n) for k in range(47)
                    for o, n in ((0, 4096), (MiB // 2, 8192), (MiB - 4096, 8192)))
    assert len({off // MiB for off, _ in ranges}) > metacopy.SLOTS_KEPT
    image = img.read_bytes()
    with metacopy._GenerationReader(repo, "disk", index, None, []) as reader:
        got = list(reader.read_ranges(ranges))
    assert got == [image[off:off + n] for off, n in ranges]
    assert len(loads) == 48       # slots 0-47, each once


def small_chunk_backup(tmp_path: Path) -> tuple[CLI, Path, dict]:
    """An ext4 image backed up into a repository of 64 KiB chunks, so that its copies' stream
    spans several chunks: (cli, image, report)."""
    repo = tmp_path / "repo64k"
    cli = CLI(repo, cli_env(tmp_path, repo))
    cli.run("init", "--chunk-size", str(64 << 10))
    src = tmp_path / "tree"
    write_tree(src, seed=8, files=150)
    img = tmp_path / "disk.img"
    make_ext4_image(img, 64, src)
    return cli, img, backup(cli, img)


def test_incremental_cuts_its_changes_out_of_the_copies(tmp_path: Path):
    """Changed bytes inside the copies: exactly those bytes leave the copied ranges, as a gap
    of the stream, and every stream chunk keeps its id — no copy stored again, no search —
    and every byte still reads as the generation's."""
    cli, img, _ = small_chunk_backup(tmp_path)
    view, _ = open_view(cli)
    first = view.generation("vm").disks[0].index.copies
    assert first.ranges[0] == (0, 128 << 10) and len(first.ids) >= 5 and first.gaps is None
    # bytes 96-104 KiB: unused space between the GPT and the partition, inside the first
    # copied range, in the stream's second chunk
    change = (96 << 10, 8192)
    new_bytes = bytes(range(256)) * 32
    with open(img, "r+b") as f:
        f.seek(change[0])
        f.write(new_bytes)
    report = backup(cli, img, [change])
    assert report["disks"][0]["new_chunks"] == 1                  # the changed bytes alone
    view, _ = open_view(cli)
    old, new = view.generations("vm")
    disk = new.disks[0]
    copies = disk.index.copies
    assert copies.ids == first.ids and copies.stream_size == first.stream_size
    assert copies.ranges[:2] == [(0, 96 << 10), (104 << 10, 24 << 10)] and copies.gaps[:3] == [0, 8192, 0]
    assert copies.ranges[2:] == first.ranges[1:] and copies.stream_pos(*change) is None
    assert report["disks"][0]["copied_bytes"] == copies.copied_size == first.copied_size - 8192
    image = img.read_bytes()
    assert disk.read(*change) == new_bytes
    for off, n in copies.ranges:
        assert disk.read(off, n) == by_chunks(disk, off, n) == image[off:off + n]
    assert walk(new) == walk(old) == walk_of_source(tmp_path / "tree")
    # the cut bytes come from the piece the incremental stored, not from the slot's base under
    # it; a read across the cut joins the copies and the piece; a mount loads that piece with
    # the copies
    view, store = open_view(cli)
    disk = view.generations("vm")[-1].disks[0]
    (piece,) = [cid for _o, _n, cid in disk.index.pieces(change[0] // disk.chunk_size)]
    assert disk.in_pieces(*change) and not disk.in_pieces(change[0], change[1] + 4096)
    assert disk.cut_pieces_to_load(1 << 20) == [piece]
    assert disk.read(*change) == new_bytes and store.fetched == [piece]
    view, store = open_view(cli)
    disk = view.generations("vm")[-1].disks[0]
    assert disk.read(64 << 10, 64 << 10) == image[64 << 10:128 << 10]
    assert piece in store.fetched and set(store.fetched) <= {piece, *copies.ids}
    assert disk.index.get(change[0] // disk.chunk_size) not in store.fetched
    # the index is sealed as version 2: a reader before gaps refuses it as unsupported
    path = next((cli.repo / "indexes").glob(f"*/{new.disks[0].entry.index}"))
    assert path.read_bytes()[4] == 2
    old_path = next((cli.repo / "indexes").glob(f"*/{old.disks[0].entry.index}"))
    assert old_path.read_bytes()[4] == 1
    # an off-site copy (other keys, so other ids) keeps the gaps, and reads the same
    off = CLI(tmp_path / "off", cli_env(tmp_path, tmp_path / "off"))
    off.run("init", "--chunk-size", str(64 << 10))
    CLI(cli.repo, cli.env).run("copy", "--to", str(off.repo))
    copied = RepositoryView(Repository.open(off.repo, PASSPHRASE.encode())).generations("vm")[-1]
    there = copied.disks[0]
    assert there.index.copies.ranges == copies.ranges and there.index.copies.gaps == copies.gaps
    for off_, n in copies.ranges:
        assert there.read(off_, n) == image[off_:off_ + n]
    assert walk(copied) == walk_of_source(tmp_path / "tree")


def changes_covering(copies, share: float, skip: int = 0) -> list[tuple[int, int]]:
    """Whole 4 KiB pages of the copied ranges, in disk order from the ``skip``-th copied byte
    on, until they hold more than ``share`` of the stream's length."""
    want, out, seen = share * copies.stream_size, [], 0
    for off, n in copies.ranges:
        for page in range(off, off + n, 4096):
            seen += 4096
            if seen <= skip:
                continue
            out.append((page, 4096))
            if len(out) * 4096 > want:
                return out
    return out


def test_incremental_searches_anew_once_less_than_half_is_still_copied(tmp_path: Path):
    """Cuts add up over incrementals, measured against the stream's length (which a cut
    keeps): a first change cutting 30% of it keeps the cut copies, a second cutting 30% more
    leaves less than half, so the copies are made anew from the generation — here the bytes
    were rewritten unchanged, so the search finds the same ranges and the same chunks."""
    cli, img, _ = small_chunk_backup(tmp_path)
    view, _ = open_view(cli)
    first = view.generation("vm").disks[0].index.copies
    one = changes_covering(first, 0.3)
    backup(cli, img, one)
    view, _ = open_view(cli)
    cut = view.generations("vm")[-1].disks[0].index.copies
    assert cut.gaps is not None and cut.stream_size == first.stream_size
    assert first.copied_size - cut.copied_size == 4096 * len(one)
    two = changes_covering(first, 0.3, skip=4096 * len(one))
    report = backup(cli, img, two)
    view, _ = open_view(cli)
    copies = view.generations("vm")[-1].disks[0].index.copies
    assert copies.ranges == first.ranges and copies.ids == first.ids and copies.gaps is None
    assert report["disks"][0]["copied_bytes"] == first.stream_size


def test_a_slot_read_whole_keeps_its_copies_where_they_are_its_bytes(cli: CLI, tmp_path: Path):
    """A change list of 17 pages in one slot makes the backup read that slot whole: the copies
    lose the listed pages only, the rest of the slot's copied bytes are kept after being
    compared with what was read — and a page that changed without being listed (read with the
    slot) is cut too, so the copies never disagree with the slots."""
    img, _files, _report = ext4_backup(cli, tmp_path, seed=9, files=120, size_mib=64)
    view, _ = open_view(cli)
    first = view.generation("vm").disks[0].index.copies
    copied = {p for off, n in first.ranges for p in range(off, off + n, 4096)}
    slot = max(range(1, 8), key=lambda s: sum(1 for p in copied if p // MiB == s))
    listed = [slot * MiB + k * 16384 for k in range(17)]        # apart: 17 pieces, too many
    stray = next(p for p in sorted(copied) if p // MiB == slot and p not in listed)
    with open(img, "r+b") as f:                                  # listed: rewritten unchanged
        f.seek(stray)
        f.write(b"\xee" * 512)
    report = backup(cli, img, [(p, 4096) for p in listed])
    assert report["disks"][0]["patched_slots"] == 0              # the slot was read whole
    view, _ = open_view(cli)
    disk = view.generations("vm")[-1].disks[0]
    copies = disk.index.copies
    lost = {p for p in copied if p in listed or p == stray}
    assert copies.copied_size == first.copied_size - 4096 * len(lost)
    assert copies.stream_size == first.stream_size and copies.stream_pos(stray, 512) is None
    assert all(cid in (first.ids[k], HOLE) for k, cid in enumerate(copies.ids))   # no search
    image = img.read_bytes()
    for off, n in copies.ranges:
        assert disk.read(off, n) == by_chunks(disk, off, n) == image[off:off + n]
    assert disk.read(stray, 512) == b"\xee" * 512
