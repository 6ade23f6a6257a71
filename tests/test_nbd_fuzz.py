"""Property tests of the NBD side: the copy-on-write overlay against a plain bytearray, and
the server against arbitrary client bytes (it answers or closes that connection, and keeps
serving others). In-process, on a synthetic disk: no repository needed."""
from __future__ import annotations

import os
import random
import socket
import struct
import tempfile

from hypothesis import given
from hypothesis import strategies as st

from repofs.serve.nbd import Export, NBDServer
from repofs.serve.overlay import BLOCK, FileOverlay, MemoryOverlay

SIZE = 5 * BLOCK + 123                      # not a whole number of blocks
BASE = random.Random(7).randbytes(SIZE)


def _base(offset: int, size: int) -> bytes:
    return BASE[offset:offset + size]


ops = st.lists(st.tuples(st.booleans(), st.integers(0, SIZE - 1), st.integers(1, 3 * BLOCK),
                         st.integers(0, 255)), max_size=25)


@given(ops)
def test_fuzz_overlay_matches_a_bytearray(steps):
    with tempfile.TemporaryDirectory() as tmp:
        overlays = [MemoryOverlay(_base, SIZE), FileOverlay(_base, SIZE, os.path.join(tmp, "ov"))]
        model = bytearray(BASE)
        for write, offset, length, fill in steps:
            length = min(length, SIZE - offset)
            if write:
                data = bytes([fill]) * length
                model[offset:offset + length] = data
                for ov in overlays:
                    ov.write(offset, data)
            for ov in overlays:
                assert ov.read(offset, length) == bytes(model[offset:offset + length])
        for ov in overlays:
            assert ov.read(0, SIZE) == bytes(model)
            ov.close()
    assert BASE == random.Random(7).randbytes(SIZE)       # the base never changes


@given(st.binary(max_size=300), st.booleans())
def test_fuzz_nbd_server_survives_arbitrary_client_bytes(junk, after_hello):
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "s")
        with NBDServer([Export("d", SIZE, _base)], f"unix:{sock}", workers=2) as server:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(60)   # a guard against a hang, not a timing check
                s.connect(sock)
                assert s.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
                payload = (struct.pack(">I", 3) if after_hello else b"") + junk
                try:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    while s.recv(65536):                   # replies, bounded, then the close
                        pass
                except (ConnectionResetError, BrokenPipeError):
                    pass
            # a well-behaved client still gets the right bytes
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(60)   # a guard against a hang, not a timing check
                s.connect(sock)
                s.recv(18, socket.MSG_WAITALL)
                s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 1, 1) + b"d")
                size, _flags = struct.unpack(">QH", s.recv(10, socket.MSG_WAITALL))
                assert size == SIZE
                s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 1000, 5000))
                assert struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL)) == (0x67446698, 0, 1)
                assert s.recv(5000, socket.MSG_WAITALL) == BASE[1000:6000]
            assert server.reads >= 1
