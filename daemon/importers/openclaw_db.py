"""Reading an OpenClaw 2026.9 agent database (`agents/<id>/agent/openclaw-agent.sqlite`).

Opened read-only with the standard library's sqlite3 (see `AgentDatabase`). `session_nodes`
gives each key's current session and its registry entry; `session_windows` chains the sessions
of a key; `transcript_events` holds every event of a session in `seq` order (`event_json`, or
zstd in `event_zstd`); `session_transcript_archives` keeps deleted sessions as zstd blobs (the
same bytes as the `.zst` file OpenClaw publishes beside the sessions); a cold archive holds the
events of a session that were moved out of `transcript_events`.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from daemon.importers.events import (
    MARKER_REASONS,
    ZSTD_MAGIC,
    Ending,
    EventMeta,
    EventSource,
    event_line,
    events_from_jsonl,
    header_of,
    meta_of,
    parse_archive_name,
    plan_session,
    zstd_decompress,
)
from daemon.importers.plan import Plan, PlannedTranscript, Progress

AGENT_DB = "openclaw-agent.sqlite"


@dataclass(slots=True)
class AgentScan:
    """One source agent being read, and the session ids its database already gave."""

    agent_id: str
    folder: Path  # agents/<id>
    # session ids planned from the agent database (or a published .zst of it): a JSONL file of
    # the same session is an older copy of the same data
    claimed: set[str] = field(default_factory=set)


class OpenClawSource(Protocol):
    """What reading a database needs of the folder's reader (openclaw.OpenClawSource). A
    Protocol, so that this module does not import the one that imports it."""

    plan: Plan
    progress: Progress
    dbs: list[AgentDatabase]

    def rel(self, path: Path) -> str: ...

    def problem(self, path: Path | str, reason: str) -> None: ...

    def skip(self, path: Path | str, reason: str) -> None: ...

    def remember(self, path: Path) -> None: ...


def registry_entry_from_node(
    entry: dict[str, Any], window: dict[str, Any] | None
) -> dict[str, Any]:
    """A 2026.9 `session_nodes.entry_json` as a `sessions.json` entry.

    The entry already has the 2026.6 fields; delivery data moved under `delivery`, so the
    2026.6 spellings (`origin`, `deliveryContext`, `lastChannel`, ...) are filled in from it when
    absent, for readers that know only those. `sessionFile` is set by the writer.
    """
    out = dict(entry)
    delivery = entry.get("delivery") if isinstance(entry.get("delivery"), dict) else {}
    assert isinstance(delivery, dict)
    ctx = delivery.get("context") if isinstance(delivery.get("context"), dict) else None
    origin = delivery.get("origin") if isinstance(delivery.get("origin"), dict) else None
    if origin is not None:
        out.setdefault("origin", origin)
    if ctx is not None:
        out.setdefault("deliveryContext", ctx)
        for src, dst in (
            ("channel", "lastChannel"),
            ("to", "lastTo"),
            ("accountId", "lastAccountId"),
            ("threadId", "lastThreadId"),
        ):
            if ctx.get(src) is not None:
                out.setdefault(dst, ctx[src])
    if window is not None:
        if window.get("channel"):
            out.setdefault("lastChannel", window["channel"])
        if window.get("account_id"):
            out.setdefault("lastAccountId", window["account_id"])
        if window.get("chat_type"):
            out.setdefault("chatType", window["chat_type"])
    return out


class AgentDatabase:
    """A 2026.9 agent database, open read-only for the life of the import (context manager).

    The database is opened with `immutable=1`, which creates no -wal or -shm file beside it.
    That would ignore a -wal (or hot -journal) holding committed data not yet checkpointed, so
    in that case the database and its side files are copied to a private temporary folder and
    the copy is opened instead; the temporary folder is removed on exit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.conn: sqlite3.Connection | None = None
        self.copied = False

    def __enter__(self) -> AgentDatabase:
        sides = [
            p
            for p in (self.path.with_name(self.path.name + s) for s in ("-wal", "-journal"))
            if p.is_file() and p.stat().st_size > 0
        ]
        try:
            if sides:
                self.tmp = tempfile.TemporaryDirectory(prefix="sessiond-import-")
                dest = Path(self.tmp.name) / self.path.name
                for p in [self.path, *sides]:
                    shutil.copyfile(p, Path(self.tmp.name) / p.name)
                self.copied = True
                self.conn = sqlite3.connect(dest)
            else:
                uri = f"file:{quote(str(self.path))}?mode=ro&immutable=1"
                self.conn = sqlite3.connect(uri, uri=True)
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except (sqlite3.Error, OSError):
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self.conn is not None
        self.conn.row_factory = sqlite3.Row
        return self.conn.execute(sql, args).fetchall()

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))

    def event_text(self, row: sqlite3.Row) -> str:
        if row["event_json"] is not None:
            return str(row["event_json"])
        if row["event_zstd"] is None:
            raise ValueError(f"event {row['seq']} has neither event_json nor event_zstd")
        return zstd_decompress(bytes(row["event_zstd"])).decode()

    def session_events(self, session_id: str, cold: tuple[list[bytes], int] | None) -> EventSource:
        """The events of one session: a cold archive's lines (if any), then the live rows
        after the cold archive's `last_seq`."""
        after = cold[1] if cold else -1
        cold_lines = cold[0] if cold else None
        seqs: list[int] = []
        metas: list[EventMeta] = []
        header: dict[str, Any] | None = None
        prefix: list[bytes] = []
        if cold_lines:
            header = header_of(cold_lines[0])
            prefix = cold_lines[1:] if header is not None else list(cold_lines)
            metas = [meta_of(i, line) for i, line in enumerate(prefix)]
        assert self.conn is not None
        self.conn.row_factory = sqlite3.Row
        cur = self.conn.execute(
            "SELECT seq, event_json, event_zstd FROM transcript_events "
            "WHERE session_id = ? AND seq > ? ORDER BY seq",
            (session_id, after),
        )
        first_row = True
        for row in cur:
            line = event_line(self.event_text(row))
            if first_row and header is None and not prefix:
                first_row = False
                h = header_of(line)
                if h is not None:
                    header = h
                    continue
            first_row = False
            metas.append(meta_of(len(metas), line))
            seqs.append(int(row["seq"]))
        n_prefix = len(prefix)

        def lines(start: int, stop: int) -> Iterator[bytes]:
            if start < n_prefix:
                yield from prefix[start : min(stop, n_prefix)]
            a, b = max(start, n_prefix) - n_prefix, stop - n_prefix
            if a >= b:
                return
            assert self.conn is not None
            self.conn.row_factory = sqlite3.Row
            rows = self.conn.execute(
                "SELECT seq, event_json, event_zstd FROM transcript_events "
                "WHERE session_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (session_id, seqs[a], seqs[b - 1]),
            )
            for row in rows:
                yield event_line(self.event_text(row))

        return EventSource(header, metas, lines)


# ---------------------------------------------------------------------------------------------
# Planning an agent database's sessions


def read_database(src: OpenClawSource, scan: AgentScan, path: Path) -> None:
    try:
        src.remember(path)
        for side in ("-wal", "-journal"):
            p = path.with_name(path.name + side)
            if p.exists():
                src.remember(p)
        db = AgentDatabase(path).__enter__()
    except (sqlite3.Error, OSError) as e:
        src.problem(path, f"could not open the agent database: {e}")
        return
    src.dbs.append(db)
    if db.copied:
        src.plan.notes.append(
            f"{src.rel(path)} had a -wal/-journal with data; read through a private copy"
        )
    needed = ("session_nodes", "session_windows", "transcript_events")
    missing = [t for t in needed if not db.has_table(t)]
    if missing:
        src.problem(path, f"not an OpenClaw agent database (no {', '.join(missing)})")
        return
    try:
        plan_database(src, scan, db, path)
    except (sqlite3.Error, ValueError) as e:
        src.problem(path, f"could not read the agent database: {e}")


def current_sessions(
    src: OpenClawSource, db: AgentDatabase, where: str, windows: dict[str, dict[str, Any]]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Session id -> (key, registry entry) for each key's current session (`session_nodes`)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for n in db.rows("SELECT session_key, current_session_id, entry_json FROM session_nodes"):
        key, sid = str(n["session_key"]), n["current_session_id"]
        entry: Any
        try:
            entry = orjson.loads(n["entry_json"] or "{}")
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError) as e:
            src.problem(f"{where}#session_nodes/{key}", f"entry_json unreadable ({e})")
            entry = {}
        if not isinstance(sid, str) or not sid:
            src.problem(f"{where}#session_nodes/{key}", "no current session id")
            continue
        entry["sessionId"] = sid
        out[sid] = (key, registry_entry_from_node(entry, windows.get(sid)))
    return out


def ending_of(
    sid: str, is_current: bool, windows: dict[str, dict[str, Any]], successor: str | None
) -> Ending:
    """Live for a key's current session; else archived, for the reason its successor began."""
    w = windows.get(sid) or {}
    pred = w.get("previous_session_id")
    if is_current:
        return Ending(True, predecessor=pred)
    if successor is not None:
        nxt = windows[successor]
        reason = MARKER_REASONS.get(str(nxt.get("reason") or ""), "import")
        return Ending(False, reason, nxt.get("created_at"), pred, successor)
    return Ending(False, "orphan", w.get("ended_at") or w.get("updated_at"), pred)


def plan_database(src: OpenClawSource, scan: AgentScan, db: AgentDatabase, path: Path) -> None:
    """Plan every session of an agent database: live ones, earlier windows, orphans, deleted."""
    where = src.rel(path)
    windows = {str(r["session_id"]): dict(r) for r in db.rows("SELECT * FROM session_windows")}
    current = current_sessions(src, db, where, windows)
    with_events = {
        str(r["session_id"]) for r in db.rows("SELECT DISTINCT session_id FROM transcript_events")
    }
    cold: dict[str, tuple[list[bytes], int]] = {}
    if db.has_table("session_transcript_cold_archives"):
        for r in db.rows("SELECT * FROM session_transcript_cold_archives"):
            sid = str(r["session_id"])
            try:
                lines = cold_lines(src, path.parent.parent / "sessions", r)
                cold[sid] = (lines, int(r["last_seq"]))
            except (OSError, ValueError) as e:
                src.problem(
                    f"{where}#cold_archive/{sid}",
                    f"could not read ({e}); only the events still in transcript_events are "
                    "imported for this session",
                )
    successor_of = {
        str(w["previous_session_id"]): sid
        for sid, w in windows.items()
        if w.get("previous_session_id")
    }
    first_window: dict[str, str] = {}
    planned: list[list[PlannedTranscript]] = []
    for sid in sorted(with_events | set(cold) | set(current)):
        src.progress.show(f"reading {where}: session {sid}")
        key, entry = current.get(sid, (None, None))
        if key is None:
            wk = windows.get(sid, {}).get("session_key")
            key = wk if isinstance(wk, str) else None
        if sid not in with_events and sid not in cold:
            src.problem(
                f"{where}#session_nodes/{key}",
                f"session {sid} has no transcript events; the registry entry was not imported",
            )
            continue
        ending = ending_of(sid, sid in current, windows, successor_of.get(sid))
        try:
            source = db.session_events(sid, cold.get(sid))
        except (ValueError, UnicodeDecodeError) as e:
            src.problem(f"{where}#transcript_events/{sid}", f"could not read: {e}")
            continue
        parts = plan_session(scan.agent_id, sid, key, source, ending, f"{where}#{sid}", entry)
        first_window[sid] = parts[0].session_id
        planned.append(parts)
        scan.claimed.add(sid)
    for parts in planned:
        # A successor that was split into windows is entered through its first window.
        last = parts[-1]
        if last.successor in first_window:
            parts[-1] = replace(last, successor=first_window[last.successor])
        src.plan.transcripts.extend(parts)
    if db.has_table("session_transcript_archives"):
        plan_archive_rows(src, scan, db, path)


def cold_lines(src: OpenClawSource, sessions: Path, row: sqlite3.Row) -> list[bytes]:
    """A cold archive's JSONL lines (events moved out of transcript_events), verified."""
    if row["storage"] == "sqlite":
        blob = bytes(row["archive_blob"])
    else:
        name = str(row["archive_name"])
        if "/" in name or name in (".", ".."):
            raise ValueError(f"unsafe archive name {name!r}")
        p = sessions / name
        src.remember(p)
        blob = p.read_bytes()
    if hashlib.sha256(blob).hexdigest() != row["archive_sha256"]:
        raise ValueError("cold archive sha256 does not match its row")
    data = zstd_decompress(blob) if blob.startswith(ZSTD_MAGIC) else blob
    lines = [line for line in data.split(b"\n") if line.strip()]
    if len(lines) != int(row["event_count"]):
        raise ValueError(f"cold archive has {len(lines)} events, its row says {row['event_count']}")
    return lines


def plan_archive_rows(src: OpenClawSource, scan: AgentScan, db: AgentDatabase, path: Path) -> None:
    """Deleted (or reset) sessions kept as whole-transcript blobs."""
    where = src.rel(path)
    for r in db.rows("SELECT * FROM session_transcript_archives ORDER BY created_at"):
        sid = str(r["session_id"])
        label = f"{where}#session_transcript_archives/{sid}"
        blob = bytes(r["archive_blob"] or b"")
        if r["archive_sha256"] and hashlib.sha256(blob).hexdigest() != r["archive_sha256"]:
            src.problem(label, "could not read: archive_blob does not match archive_sha256")
            continue
        try:
            data = zstd_decompress(blob) if r["encoding"] == "zstd" else blob
        except ValueError as e:
            src.problem(label, f"could not read: {e}")
            continue
        if sid in scan.claimed:
            src.skip(label, f"session {sid} is also live in the database; imported from there")
            continue
        an = parse_archive_name(str(r["archive_name"] or ""))
        archived_at = (
            r["created_at"] if r["created_at"] is not None else (an.archived_at if an else None)
        )
        reason = str(r["reason"] or (an.reason if an else "deleted"))
        source = events_from_jsonl(data)
        key = r["session_key"] if isinstance(r["session_key"], str) else None
        reason = reason if reason in ("deleted", "reset") else "import"
        ending = Ending(False, reason, archived_at)
        scan.claimed.add(sid)
        src.plan.transcripts.extend(
            plan_session(scan.agent_id, sid, key, source, ending, label, None)
        )
