"""The one way a new file is written (`fsutil.write_new_file`) and the one way a failed disk
becomes an answer (`errors.storage_unavailable`, `errors.os_reason`)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from daemon.errors import STORAGE_UNAVAILABLE, os_reason, storage_unavailable
from daemon.store import fileio
from daemon.store.fsutil import write_new_file


def test_a_new_file_holds_exactly_its_data_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    write_new_file(path, b'{"type":"session"}\n')
    assert path.read_bytes() == b'{"type":"session"}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "kept.jsonl"
    path.write_bytes(b"the original\n")
    with pytest.raises(FileExistsError):
        write_new_file(path, b"something else\n")
    assert path.read_bytes() == b"the original\n"


class Recorder(fileio.FileIO):
    """The production calls, noted in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def open(self, path: fileio.StrPath, flags: int, mode: int = 0o777) -> int:
        self.calls.append("open")
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.calls.append("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.calls.append("fsync")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self.calls.append("close")
        super().close(fd)


def test_a_new_file_goes_through_the_file_door_and_is_synced_before_close(tmp_path: Path) -> None:
    rec = Recorder()
    old = fileio.install(rec)
    try:
        write_new_file(tmp_path / "door.jsonl", b"x\n")
    finally:
        fileio.install(old)
    assert rec.calls == ["open", "write", "fsync", "close"]


def test_a_failed_disk_reads_as_storage_unavailable_with_the_systems_words() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    e = storage_unavailable(full, "reading a transcript")
    assert e.code == STORAGE_UNAVAILABLE
    assert e.message == (
        f"storage unavailable: reading a transcript: {os.strerror(errno.ENOSPC)}; "
        "nothing was stored, retry"
    )
    assert storage_unavailable("journal sync failed", hint=None).message == (
        "storage unavailable: journal sync failed"
    )


def test_os_reason_prefers_strerror_and_falls_back_to_the_text() -> None:
    assert os_reason(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    assert os_reason(OSError("no errno here")) == "no errno here"
    assert os_reason(ValueError("not an OSError")) == "not an OSError"
