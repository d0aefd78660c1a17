"""A simulated disk for power-cut tests: what survives a power cut, at any moment.

Installed as the store's file layer (`daemon.store.fileio.install`), `SimDisk` performs every
operation on the real file system (so the running store reads back what it wrote, as from a page
cache) and keeps a record of what a power cut could still take away:

- per file (by inode): its content as of its last fsync/fdatasync, and every write and truncation
  since, in order;
- per state folder: the log of directory changes (create, mkdir, rename, unlink), each marked
  durable once an fsync of a folder it touched followed it.

`crash_image(dest)` writes, into a fresh folder, one state the disk could be in after a power cut
right now (SQLite's crash tests do the same with unsynced sectors):

- directory changes: the durable ones, plus a random prefix of the rest (a journaling file
  system keeps them in order; a rename is atomic: old name or new, never both or neither);
- file contents: the synced content, plus a random prefix of the writes since, a random subset
  of them (holes read as zeros), or a prefix whose last write is torn part-way.

The disk is deliberately literal: an fsync of a file does not make its directory entry durable,
and a file created outside `fileio` is unknown to it (it raises, so that the store's door stays
the only one).
"""

from __future__ import annotations

import fcntl
import os
import random
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.store.fileio import FileIO, StrPath


@dataclass(slots=True)
class Inode:
    """One file's content as the disk holds it, and the changes still in the page cache."""

    durable: bytes = b""
    # ("w", offset, data) or ("t", size, b"")
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class MetaOp:
    """One directory change, in the order the system calls happened."""

    kind: str  # create | mkdir | rename | unlink
    path: str  # relative to the root (the destination for a rename)
    src: str | None = None  # a rename's source
    ino: int | None = None
    durable: bool = False

    def folders(self) -> set[str]:
        out = {os.path.dirname(self.path)}
        if self.src is not None:
            out.add(os.path.dirname(self.src))
        return out


def apply_ops(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, at, chunk in ops:
        if kind == "t":
            del buf[at:]
            buf.extend(b"\0" * (at - len(buf)))
        else:
            if len(buf) < at:
                buf.extend(b"\0" * (at - len(buf)))
            buf[at : at + len(chunk)] = chunk
    return bytes(buf)


class UnknownFile(AssertionError):
    """A write to a file the disk never saw created: something bypassed `daemon.store.fileio`."""


class SimDisk(FileIO):
    """The real file system plus a record of what is durable. Thread-safe (one lock)."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root.resolve()
        self.rng = rng
        self.lock = threading.RLock()
        # Files by a simulated inode number: the real one is reused as soon as a file is gone
        # (sessions.json and its temporary file take turns), a simulated one never is.
        self.inodes: dict[int, Inode] = {}
        self.sim_ino: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> simulated inode
        self.base_files: dict[str, int] = {}  # the namespace when the disk was attached
        self.base_content: dict[str, bytes] = {}
        self.base_dirs: set[str] = {""}
        self.log: list[MetaOp] = []
        self.dir_fds: dict[int, str] = {}
        # Every content a file was atomically replaced with (`replace` destinations), by path:
        # a test checks that a crash leaves one of these, never a mix.
        self.versions: dict[str, list[bytes]] = {}
        self.ops = 0
        self.before_op: Callable[[str], None] | None = None  # where a test takes its images
        self._attach()

    # --- bookkeeping --------------------------------------------------------------------

    def _attach(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir
            for d in dirnames:
                self.base_dirs.add(os.path.join(rel_dir, d))
            for f in filenames:
                p = os.path.join(dirpath, f)
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    rel = os.path.join(rel_dir, f)
                    with open(p, "rb") as fh:
                        self.base_content[rel] = fh.read()
                    self.base_files[rel] = self._new_inode(st, self.base_content[rel])

    def _new_inode(self, st: os.stat_result, durable: bytes = b"") -> int:
        ino = len(self.inodes) + 1
        self.inodes[ino] = Inode(durable=durable)
        self.sim_ino[(st.st_dev, st.st_ino)] = ino
        return ino

    def rel(self, path: StrPath) -> str | None:
        """`path` relative to the root, or None when it is outside (not simulated)."""
        full = os.path.abspath(os.fspath(path))
        if full == str(self.root):
            return ""
        if not full.startswith(str(self.root) + os.sep):
            return None
        return full[len(str(self.root)) + 1 :]

    def _tick(self, what: str) -> None:
        self.ops += 1
        if self.before_op is not None:
            self.before_op(what)

    def _inode_of(self, fd: int) -> Inode | None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        ino = self.sim_ino.get((st.st_dev, st.st_ino))
        if ino is None:
            raise UnknownFile(f"fd {fd} (inode {st.st_ino}) was not opened through fileio")
        return self.inodes[ino]

    def _mark_folder_synced(self, folder: str) -> None:
        for op in self.log:
            if not op.durable and folder in op.folders():
                op.durable = True

    # --- the file layer -----------------------------------------------------------------

    def open(self, path: StrPath, flags: int, mode: int = 0o777) -> int:
        with self.lock:
            rel = self.rel(path)
            if rel is None:
                return os.open(path, flags, mode)
            self._tick("open")
            existed = os.path.lexists(path)
            fd = os.open(path, flags, mode)
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                self.dir_fds[fd] = rel
                return fd
            if not existed:
                self.log.append(MetaOp("create", rel, ino=self._new_inode(st)))
            else:
                node = self._inode_of(fd)
                if node is not None and flags & os.O_TRUNC:
                    node.pending.append(("t", 0, b""))
            return fd

    def close(self, fd: int) -> None:
        with self.lock:
            self.dir_fds.pop(fd, None)
            os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self.lock:
            node = self._inode_of(fd)
            if node is None:
                return os.write(fd, data)
            self._tick("write")
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
                at = os.fstat(fd).st_size
            else:
                at = os.lseek(fd, 0, os.SEEK_CUR)
            n = os.write(fd, data)
            node.pending.append(("w", at, bytes(data[:n])))
            return n

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        with self.lock:
            node = self._inode_of(fd)
            if node is None:
                return os.pwrite(fd, data, offset)
            self._tick("pwrite")
            n = os.pwrite(fd, data, offset)
            node.pending.append(("w", offset, bytes(data[:n])))
            return n

    def ftruncate(self, fd: int, size: int) -> None:
        with self.lock:
            node = self._inode_of(fd)
            self._tick("ftruncate")
            os.ftruncate(fd, size)
            if node is not None:
                node.pending.append(("t", size, b""))

    def _sync(self, fd: int) -> None:
        folder = self.dir_fds.get(fd)
        if folder is not None:
            self._mark_folder_synced(folder)
            return
        node = self._inode_of(fd)
        if node is not None:
            node.durable = apply_ops(node.durable, node.pending)
            node.pending.clear()

    # The real syncs are skipped: the real disk's durability plays no part in the simulation.

    def fsync(self, fd: int) -> None:
        with self.lock:
            self._tick("fsync")
            self._sync(fd)

    def fdatasync(self, fd: int) -> None:
        with self.lock:
            self._tick("fdatasync")
            self._sync(fd)

    def syncfs(self, fd: int) -> bool:
        with self.lock:
            self._tick("syncfs")
            for node in self.inodes.values():
                node.durable = apply_ops(node.durable, node.pending)
                node.pending.clear()
            for op in self.log:
                op.durable = True
            return True

    def rename(self, src: StrPath, dst: StrPath) -> None:
        self._move(src, dst, os.rename)

    def replace(self, src: StrPath, dst: StrPath) -> None:
        self._move(src, dst, os.replace)

    def _move(self, src: StrPath, dst: StrPath, call: Callable[[StrPath, StrPath], None]) -> None:
        with self.lock:
            rs, rd = self.rel(src), self.rel(dst)
            if rs is None or rd is None:
                call(src, dst)
                return
            self._tick("rename")
            st = os.lstat(src)
            ino = self.sim_ino.get((st.st_dev, st.st_ino))
            if ino is None:
                raise UnknownFile(f"{rs} was not created through fileio")
            with open(src, "rb") as fh:
                self.versions.setdefault(rd, []).append(fh.read())
            call(src, dst)
            self.log.append(MetaOp("rename", rd, src=rs, ino=ino))

    def unlink(self, path: StrPath) -> None:
        with self.lock:
            rel = self.rel(path)
            if rel is None:
                os.unlink(path)
                return
            self._tick("unlink")
            os.unlink(path)
            self.log.append(MetaOp("unlink", rel))

    def mkdir(self, path: StrPath, mode: int = 0o777) -> None:
        with self.lock:
            rel = self.rel(path)
            if rel is None:
                os.mkdir(path, mode)
                return
            self._tick("mkdir")
            os.mkdir(path, mode)
            self.log.append(MetaOp("mkdir", rel))

    # --- power cuts ---------------------------------------------------------------------

    def crash_image(self, dest: Path) -> dict[str, int]:
        """Write into `dest` (a new folder) a state the disk may hold after a power cut now.
        Returns counts: changes and writes lost, files torn."""
        with self.lock:
            rng = self.rng
            undecided = [i for i, op in enumerate(self.log) if not op.durable]
            keep_upto = rng.randint(0, len(undecided))
            lost = set(undecided[keep_upto:])
            files = dict(self.base_files)
            dirs = set(self.base_dirs)
            for i, op in enumerate(self.log):
                if i in lost:
                    continue
                parent = os.path.dirname(op.path)
                if parent not in dirs:
                    continue  # its folder's own entry did not survive: nor does this one
                if op.kind == "mkdir":
                    dirs.add(op.path)
                elif op.kind == "create":
                    assert op.ino is not None
                    files[op.path] = op.ino
                elif op.kind == "rename":
                    assert op.src is not None and op.ino is not None
                    files.pop(op.src, None)
                    files[op.path] = op.ino
                elif op.kind == "unlink":
                    files.pop(op.path, None)
            counts = {"changesLost": len(lost), "writesLost": 0, "filesTorn": 0}
            contents: dict[int, bytes] = {}
            for ino in files.values():
                if ino not in contents:
                    contents[ino] = self._surviving(self.inodes[ino], counts)
            dest.mkdir(parents=True)
            for d in sorted(dirs, key=len):
                if d:
                    (dest / d).mkdir(mode=0o700, exist_ok=True)
            for rel, ino in files.items():
                if os.path.dirname(rel) in dirs:
                    p = dest / rel
                    p.write_bytes(contents[ino])
                    p.chmod(0o600)
            return counts

    def _surviving(self, node: Inode, counts: dict[str, int]) -> bytes:
        ops = node.pending
        if not ops:
            return node.durable
        rng = self.rng
        mode = rng.randrange(3)
        if mode == 0:  # a prefix of the writes
            kept = ops[: rng.randint(0, len(ops))]
        elif mode == 1:  # any subset, in order (holes read as zeros)
            kept = [op for op in ops if rng.random() < 0.5]
        else:  # a prefix whose last write is torn part-way
            kept = list(ops[: rng.randint(1, len(ops))])
            kind, at, chunk = kept[-1]
            if kind == "w" and len(chunk) > 1:
                kept[-1] = (kind, at, chunk[: rng.randrange(1, len(chunk))])
                counts["filesTorn"] += 1
        counts["writesLost"] += len(ops) - len(kept)
        return apply_ops(node.durable, kept)


class FaultyDisk(FileIO):
    """The real file system, with errors injected into chosen calls (in-process libfiu):
    `faults = {"pwrite": (errno.ENOSPC, 0.2)}` fails one pwrite in five with ENOSPC. Only files
    under `root` are affected. Sync failures are raised as SyncFailed, as production does."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = str(root.resolve())
        self.rng = rng
        self.faults: dict[str, tuple[int, float]] = {}
        self.injected = 0
        self.lock = threading.Lock()

    def _fail(self, call: str, fd: int | None = None, path: StrPath | None = None) -> None:
        fault = self.faults.get(call)
        if fault is None:
            return
        if path is not None and not os.path.abspath(os.fspath(path)).startswith(self.root):
            return
        if fd is not None and not os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
            return
        code, probability = fault
        with self.lock:
            if self.rng.random() >= probability:
                return
            self.injected += 1
        from daemon.store.fileio import SyncFailed

        kind = SyncFailed if call in ("fsync", "fdatasync", "syncfs") else OSError
        raise kind(code, os.strerror(code))

    def open(self, path: StrPath, flags: int, mode: int = 0o777) -> int:
        self._fail("open", path=path)
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._fail("write", fd=fd)
        return super().write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._fail("pwrite", fd=fd)
        return super().pwrite(fd, data, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        self._fail("ftruncate", fd=fd)
        super().ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        self._fail("fsync", fd=fd)
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._fail("fdatasync", fd=fd)
        super().fdatasync(fd)

    def rename(self, src: StrPath, dst: StrPath) -> None:
        self._fail("rename", path=dst)
        super().rename(src, dst)

    def replace(self, src: StrPath, dst: StrPath) -> None:
        self._fail("rename", path=dst)
        super().replace(src, dst)

    def mkdir(self, path: StrPath, mode: int = 0o777) -> None:
        self._fail("mkdir", path=path)
        super().mkdir(path, mode)
