"""The store's one door to the file system: every call that changes or syncs a file goes here.

Production passes straight through to `os` (one extra Python call per system call). Tests swap in
another implementation with `install` to see every write, sync, rename and folder change in
order: `tests/sim_disk.py` uses that to simulate power cuts (it keeps what a real disk may keep
of the writes since the last sync), as SQLite's crash tests do. Reads need no door: what a
process reads back is the page cache, which the real file system already models.

Why sync errors get their own type: after fsync, fdatasync or syncfs fails, the kernel may have
dropped the dirty pages it could not write, and a second sync would then succeed without them
(PostgreSQL's "fsyncgate"). So a `SyncFailed` is never retried as if nothing happened: the store
stops accepting writes. Any other OSError (ENOSPC or EMFILE on open or write, ...) leaves the
disk as it was before the failed step, and the step may be tried again later.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

StrPath = str | os.PathLike[str]


class SyncFailed(OSError):
    """fsync, fdatasync or syncfs failed: what was written since the last good sync may be lost."""


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class FileIO:
    """The production implementation: the `os` calls themselves."""

    syncfs_fn: Any = _load_syncfs()

    def open(self, path: StrPath, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            raise SyncFailed(e.errno, e.strerror) from e

    def fdatasync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as e:
            raise SyncFailed(e.errno, e.strerror) from e

    def syncfs(self, fd: int) -> bool:
        """syncfs(2) on the file system holding `fd`; False when the call is not available."""
        fn = self.syncfs_fn
        if fn is None:
            return False
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise SyncFailed(err, os.strerror(err))
        return True

    def rename(self, src: StrPath, dst: StrPath) -> None:
        os.rename(src, dst)

    def replace(self, src: StrPath, dst: StrPath) -> None:
        os.replace(src, dst)

    def unlink(self, path: StrPath) -> None:
        os.unlink(path)

    def mkdir(self, path: StrPath, mode: int = 0o777) -> None:
        os.mkdir(path, mode)


_impl: FileIO = FileIO()


def install(impl: FileIO) -> FileIO:
    """Route the store's file operations through `impl` (tests); returns the one it replaces."""
    global _impl
    old, _impl = _impl, impl
    return old


# The calls the store makes. Module functions (not a bound object) so that `install` takes effect
# for every caller at once, including modules that imported them by name before.


def open(path: StrPath, flags: int, mode: int = 0o777) -> int:
    return _impl.open(path, flags, mode)


def close(fd: int) -> None:
    _impl.close(fd)


def write(fd: int, data: bytes | memoryview) -> int:
    return _impl.write(fd, data)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    return _impl.pwrite(fd, data, offset)


def ftruncate(fd: int, size: int) -> None:
    _impl.ftruncate(fd, size)


def fsync(fd: int) -> None:
    """Raises SyncFailed (an OSError) when the kernel reports an error."""
    _impl.fsync(fd)


def fdatasync(fd: int) -> None:
    """Raises SyncFailed (an OSError) when the kernel reports an error."""
    _impl.fdatasync(fd)


def syncfs(fd: int) -> bool:
    """Raises SyncFailed; returns False when syncfs(2) is not available here."""
    return _impl.syncfs(fd)


def rename(src: StrPath, dst: StrPath) -> None:
    _impl.rename(src, dst)


def replace(src: StrPath, dst: StrPath) -> None:
    _impl.replace(src, dst)


def unlink(path: StrPath) -> None:
    _impl.unlink(path)


def mkdir(path: StrPath, mode: int = 0o777) -> None:
    _impl.mkdir(path, mode)


__all__ = [
    "FileIO",
    "SyncFailed",
    "close",
    "fdatasync",
    "fsync",
    "ftruncate",
    "install",
    "mkdir",
    "open",
    "pwrite",
    "rename",
    "replace",
    "syncfs",
    "unlink",
    "write",
]
