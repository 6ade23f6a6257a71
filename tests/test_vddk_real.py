"""The binding against a real VDDK, when ``VDDK_LIBDIR`` points at one (skipped otherwise).

Local mode only (no vCenter needed): create a monolithicFlat disk, write, read back byte for
byte, list allocated extents, read metadata, and see a range error come back with the library's
code. Runs in the worker process, as production does with the real library. Pointing
``VDDK_LIBDIR`` at the stand-in (build/) runs the same checks against it.
"""
from __future__ import annotations

import os
import pathlib
import random

import pytest

import vddk

pytestmark = pytest.mark.skipif(
    not os.environ.get(vddk.ENV_LIBDIR),
    reason=f"no real VDDK: set {vddk.ENV_LIBDIR} to a VDDK directory to run this test",
)

MiB = 1 << 20


def test_real_vddk_local_round_trip(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "real.vmdk")
    data = random.Random(7).randbytes(3 * MiB)
    with vddk.open_library(isolated=True) as lib:
        assert "nbd" in lib.transport_modes()
        with lib.connect(None, read_only=False) as conn:
            conn.create(path, 64 * MiB)
            with conn.open(path, read_only=False) as disk:
                assert disk.capacity == 64 * MiB
                assert disk.transport_mode == "file"
                disk.write_from(8 * MiB, data)
                disk.flush()
                assert disk.read(8 * MiB, len(data)) == data
                assert disk.read(0, MiB) == bytes(MiB)
                if lib.has("QueryAllocatedBlocks"):
                    extents = disk.allocated_extents()
                    covered = [(o, n) for o, n in extents if o <= 8 * MiB < o + n]
                    assert covered, extents
                assert disk.metadata_keys()
                with pytest.raises(vddk.VddkError):
                    disk.read(64 * MiB, 512)
