"""The never-delete guard: an audit hook that refuses to let user data disappear.

sessiond promises that nothing under a state folder or a backup folder is ever deleted. Code review
cannot prove that, so the test suite (and, with `SESSIOND_DELETE_GUARD` set, the daemon and the
maintenance commands it runs as subprocesses) watches every removal with `sys.addaudithook` on
`os.remove`/`os.unlink`, `os.rmdir`, `shutil.rmtree` and `os.rename`/`os.replace`, and refuses
(PermissionError) and records each one that would make something disappear.

What may disappear, and why that loses nothing:
- our own temporary files: atomic_write's `.<name>.tmp-<pid>` and the importer's
  `.<name>.import-<pid>` (they never held anything that is not also somewhere else);
- an empty file: nothing in it can be lost (the store removes a new transcript again, once
  empty, when the batch that created it could not be written: store/open_transcripts.py);
- a socket file (not data; the daemon recreates it), and the search index in `<stateDir>/index/`
  (derived data that SPEC 2 says can be deleted and rebuilt at any time);
- an original that has a verified compressed copy: the guard itself decompresses
  `<file>.gz` (or, for a backup mirror, `<backup>/archive/<sessionId>/*.gz`) and compares the
  sha256 before it lets the original go, so it does not trust the code it is watching;
- a mirror's own folder `<backup>/<sessionId>/` once it is empty and the mirror lives on
  compressed in `<backup>/archive/<sessionId>/` (the retention sweep tidies it away).
A rename is a move, not a loss, unless it overwrites an existing file: that is allowed only when
our temporary file atomically replaces a file that is not a transcript or a mirror
(sessions.json, snapshots), because transcripts are never rewritten.

A folder is guarded when it holds `sessiond.lock`, or both `journal/` and `agents/` (a state
folder), or `sessiond-backup.json` (a backup mirror), or was registered with `watch`.
Audit hooks cannot be removed, so there is one guard per process (`GUARD`), installed once.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV = "SESSIOND_DELETE_GUARD"
BACKUP_MARKER = "sessiond-backup.json"
TEMP_NAME = re.compile(r"^\..+\.(?:tmp|import)-\d+$")
DERIVED = ("index",)  # <stateDir>/index/: the search index, "can be deleted and rebuilt" (SPEC 2)
_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "shutil.rmtree"})
_HASH_CHUNK = 1 << 20


class DeleteGuard:
    """Decides whether a removal is allowed; refuses and reports the ones that are not."""

    def __init__(self) -> None:
        self.installed = False
        self.enabled = True  # the test suite turns it on for the duration of each test only
        self.roots: set[str] = set()  # registered in addition to the detected ones
        self.violations: list[str] = []
        self.sinks: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._busy = threading.local()  # the guard's own file reads raise no events of interest

    # --- set-up -------------------------------------------------------------------------------

    def install(self) -> None:
        """Add the audit hook (once per process; hooks cannot be removed)."""
        if not self.installed:
            sys.addaudithook(self._hook)
            self.installed = True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Let a test damage a folder on purpose (e.g. lose a transcript)."""
        prev, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = prev

    def watch(self, path: Path) -> None:
        """Guard `path` even if it holds none of the marker files."""
        self.roots.add(os.path.abspath(path))

    # --- the hook -----------------------------------------------------------------------------

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in _EVENTS or not self.enabled or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            problem = self.check(event, args)
        finally:
            self._busy.on = False
        if problem is None:
            return
        with self._lock:
            self.violations.append(problem)
        for sink in list(self.sinks):
            sink(problem)
        raise PermissionError(errno.EPERM, f"sessiond delete guard: {problem}")

    def check(self, event: str, args: tuple[Any, ...]) -> str | None:
        """Why this operation would lose data, or None when it is allowed."""
        try:
            if event == "os.rename":
                return self._check_rename(_path(args[0], args[2]), _path(args[1], args[3]))
            path = _path(args[0], args[1] if len(args) > 1 else None)
        except (TypeError, ValueError, OSError):
            return None
        if path is None:
            return None
        if event == "shutil.rmtree":
            return self._check_tree(path)
        if event == "os.rmdir":
            return self._check_rmdir(path)
        return self._check_remove(path)

    def _check_remove(self, path: str) -> str | None:
        root = self.guarded_root(path)
        if root is None:
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None  # nothing there: nothing can disappear
        name = os.path.basename(path)
        if stat.S_ISSOCK(st.st_mode) or TEMP_NAME.match(name):
            return None
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return None  # seen empty by the guard itself, not taken on the caller's word
        if stat.S_ISREG(st.st_mode) and has_verified_copy(Path(path)):
            return None
        return f"remove {path} (under {root})"

    def _check_rmdir(self, path: str) -> str | None:
        root = self.guarded_root(path)
        if root is None or TEMP_NAME.match(os.path.basename(path)):
            return None
        if not os.path.isdir(path) or is_emptied_mirror_folder(path):
            return None
        return f"remove folder {path} (under {root})"

    def _check_tree(self, path: str) -> str | None:
        root = self.guarded_root(path) or self._root_inside(path)
        if root is None:
            return None
        return f"remove tree {path} (holds {root})"

    def _check_rename(self, src: str | None, dst: str | None) -> str | None:
        if src is None or dst is None:
            return None
        try:
            st = os.lstat(dst)
        except OSError:
            return None  # a move to a free name: the data is still there
        root = self.guarded_root(dst)
        if root is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            try:
                empty = not os.listdir(dst)
            except OSError:
                empty = False
            return None if empty else f"rename {src} over the folder {dst}"
        if TEMP_NAME.match(os.path.basename(src)) and not is_history_name(dst):
            return None  # atomic_write replacing derived data (sessions.json, snapshots)
        return f"rename {src} over {dst} (under {root}): the old content would be lost"

    # --- which folders are guarded ------------------------------------------------------------

    def guarded_root(self, path: str) -> str | None:
        """The guarded folder `path` is in (or is), or None; derived data is not guarded."""
        p = os.path.abspath(path)
        while True:
            if p in self.roots or is_guarded_folder(p):
                rel = os.path.relpath(os.path.abspath(path), p)
                if rel.split(os.sep)[0] in DERIVED:
                    return None
                return p
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent

    def _root_inside(self, path: str, depth: int = 4) -> str | None:
        base = os.path.abspath(path)
        for r in self.roots:
            if r.startswith(base + os.sep):
                return r
        for top, dirs, _files in os.walk(base):
            if is_guarded_folder(top):
                return top
            if top.count(os.sep) - base.count(os.sep) >= depth:
                dirs.clear()
        return None


def is_emptied_mirror_folder(path: str) -> bool:
    """`<backup>/<sessionId>/`, empty, with the mirror's compressed parts in the archive."""
    folder = os.path.abspath(path)
    root, name = os.path.split(folder)
    if name == "archive" or not os.path.isfile(os.path.join(root, BACKUP_MARKER)):
        return False
    try:
        if os.listdir(folder):
            return False
        kept = os.listdir(os.path.join(root, "archive", name))
    except OSError:
        return False
    return any(n.endswith(".gz") and not n.startswith(".") for n in kept)


def is_guarded_folder(p: str) -> bool:
    return (
        os.path.isfile(os.path.join(p, "sessiond.lock"))
        or os.path.isfile(os.path.join(p, BACKUP_MARKER))
        or (os.path.isdir(os.path.join(p, "journal")) and os.path.isdir(os.path.join(p, "agents")))
    )


def is_history_name(path: str) -> bool:
    """Transcripts and mirror files: never replaced, only appended to."""
    name = os.path.basename(path)
    return ".jsonl" in name and name not in ("index.jsonl",)


def _path(p: Any, dir_fd: Any) -> str | None:
    if isinstance(p, int):
        return None
    s = os.fsdecode(os.fspath(p))
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(s):
        s = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), s)
    return os.path.abspath(s)


def sha256_of(path: Path, *, gz: bool = False) -> str:
    h = hashlib.sha256()
    opener: Any = gzip.open if gz else open
    with opener(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def compressed_copies(path: Path) -> list[Path]:
    """Where a verified compressed copy of `path` may be (see the module docstring)."""
    out = [path.with_name(path.name + ".gz")]
    if path.name == "history.jsonl":
        folder = path.parent.parent / "archive" / path.parent.name
        if folder.is_dir():
            out.extend(sorted(folder.glob("*.gz")))
    return out


def has_verified_copy(path: Path) -> bool:
    """True when a compressed copy decompresses to exactly `path`'s bytes."""
    try:
        want = sha256_of(path)
    except OSError:
        return False
    for c in compressed_copies(path):
        try:
            if c.is_file() and sha256_of(c, gz=True) == want:
                return True
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
    return False


GUARD = DeleteGuard()


def install_from_env(env: dict[str, str] | None = None) -> bool:
    """Install the guard in this process when `SESSIOND_DELETE_GUARD` is set (tests set it for
    the daemons and commands they start). Its value: `1` refuses and logs, `abort` also aborts
    the process, a path also appends each refusal to that file. Returns whether it is on."""
    value = (os.environ if env is None else env).get(ENV, "")
    if not value or value == "0":
        return False
    if GUARD.installed:
        return True  # already watching (the test process itself)

    def report(problem: str) -> None:
        import structlog

        structlog.get_logger("daemon.guard").critical("guard.violation", problem=problem)
        sys.stderr.write(f"sessiond delete guard: refused: {problem}\n")
        if value.startswith("/"):
            with open(value, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {problem}\n")
        if value == "abort":
            os.abort()

    GUARD.sinks.append(report)
    GUARD.install()
    return True
