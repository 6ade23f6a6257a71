"""What the mutation run of ``format/secretfile.py`` found untested (docs/security.md,
"Mutation testing of the format"): which kinds of file are password files, the bound on what
is read (also from a device that never ends), the exact edge of that bound, and the words of
the warnings and refusals."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from format.secretfile import MAX_BYTES, PasswordFileError, exposure, read_password_file


@pytest.mark.parametrize("mode, who", [(0o600, None), (0o400, None), (0o700, None), (0o640, "group"),
                                       (0o620, "group"), (0o604, "others"), (0o602, "others"),
                                       (0o644, "group and others"), (0o666, "group and others")])
def test_exposure_in_words(mode, who):
    assert exposure(stat.S_IFREG | mode) == who


def test_the_bound_is_exact(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"x" * MAX_BYTES)
    path.chmod(0o600)
    assert read_password_file(str(path)) == "x" * MAX_BYTES
    path.write_bytes(b"x" * (MAX_BYTES + 1))
    with pytest.raises(PasswordFileError) as info:
        read_password_file(str(path))
    assert str(info.value) == f"the password file {path} is larger than {MAX_BYTES} bytes: not a password file"


def test_a_device_that_never_ends_is_read_only_up_to_the_bound():
    with pytest.raises(PasswordFileError, match="larger than"):
        read_password_file("/dev/zero", warn=None)


def test_only_files_fifos_and_character_devices_are_password_files(tmp_path):
    with pytest.raises(PasswordFileError) as info:
        read_password_file("/dev/null", warn=None)                   # a character device: read
    assert str(info.value) == "the password file /dev/null is empty"
    block = next((f"/dev/{n}" for n in sorted(os.listdir("/dev"))
                  if n.startswith("loop") and stat.S_ISBLK(os.stat(f"/dev/{n}").st_mode)), None)
    if block is not None:
        with pytest.raises(PasswordFileError) as info:
            read_password_file(block, warn=None)
        assert str(info.value) == f"the password file {block} is not a file"
    with pytest.raises(PasswordFileError) as info:
        read_password_file(str(tmp_path / "missing"))
    assert str(info.value) == f"cannot read the password file {tmp_path / 'missing'}: No such file or directory"


def test_a_fifo_is_read_and_its_mode_not_warned_about(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"from a pipe\n"))
    writer.start()
    warned: list[str] = []
    try:
        assert read_password_file(str(fifo), warn=warned.append) == "from a pipe"
    finally:
        writer.join(timeout=30)
    assert warned == []


def test_only_line_endings_are_stripped(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"XpassX\r\n")
    path.chmod(0o640)
    warned: list[str] = []
    assert read_password_file(str(path), warn=warned.append) == "XpassX"
    assert warned == [f"the password file {path} can be read or written by group (mode 0640); "
                      f"make it private: chmod 600 {path}"]
