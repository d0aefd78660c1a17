"""`sessiond doctor [--repair]`: what is wrong with a state folder, and repairs that lose nothing.

Checks: the config; the lock (is a daemon running?); permissions (files 0600, folders 0700);
torn last lines; the registry against the transcripts (entries without a file); orphan
transcripts (no registry entry names them); half-done moves (a closed transcript still in
sessions/, an archived file without its index line, an index line naming a file a crash kept
from being written); FTS5 in this Python's SQLite; the backup mirror's lag.

Without `--repair` nothing is changed. `--repair` (refused while a daemon holds the lock) only
moves, adopts and appends: a torn fragment is moved into a side file, an orphan is adopted into
archive/ (reason "orphan"), a half-done move is finished, a missing index line or mirror record is
appended, a lost transcript is rebuilt from the backup mirror. `sessions.json` (derived data) is
rewritten atomically when it names an archived session or cannot be read (the unreadable copy is
kept), and permissions are tightened. Nothing is ever deleted.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson

from daemon import backfill
from daemon.backup import backup_root
from daemon.config import Config
from daemon.config_load import load_config
from daemon.core.exclusions import excluded
from daemon.core.ids import now_ms
from daemon.doctor_findings import SHOW, DoctorReport, Finding
from daemon.doctor_holes import check_holes
from daemon.doctor_registry import check_agent
from daemon.errors import ConfigError
from daemon.lock import LOCK_NAME
from daemon.spool import spool_dir
from daemon.store import archive, transcript
from daemon.store import backup as mirror_files
from daemon.store.backup import Job, Source, key_of_line
from daemon.store.fsutil import FILE_MODE
from daemon.store.transcript import json_object
from daemon.verify import first_line, session_id_of


def lock_holder(state_dir: Path) -> str | None:
    """The pid holding the state folder's lock, or None (reads only; creates nothing)."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Doctor:
    """Examines one state folder; `repair` carries out the findings' fixes in order."""

    def __init__(
        self, state_dir: Path, config_path: Path | None, *, own_lock: bool = False
    ) -> None:
        self.state_dir = state_dir
        self.own_lock = own_lock  # --repair: this process holds the lock
        self.config_path = config_path
        self.cfg = Config()
        self.findings: list[Finding] = []
        self.running = False

    def add(
        self,
        check: str,
        level: str,
        message: str,
        action: str | None = None,
        fix: Callable[[], object] | None = None,
    ) -> None:
        self.findings.append(Finding(check, level, message, action, fix))

    # --- the checks ---------------------------------------------------------------------------

    def examine(self) -> list[Finding]:
        self.findings = []
        self.check_config()
        self.check_lock()
        if not self.state_dir.is_dir():
            self.add("state", "error", f"{self.state_dir} does not exist")
            return self.findings
        self.check_torn_tails()
        for agent_dir in self.agent_folders():
            check_agent(self, agent_dir.name, agent_dir / "sessions")
        self.check_fts5()
        self.check_mirror()
        check_holes(self)
        self.check_mirror_states()
        self.check_permissions()
        return self.findings

    def check_config(self) -> None:
        where = str(self.config_path) if self.config_path else "built-in defaults"
        try:
            self.cfg = load_config(self.config_path)
        except ConfigError as e:
            self.add("config", "error", f"invalid (the checks below use the defaults): {e}")
            return
        self.add("config", "ok", f"valid: {where}")

    def check_lock(self) -> None:
        if self.own_lock:
            self.add("lock", "ok", "taken by this doctor: no daemon is running on this folder")
            return
        holder = lock_holder(self.state_dir)
        self.running = holder is not None
        if holder is None:
            self.add("lock", "ok", "not held: no daemon is running on this folder")
        else:
            self.add(
                "lock",
                "info",
                f"held by pid {holder}: a daemon is running (files it is writing may look "
                "unfinished; --repair is refused)",
            )

    def agent_folders(self) -> list[Path]:
        agents = self.state_dir / "agents"
        if not agents.is_dir():
            return []
        return sorted(Path(e.path) for e in os.scandir(agents) if e.is_dir())

    def transcripts(self) -> list[tuple[str, Path, bool]]:
        """(agent, path, archived) of every plain transcript."""
        from daemon.verify import transcript_files

        return [(f.agent_id, f.path, f.archived) for f in transcript_files(self.state_dir)]

    def check_torn_tails(self) -> None:
        paths = [
            (p, archived) for _a, p, archived in self.transcripts() if not p.name.endswith(".gz")
        ]
        root = backup_root(self.cfg, self.state_dir)
        paths += [(mirror_files.live_path(root, s), True) for s in _live_mirrors(root)]
        found = 0
        for path, archived in paths:
            try:
                size = path.stat().st_size
                with open(path, "rb") as f:
                    f.seek(max(0, size - 1))
                    last = f.read(1)
            except OSError:
                continue
            if size == 0 or last == b"\n":
                continue
            found += 1
            rel = self.rel(path)
            if self.running and not archived:
                self.add("torn-tail", "info", f"{rel} ends in a partial line (may be in flight)")
                continue
            self.add(
                "torn-tail",
                "error",
                f"{rel} ends in a partial line (a crash mid-write)",
                f"move the fragment into {path.name}.torn-<time> and cut it off",
                partial(transcript.repair_torn_tail, path, now_ms()),
            )
        if not found:
            self.add("torn-tail", "ok", "every transcript and mirror ends with a complete line")
        self.check_zeroed_fragments()

    def check_zeroed_fragments(self) -> None:
        """Torn fragments (`*.torn-<time>`) holding only zero bytes, as power cuts left them
        before the start-up repair stopped keeping such tails: nothing in them to recover.
        Reported, never removed (removing files is the operator's call)."""
        zeroed: list[Path] = []
        size = 0
        agents = self.state_dir / "agents"
        for folder, _dirs, files in os.walk(agents) if agents.is_dir() else []:
            for name in files:
                if ".torn-" not in name:
                    continue
                p = Path(folder) / name
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                if not data.strip(b"\0"):
                    zeroed.append(p)
                    size += len(data)
        if zeroed:
            names = ", ".join(self.rel(p) for p in sorted(zeroed)[:SHOW])
            self.add(
                "torn-tail",
                "info",
                f"{len(zeroed)} torn fragment(s) hold only zero bytes ({size} bytes in all; "
                f"nothing to recover; may be removed by hand): {names}",
            )

    def check_fts5(self) -> None:
        try:
            con = sqlite3.connect(":memory:")
            try:
                con.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
            finally:
                con.close()
        except sqlite3.Error as e:
            self.add(
                "fts5",
                "warning",
                f"SQLite {sqlite3.sqlite_version} has no FTS5 ({e}): memory.search cannot work",
            )
            return
        self.add("fts5", "ok", f"SQLite {sqlite3.sqlite_version} has FTS5")

    def check_mirror(self) -> None:
        bc = self.cfg.sessions.backup
        if not bc.enabled:
            self.add("mirror", "ok", "the backup mirror is disabled (sessions.backup.enabled)")
            return
        root = backup_root(self.cfg, self.state_dir)
        behind: list[Job] = []
        seen: set[str] = set()
        for agent_id, path, _archived in self.transcripts():
            first = first_line(path)
            sid = session_id_of(path, first)
            if sid in seen:
                continue
            seen.add(sid)
            header = json_object(first or b"") or {}
            key = header.get("sessionKey") if isinstance(header.get("sessionKey"), str) else None
            if excluded(key, bc.exclude_patterns):
                continue
            last = mirror_files.last_record(root, sid)
            want = _last_key(path)
            if want is None or (last is not None and mirror_files.key_of_record(last) == want):
                continue
            behind.append(Job(sid, agent_id, key, None, (path,), None, None))
        if not behind:
            self.add("mirror", "ok", f"{root}: every session is mirrored")
            return
        level = "info" if self.running else "warning"
        ids = ", ".join(j.session_id for j in behind[:SHOW])
        self.add(
            "mirror",
            level,
            f"{root}: {len(behind)} session(s) behind their transcripts: {ids}"
            + (" (the running daemon catches up)" if self.running else ""),
            "append what is missing to the mirror",
            partial(mirror_files.catch_up, root, behind),
        )

    def check_mirror_states(self) -> None:
        """Archived sessions the mirror does not record as such (a restore would revive them)."""
        if diffs := backfill.misstated(self.cfg, self.state_dir):
            self.add(
                "mirror",
                "info" if self.running else "warning",  # the daemon records them as it starts
                f"{len(diffs)} session state(s) wrong in the mirror: {'; '.join(diffs[:SHOW])}",
                "write the state records of the archived sessions",
                partial(backfill.record_states, self.cfg, self.state_dir),
            )

    def check_permissions(self) -> None:
        loose: list[tuple[Path, int]] = []
        spool = spool_dir(self.cfg.daemon.spool.dir, self.state_dir)
        roots = [self.state_dir]
        root = backup_root(self.cfg, self.state_dir)
        if root.is_dir() and not _inside(root, self.state_dir):
            roots.append(root)
        for top in roots:
            for folder, dirs, files in os.walk(top):
                here = Path(folder)
                if _inside(here, spool):
                    dirs.clear()  # shared with adapters' group on purpose (docs/operations.md)
                    continue
                mode = stat.S_IMODE(here.lstat().st_mode)
                allowed = 0o750 if here == self.state_dir else 0o700  # systemd StateDirectory
                if mode & ~allowed & 0o777:
                    loose.append((here, 0o700))
                for name in files:
                    p = here / name
                    try:
                        st = p.lstat()
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue  # the socket has its own mode (daemon.socketMode)
                    if stat.S_IMODE(st.st_mode) & 0o077:
                        loose.append((p, FILE_MODE))
        if not loose:
            self.add("permissions", "ok", "files 0600, folders 0700")
            return

        def tighten(items: tuple[tuple[Path, int], ...] = tuple(loose)) -> None:
            for p, mode in items:
                # An earlier fix of the same run may have moved the file (an orphan adopted
                # into archive/): tighten it where it is now.
                where = p if p.exists() else archive.locate_transcript(p)
                if where.exists():
                    os.chmod(where, mode, follow_symlinks=False)

        names = ", ".join(
            f"{self.rel(p)} ({oct(stat.S_IMODE(p.lstat().st_mode))})" for p, _ in loose[:SHOW]
        )
        self.add(
            "permissions",
            "warning",
            f"{len(loose)} file(s) or folder(s) open to group or others: {names}",
            "chmod files to 0600 and folders to 0700",
            tighten,
        )

    # --- repairing ----------------------------------------------------------------------------

    def repair(self) -> None:
        """Carry out every fix, in the order found (the caller holds the lock)."""
        for f in self.findings:
            if f.fix is None:
                continue
            try:
                f.fix()
            except (OSError, ValueError) as e:
                f.outcome = f"failed: {e}"
            else:
                f.outcome = "repaired"
        # Archives that the repairs made (adopted, indexed) get their state records too.
        if error := backfill.try_record_states(self.cfg, self.state_dir):
            self.add("mirror", "warning", error)

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.state_dir))
        except ValueError:
            return str(p)


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.relative_to(folder)
    except ValueError:
        return False
    return True


def _live_mirrors(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(
        e.name
        for e in os.scandir(root)
        if e.is_dir()
        and e.name != mirror_files.ARCHIVE
        and (Path(e.path) / "history.jsonl").exists()
    )


def _last_key(path: Path) -> str | None:
    """The identity of a transcript's last complete line (what the mirror must end with)."""
    try:
        src = Source((path,))
    except FileNotFoundError:
        return None
    try:
        for _off, line in src.lines_backwards(src.size()):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            return key_of_line(obj, line)
    finally:
        src.close()
    return None


def run_doctor(state_dir: Path, config_path: Path | None, *, repair: bool) -> DoctorReport:
    """Examine (and with `repair`, repair) a state folder. The caller takes the lock for repair."""
    d = Doctor(state_dir, config_path, own_lock=repair)
    d.examine()
    if repair:
        d.repair()
    return DoctorReport(state_dir, d.findings, repair)
