"""The few file-system primitives every store module shares: atomic writes, folder syncs, modes.

Every durable write in sessiond goes through here, so there is one place that knows the order
(temp file, fsync, rename, fsync of the folder) and one place a test can watch.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_dir(path: Path) -> bool:
    """Create `path` (and parents) with mode 0700; return True when it did not exist before."""
    if path.is_dir():
        return False
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=DIR_MODE, exist_ok=True)
        fsync_dir(d.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file.

    Raises OSError when any step fails; the temporary file is then removed (it is ours).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        # Only our own temporary file is ever removed.
        with _suppress_missing():
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: object) -> bool:
        return et is not None and issubclass(et, FileNotFoundError)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (regular files may write short on ENOSPC edges)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def sync_filesystem(folder: Path) -> bool:
    """syncfs(2) on the file system holding `folder`: one call instead of one fsync per file.

    Returns False when syncfs is not available (the caller then syncs file by file); raises
    OSError when the kernel reports a write-back error (Linux 5.8 and later report them).
    """
    if _syncfs is None:
        return False
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(folder))
    finally:
        os.close(fd)
    return True


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; the daemon keeps many transcripts open."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft
