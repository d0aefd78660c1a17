"""The exclusive lock on a state folder: one daemon (or maintenance command) at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from daemon.errors import StateLocked
from daemon.store.fsutil import FILE_MODE

LOCK_NAME = "sessiond.lock"


class StateLock:
    """Holds `flock(LOCK_EX)` on `<stateDir>/sessiond.lock` for the life of the process.

    The kernel drops the lock when the process dies, however it dies, so a crashed daemon never
    leaves a stale lock behind. The file holds the owner's pid, for the error message only.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StateLocked naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"another sessiond (pid {holder}) holds the lock on {self.path.parent}; "
                "stop it first, or use another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
