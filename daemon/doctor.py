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

import contextlib
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from daemon import backfill
from daemon.backup import backup_root, excluded
from daemon.config import Config, load_config
from daemon.doctor_holes import check_holes
from daemon.errors import ConfigError
from daemon.lock import LOCK_NAME
from daemon.spool import spool_dir
from daemon.store import archive, transcript
from daemon.store import backup as mirror_files
from daemon.store.archive import ArchiveRecord
from daemon.store.backup import Job, Source, key_of_line
from daemon.store.fsutil import FILE_MODE, atomic_write, fsync_dir, write_all
from daemon.store.registry import (
    SESSIONS_JSON,
    AgentRegistry,
    fill_registry,
    is_active_transcript_name,
    load_agent,
    read_registry,
    rebuild_from_transcripts,
    session_file_name,
)
from daemon.verify import session_id_of

LEVELS = ("ok", "info", "warning", "error")
SHOW = 5  # paths named in one finding's message


@dataclass(slots=True)
class Finding:
    """One thing doctor found: how bad, what it is, and what --repair does about it."""

    check: str
    level: str  # ok | info | warning | error
    message: str
    action: str | None = None
    fix: Callable[[], object] | None = field(default=None, repr=False)
    outcome: str | None = None  # after --repair: "repaired" or "failed: why"

    @property
    def problem(self) -> bool:
        """Counts against the exit code while unrepaired."""
        return self.level in ("warning", "error") and self.outcome != "repaired"

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "message": self.message,
            "action": self.action,
            "outcome": self.outcome,
        }

    def render(self, repairing: bool) -> str:
        line = f"{self.level:8} {self.check:15} {self.message}"
        if self.action and self.outcome:
            line += f"\n{'':24} {self.outcome}: {self.action}"
        elif self.action:
            line += f"\n{'':24} {'repair' if repairing else 'would'}: {self.action}"
        return line


@dataclass(slots=True)
class DoctorReport:
    state_dir: Path
    findings: list[Finding]
    repaired: bool

    @property
    def ok(self) -> bool:
        return not any(f.problem for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "stateDir": str(self.state_dir),
            "ok": self.ok,
            "repair": self.repaired,
            "findings": [f.to_json() for f in self.findings],
        }

    def render(self) -> str:
        out = [f"sessiond doctor: {self.state_dir}"]
        out += [f.render(self.repaired) for f in self.findings]
        problems = [f for f in self.findings if f.problem]
        if not problems:
            out.append("no problems" + (" left" if self.repaired else ""))
        elif self.repaired:
            out.append(f"{len(problems)} problem(s) could not be repaired")
        else:
            fixable = sum(1 for f in problems if f.fix is not None)
            out.append(
                f"{len(problems)} problem(s); `sessiond doctor --repair` repairs {fixable} "
                "(only by moving, adopting and appending; nothing is deleted)"
            )
        return "\n".join(out)


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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        for agent_dir in self._agent_folders():
            self.check_agent(agent_dir.name, agent_dir / "sessions")
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

    def _agent_folders(self) -> list[Path]:
        agents = self.state_dir / "agents"
        if not agents.is_dir():
            return []
        return sorted(Path(e.path) for e in os.scandir(agents) if e.is_dir())

    def _files(self) -> list[tuple[str, Path, bool]]:
        """(agent, path, archived) of every plain transcript."""
        from daemon.verify import transcript_files

        return [(f.agent_id, f.path, f.archived) for f in transcript_files(self.state_dir)]

    def check_torn_tails(self) -> None:
        paths = [(p, archived) for _a, p, archived in self._files() if not p.name.endswith(".gz")]
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
            rel = self._rel(path)
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
            names = ", ".join(self._rel(p) for p in sorted(zeroed)[:SHOW])
            self.add(
                "torn-tail",
                "info",
                f"{len(zeroed)} torn fragment(s) hold only zero bytes ({size} bytes in all; "
                f"nothing to recover; may be removed by hand): {names}",
            )

    def check_agent(self, agent_id: str, folder: Path) -> None:
        if not folder.is_dir():
            return
        reg, problem = self._registry(agent_id, folder)
        self._check_entries(agent_id, folder, reg)
        self._check_unregistered(agent_id, folder, reg, rebuilt=problem is not None)
        self._check_index(agent_id, folder)

    def _registry(self, agent_id: str, folder: Path) -> tuple[AgentRegistry, str | None]:
        """The registry as the daemon will see it (rebuilt in memory when it cannot be read)."""
        path = folder / SESSIONS_JSON
        doc, problem = read_registry(path)
        reg = AgentRegistry(agent_id, folder)
        if doc is not None:
            fill_registry(reg, doc)
            return reg, None
        rebuild_from_transcripts(self.state_dir, reg)
        if path.exists() or reg.sessions:

            def fix(agent_id: str = agent_id, folder: Path = folder) -> None:
                new, _ = load_agent(self.state_dir, agent_id, folder)  # keeps a corrupt copy
                new.save(new.serialize())

            self.add(
                "registry",
                "error" if path.exists() else "warning",
                f"agents/{agent_id}/sessions/sessions.json {problem}",
                f"rebuild it from the transcript headers ({len(reg.sessions)} session(s))"
                + (
                    f", keeping the old one as {SESSIONS_JSON}.corrupt-<ms>"
                    if path.exists()
                    else ""
                ),
                fix,
            )
        return reg, problem

    def _check_entries(self, agent_id: str, folder: Path, reg: AgentRegistry) -> None:
        root = backup_root(self.cfg, self.state_dir)
        archived = {r.sessionId for r in archive.read_index(folder)}
        stale: list[str] = []
        missing = 0
        for key, st in reg.sessions.items():
            name = session_file_name(st.entry, st.session_id)
            path = folder / name
            if path.exists():
                continue
            missing += 1
            if st.session_id in archived or (folder / archive.ARCHIVE_DIR / name).exists():
                stale.append(key)
                continue
            has_mirror = mirror_files.last_record(root, st.session_id) is not None
            if has_mirror:
                action = "rebuild the transcript from the backup mirror"
            else:
                action = (
                    "begin the transcript again with its header (the daemon does the same at "
                    "the session's next message; its earlier entries are not in the backup)"
                )
            self.add(
                "registry",
                "error",
                f"{key} names {self._rel(path)}, which does not exist",
                action,
                partial(self._recreate, path, st.session_id, key, agent_id, has_mirror),
            )
        if stale:

            def drop(folder: Path = folder, keys: tuple[str, ...] = tuple(stale)) -> None:
                path = folder / SESSIONS_JSON
                doc, _problem = read_registry(path)  # with its change log, which it then folds in
                doc = doc or {}
                for k in keys:
                    doc.pop(k, None)
                atomic_write(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))

            self.add(
                "registry",
                "warning",
                f"agents/{agent_id}: {len(stale)} registry entr(ies) name sessions that are "
                f"archived: {', '.join(stale[:SHOW])}",
                "take them out of sessions.json (their keys begin new sessions with the next "
                "message; the archives stay readable)",
                drop,
            )
        if not missing:
            self.add(
                "registry",
                "ok",
                f"agents/{agent_id}: {len(reg.sessions)} session(s), every transcript present",
            )

    def _move(
        self, path: Path, agent_id: str, reason: str, sid: str, key: str | None, succ: str | None
    ) -> ArchiveRecord:
        """Adopt a transcript into archive/ (a rename, synced) with its index line."""
        return archive.archive_transcript(
            path,
            agent_id,
            reason,
            session_id=sid,
            session_key=key,
            predecessor=None,
            successor=succ,
            now=now_ms(),
        )

    def _recreate(self, path: Path, sid: str, key: str, agent_id: str, from_mirror: bool) -> None:
        from daemon.restore import rebuild

        root = backup_root(self.cfg, self.state_dir)
        cwd = str(self.state_dir / "workspace")
        s = rebuild(root, sid, cwd) if from_mirror else None
        lines = s.lines if s is not None else [transcript.header_line(sid, key, now_ms(), cwd)]
        _write_new(path, lines)
        backfill.mirror_session(self.cfg, root, Job(sid, agent_id, key, None, (path,), None, None))

    def _check_unregistered(
        self, agent_id: str, folder: Path, reg: AgentRegistry, *, rebuilt: bool
    ) -> None:
        named = {session_file_name(st.entry, st.session_id) for st in reg.sessions.values()}
        orphans = 0
        openclaw = []
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if not e.is_file() or e.name.startswith("."):
                continue
            path = Path(e.path)
            if archive.OPENCLAW_SUFFIX.match(e.name):
                openclaw.append(e.name)
                continue
            if not is_active_transcript_name(e.name) or e.name in named:
                continue
            header = transcript.read_header(path) or {}
            sid = str(header.get("id") or e.name.split(".jsonl")[0])
            key = header.get("sessionKey") if isinstance(header.get("sessionKey"), str) else None
            closed = archive.closing_entry(path)
            if closed is not None:
                reason = str(closed.get("reason") or "reset")
                succ = closed.get("successor") if isinstance(closed.get("successor"), str) else None
                self.add(
                    "half-done-move",
                    "warning",
                    f"{self._rel(path)} was closed ({reason}) but not yet moved into archive/",
                    f"move it into archive/ with its index line (reason {reason})",
                    partial(self._move, path, agent_id, reason, sid, key, succ),
                )
                continue
            orphans += 1
            self.add(
                "orphan",
                "warning",
                f"{self._rel(path)} is not named by sessions.json"
                + (f" (its key {key} belongs to another session)" if key in reg.sessions else ""),
                "adopt it into archive/ with reason orphan (readable with sessions history --id)",
                partial(self._move, path, agent_id, "orphan", sid, key, None),
            )
        if openclaw:
            self.add(
                "half-done-move",
                "info",
                f"agents/{agent_id}: {len(openclaw)} OpenClaw archive(s) not yet adopted: "
                f"{', '.join(openclaw[:SHOW])}",
                "adopt them into archive/ (the daemon does the same at start-up)",
                partial(archive.adopt_openclaw_archives, folder, agent_id, {}, now_ms()),
            )
        if not orphans:
            self.add("orphan", "ok", f"agents/{agent_id}: no orphan transcripts")

    def _check_index(self, agent_id: str, folder: Path) -> None:
        arch = folder / archive.ARCHIVE_DIR
        if not arch.is_dir():
            return
        for p in archive.missing_index_entries(folder):
            self.add(
                "half-done-move",
                "warning",
                f"{self._rel(p)} is in archive/ without an index line (a crash after the move)",
                "append its index line",
                partial(archive.index_orphan, p, agent_id, now_ms()),
            )
        latest: dict[str, ArchiveRecord] = {}
        for rec in archive.read_index(folder):
            latest[rec.sessionId] = rec
        root = backup_root(self.cfg, self.state_dir)
        for rec in latest.values():
            if rec.reason == archive.MISSING_TRANSCRIPT:
                continue  # imported from a registry row whose transcript was already gone
            path = arch / rec.file
            plain = arch / rec.file.removesuffix(".gz")
            if path.is_file():
                if path != plain and plain.is_file():
                    self.add(
                        "half-done-move",
                        "info",
                        f"{self._rel(plain)} is still beside its verified {path.name} (a "
                        "retention sweep was interrupted)",
                        None,
                    )
                continue
            if plain.is_file():
                self.add(
                    "half-done-move",
                    "warning",
                    f"the index names {rec.file}, which a crash kept from being written; "
                    f"{plain.name} is there and is what readers use",
                    f"append an index line naming {plain.name} (the next sweep compresses it)",
                    partial(archive.append_index, folder, [replace(rec, file=plain.name)]),
                )
                continue
            if mirror_files.last_record(root, rec.sessionId) is not None:
                self.add(
                    "registry",
                    "error",
                    f"archived session {rec.sessionId}: {rec.file} is missing",
                    "rebuild it from the backup mirror as archive/"
                    f"{plain.name} and append its index line",
                    partial(self._rearchive, rec, plain, folder),
                )
            else:
                self.add(
                    "registry",
                    "error",
                    f"archived session {rec.sessionId}: {rec.file} is missing and not in the "
                    "backup mirror",
                )

    def _rearchive(self, rec: ArchiveRecord, path: Path, folder: Path) -> None:
        from daemon.restore import rebuild

        s = rebuild(backup_root(self.cfg, self.state_dir), rec.sessionId, "")
        if s is None:
            raise FileNotFoundError(2, "the mirror has no records for it", rec.sessionId)
        _write_new(path, s.lines)
        stats = archive.transcript_stats(path)
        archive.append_index(
            folder, [replace(rec, file=path.name, bytes=stats.bytes, sha256=stats.sha256)]
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
        for agent_id, path, _archived in self._files():
            first = _first_line(path)
            sid = session_id_of(path, first)
            if sid in seen:
                continue
            seen.add(sid)
            header = _json(first)
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
            f"{self._rel(p)} ({oct(stat.S_IMODE(p.lstat().st_mode))})" for p, _ in loose[:SHOW]
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

    def _rel(self, p: Path) -> str:
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


def _first_line(path: Path) -> bytes | None:
    from daemon.verify import _first_line as first

    return first(path)


def _json(line: bytes | None) -> dict[str, Any]:
    if not line:
        return {}
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


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


def _write_new(path: Path, lines: list[bytes]) -> None:
    """A transcript that must not exist yet (O_EXCL), synced with its folder."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, b"".join(line + b"\n" for line in lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


def run_doctor(state_dir: Path, config_path: Path | None, *, repair: bool) -> DoctorReport:
    """Examine (and with `repair`, repair) a state folder. The caller takes the lock for repair."""
    d = Doctor(state_dir, config_path, own_lock=repair)
    d.examine()
    if repair:
        d.repair()
    return DoctorReport(state_dir, d.findings, repair)
