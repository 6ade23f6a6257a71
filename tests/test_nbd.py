"""``repofs serve``: a generation's disks over NBD, judged by QEMU's own NBD client
(qemu-img, qemu-io) and by a raw socket for the protocol's edges."""
from __future__ import annotations

import filecmp
import socket
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures_boot import P2_START
from fixtures_repo import REPOFS


class Served:
    """``repofs serve`` running in the background until ``stop()``."""

    def __init__(self, cli, *args: str):
        self.proc = subprocess.Popen([*REPOFS, "serve", *args], env=cli.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()            # "repofs: serving ..." once listening
        if "serving" not in line:
            self.stop()
            raise AssertionError(f"serve did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=30)


def _uri(sock: Path, label: str = "guest") -> str:
    return f"nbd+unix:///{label}?socket={sock}"


@pytest.mark.slow
def test_nbd_export_equals_restore_to_dir(boot_repo, tmp_path):
    out = tmp_path / "restored"
    boot_repo.run("restore", "vm:guest", "--to-dir", str(out))
    sock = tmp_path / "nbd.sock"
    served = Served(boot_repo, "vm:guest", "--listen", f"unix:{sock}")
    try:
        assert sock.stat().st_mode & 0o777 == 0o600          # decrypted disks: our user only
        r = subprocess.run(["qemu-img", "compare", _uri(sock), str(out / "guest.raw")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "identical" in r.stdout
        # an export that does not exist is refused by name
        r = subprocess.run(["qemu-img", "info", _uri(sock, "nope")], capture_output=True, text=True)
        assert r.returncode != 0 and "no such disk" in r.stderr
    finally:
        served.stop()
    assert not sock.exists()


@pytest.mark.slow
def test_nbd_many_readers_at_once_get_the_same_bytes(boot_repo, tmp_path):
    sock = tmp_path / "nbd.sock"
    served = Served(boot_repo, "vm:guest@latest", "--listen", f"unix:{sock}")
    try:
        def copy(i: int) -> Path:
            dst = tmp_path / f"copy{i}.raw"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", _uri(sock), str(dst)],
                           check=True, capture_output=True)
            return dst
        with ThreadPoolExecutor(4) as pool:
            copies = list(pool.map(copy, range(4)))
    finally:
        served.stop()
    for c in copies:
        assert filecmp.cmp(c, boot_repo.source, shallow=False)


@pytest.mark.slow
def test_nbd_writable_overlay_never_touches_the_repository(boot_repo, tmp_path):
    sock = tmp_path / "nbd.sock"
    overlay = tmp_path / "writes.raw"
    served = Served(boot_repo, "vm:guest", "--listen", f"unix:{sock}", "--writable", "--overlay", str(overlay))
    try:
        for cmd in (f"write -P 0xab {P2_START + 100} 5000",     # unaligned: copy-on-write of two blocks
                    f"read -P 0xab {P2_START + 100} 5000",
                    f"read -P 0 {P2_START + 5100} 3092"):        # the rest of the block: the base's zeros
            r = subprocess.run(["qemu-io", "-f", "raw", "-c", cmd, _uri(sock)], capture_output=True, text=True)
            assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    finally:
        served.stop()
    with open(overlay, "rb") as f:
        f.seek(P2_START + 100)
        assert f.read(5000) == b"\xab" * 5000
    boot_repo.run("check", "--read-data")
    out = tmp_path / "restored"
    boot_repo.run("restore", "vm:guest", "--to-dir", str(out))
    assert filecmp.cmp(out / "guest.raw", boot_repo.source, shallow=False)


def test_nbd_read_only_export_refuses_writes(boot_repo, tmp_path):
    sock = tmp_path / "nbd.sock"
    served = Served(boot_repo, "vm:guest", "--listen", f"unix:{sock}")
    try:
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 512", _uri(sock)], capture_output=True, text=True)
        assert r.returncode != 0 or "failed" in (r.stdout + r.stderr).lower()
    finally:
        served.stop()


def _client(sock_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(sock_path))
    hello = s.recv(18, socket.MSG_WAITALL)
    assert hello[:8] == b"NBDMAGIC"
    s.sendall(struct.pack(">I", 3))
    return s


def _option(s: socket.socket, option: int, data: bytes) -> list[tuple[int, bytes]]:
    s.sendall(struct.pack(">QII", 0x49484156454F5054, option, len(data)) + data)
    replies = []
    while True:
        magic, opt, kind, length = struct.unpack(">QIII", s.recv(20, socket.MSG_WAITALL))
        assert magic == 0x3E889045565A9 and opt == option
        replies.append((kind, s.recv(length, socket.MSG_WAITALL) if length else b""))
        if kind == 1 or kind >= 1 << 31:
            return replies


def test_nbd_protocol_edges(boot_repo, tmp_path):
    """Unknown options, unknown exports, reads past the end, writes to a read-only export:
    each answered with its error, the connection and the server going on."""
    sock = tmp_path / "nbd.sock"
    served = Served(boot_repo, "vm:guest", "--listen", f"unix:{sock}")
    try:
        s = _client(sock)
        assert _option(s, 8, b"")[-1][0] == (1 << 31) + 1            # STRUCTURED_REPLY: unsupported
        assert _option(s, 7, struct.pack(">I", 4) + b"nope" + bytes(2))[-1][0] == (1 << 31) + 6
        listed = _option(s, 3, b"")
        assert [d[4:] for k, d in listed if k == 2] == [b"guest"]
        replies = _option(s, 7, struct.pack(">I", 5) + b"guest" + bytes(2))
        info = [d for k, d in replies if k == 3 and d[:2] == b"\0\0"][0]
        size, flags = struct.unpack(">QH", info[2:])
        assert size == boot_repo.source.stat().st_size and flags & 2      # read-only
        req = struct.Struct(">IHHQQI")
        s.sendall(req.pack(0x25609513, 0, 0, 7, size - 512, 1024))       # read past the end
        magic, err, handle = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
        assert (magic, err, handle) == (0x67446698, 22, 7)
        s.sendall(req.pack(0x25609513, 0, 1, 8, 0, 4) + b"abcd")         # write: read-only
        assert struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))[1:] == (1, 8)
        s.sendall(req.pack(0x25609513, 0, 0, 9, 510, 2))                  # the boot signature
        assert struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))[1:] == (0, 9)
        assert s.recv(2, socket.MSG_WAITALL) == b"\x55\xaa"
        s.sendall(b"garbage!" * 4)                                        # bad magic: closed
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass                        # closed with our unread bytes pending: a reset
        s.close()
        # the server still serves others
        r = subprocess.run(["qemu-img", "info", _uri(sock)], capture_output=True, text=True)
        assert r.returncode == 0
    finally:
        served.stop()


def test_serve_refuses_an_overlay_that_exists(boot_repo, tmp_path):
    overlay = tmp_path / "exists"
    overlay.write_bytes(b"keep me")
    r = boot_repo.run("serve", "vm:guest", "--listen", f"unix:{tmp_path}/s", "--writable",
                      "--overlay", str(overlay), check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("repofs: error: overlay") and r.stderr.count("\n") == 1, r.stderr
    assert overlay.read_bytes() == b"keep me"


def test_serve_port_in_use_is_one_line(boot_repo):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = boot_repo.run("serve", "vm:guest", "--listen", f"127.0.0.1:{port}", check=False)
    assert r.returncode == 11
    assert r.stderr == f"repofs: error: cannot listen on 127.0.0.1:{port}: address already in use\n"
