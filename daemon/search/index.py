"""The index's passes: incremental ones, and rebuilding from scratch (the database file
itself, its schema and writer thread: daemon/search/db.py).

Per file the index remembers how far it has read (complete lines only), the file's identity
(device, inode) and the bytes just before that offset. A pass stats each file and reads only what
was appended since; a file whose remembered bytes changed (an edited memory file, a transcript
cut back by crash recovery) is read again from the start; a file that moved (a reset moves the
transcript into archive/, same inode) keeps its entries and only changes its path and archived
flag; a file that is gone takes its entries with it.

The daemon hands a pass the bytes it appended to its transcripts since the previous one
(`appended`): a pass indexes those without opening the file, when they continue exactly where
the index stopped reading it; what they do not cover (a gap after a failed pass, bytes written
since) is read from the file, from the recorded offset, as for any other file.

A pass reads and parses on the calling thread and hands every write, in order, to a writer
thread of its own (`_Writer`), joined before the pass returns. In the daemon, `open` and `sync`
run in the index worker process (daemon/search/worker.py), the only writer; `sessiond reindex`
and the tests call them directly.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import structlog

from daemon.core.protocol import SearchParams
from daemon.search.db import (
    DB_NAME,
    DOCS_INDEX,
    SCHEMA,
    SCHEMA_VERSION,
    FileRow,
    check_fts5,
    connect,
    index_path,
    install,
)
from daemon.search.query import Readers
from daemon.search.sources import (
    DEFAULT_AGENTS,
    MAX_TEXT_CHARS,
    Source,
    Timestamps,
    active_sources,
    memory_ts,
    scan_sources,
    session_keys,
    split_lines,
    transcript_docs,
)
from daemon.search.writes import PassWrites

log = structlog.get_logger("daemon.search")

ANCHOR_BYTES = 64  # bytes before the read offset that must be unchanged to continue reading
READ_CHUNK = 16 << 20
FLUSH_DOCS = 20_000  # rows per executemany
COMMIT_DOCS = 200_000  # rows per transaction during a long build (readers see progress)
FULL_STAT_SECONDS = 30.0  # how often unchanged archive folders are looked into file by file


@dataclass(slots=True)
class SyncStats:
    files: int = 0  # looked at
    read: int = 0  # with new bytes read
    moved: int = 0
    removed: int = 0  # gone from disk (their entries too)
    restarted: int = 0  # changed under us: read again from the start
    docs: int = 0  # entries added
    handed: int = 0  # transcripts indexed from the bytes the daemon handed over, not reread
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "read": self.read,
            "moved": self.moved,
            "removed": self.removed,
            "restarted": self.restarted,
            "docs": self.docs,
            "handed": self.handed,
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[int, int, int], None]  # files done, files in all, entries indexed


class Halted(Exception):
    """A pass was asked to stop (the daemon is shutting down); what it did is committed."""


@dataclass(slots=True)
class _Pass:
    halt: threading.Event | None
    progress: Progress | None
    stats: SyncStats
    w: PassWrites
    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # agent -> sessionId -> key
    appended: Mapping[str, tuple[int, bytes]] = field(default_factory=dict)


class SearchIndex:
    """One index database. `sync` and `close` are called from one thread at a time; `search`
    from any number of threads."""

    def __init__(
        self,
        path: Path,
        state_dir: Path,
        workspace_of: Callable[[str], Path],
        agents: Callable[[], Iterable[str]] = lambda: DEFAULT_AGENTS,
        *,
        bulk: bool = False,
        nice: int = 0,
    ) -> None:
        self.path = path
        self.state_dir = state_dir
        self.workspace_of = workspace_of
        self.agents = agents
        self.bulk = bulk
        self.nice = nice  # for the writer thread: the daemon indexes below the ingest path
        self.conn: sqlite3.Connection | None = None
        self.files: dict[str, FileRow] = {}
        self._identity: tuple[int, int] | None = None
        self._next_file_id = 1
        self._archive_cache: dict[str, tuple[int, list[Source]]] = {}
        self._memory: set[str] = set()  # keys of the memory files' rows
        self._last_full = 0.0
        self.readers = Readers(path)

    # --- opening --------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database. One that is unreadable or of another schema version
        is replaced by an empty one, built into a new file and renamed over it: it is derived
        data, and the next `sync` reads everything again."""
        check_fts5()
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            conn = connect(self.path, bulk=self.bulk)
            conn.executescript(SCHEMA if self.bulk else SCHEMA + DOCS_INDEX)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                conn.close()
                raise sqlite3.DatabaseError(f"schema version {row[0] if row else None}")
        except sqlite3.DatabaseError as e:
            log.warning("search.index_replaced", reason=str(e), path=str(self.path))
            self._replace_with_empty()
            conn = connect(self.path, bulk=self.bulk)
            conn.executescript(SCHEMA if self.bulk else SCHEMA + DOCS_INDEX)
        if self.bulk:
            # No merging of FTS segments while a build goes on: one `optimize` at the end.
            conn.execute("INSERT INTO fts(fts, rank) VALUES ('automerge', 0)")
        self.conn = conn
        os.chmod(self.path, 0o600)  # it holds what the transcripts say
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._load_files()

    @property
    def identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file open now: another one means the index was replaced."""
        return self._identity

    def _load_files(self) -> None:
        rows = self._load_rows()
        self.files = {r.path: r for r in rows}
        self._memory = {r.path for r in rows if r.source == "memory"}
        # File ids are handed out here, so that a pass never waits for the writer to learn one.
        self._next_file_id = max((r.id for r in rows), default=0) + 1

    def _replace_with_empty(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.new-{os.getpid()}")
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        conn = connect(tmp, bulk=True)
        try:
            conn.executescript(SCHEMA)
        finally:
            conn.close()
        install(tmp, self.path)

    def _load_rows(self) -> list[FileRow]:
        assert self.conn is not None
        rows = self.conn.execute(
            "SELECT id, path, source, agent_id, session_id, session_key, archived, dev, ino, "
            "size, mtime_ns, offset, lines, tail, anchor FROM files"
        ).fetchall()
        return [FileRow(*r) for r in rows]

    def close(self) -> None:
        self.readers.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def finish_bulk(self) -> None:
        """After a bulk build: make the file complete and durable before it is renamed in."""
        assert self.conn is not None
        self.conn.executescript(DOCS_INDEX)
        self.conn.execute("INSERT INTO fts(fts) VALUES ('optimize')")
        self.conn.execute("INSERT INTO fts(fts, rank) VALUES ('automerge', 4)")  # the default
        self.conn.close()
        self.conn = None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def search(self, q: SearchParams) -> list[dict[str, Any]]:
        """Ranked hits for `q` (see daemon/search/query.py); any number of threads at once."""
        return self.readers.search(q)

    # --- one pass ---------------------------------------------------------------------------

    def sync(
        self,
        halt: threading.Event | None = None,
        progress: Progress | None = None,
        touched: Iterable[str] | None = None,
        appended: Mapping[str, tuple[int, bytes]] | None = None,
    ) -> SyncStats:
        """Bring the index up to the files: read what was appended, follow moves, drop what is
        gone. Runs in a worker thread. Raises Halted when `halt` is set (work done so far is
        committed and kept), sqlite3.Error or OSError when the index cannot be written.

        `touched`: the active transcripts (keys) written since the last pass, when the caller
        knows them (the daemon, their only writer): then the sessions folders are not listed,
        nor every transcript in them looked at, except every FULL_STAT_SECONDS. A pass over
        100,000 sessions otherwise stats 100,000 files to find the few that grew.

        `appended`: key -> (offset, bytes), complete lines the caller appended to that active
        transcript at that offset; indexed from there when they continue what was read."""
        started = time.monotonic()
        self._reopen_if_replaced()
        conn = self.conn
        assert conn is not None
        full = self.bulk or started - self._last_full >= FULL_STAT_SECONDS
        listing = full or touched is None
        cache = None if full else self._archive_cache
        if full:
            self._archive_cache.clear()
            cache = self._archive_cache
        found: list[tuple[Source, os.stat_result | None]] = []
        sources = scan_sources(self.state_dir, self.workspace_of, self.agents(), cache, listing)
        if not listing and touched is not None:
            sources = chain(sources, active_sources(self.state_dir, touched))
        # A listing pass of the daemon's: the active transcripts it did not write since the
        # last pass are as that pass left them (it is their only writer), unless the listing
        # shows another file under the name; not looked at one by one.
        written = set(touched) if listing and touched is not None else None
        for src in sources:
            row = self.files.get(src.key)
            if src.archived and not full and row is not None and row.offset > 0 and row.size > 0:
                # An archive that was already read (to the end: a size of 0 says a pass stopped
                # in it) cannot change: archives are written once and only ever moved in. Not
                # looked at until the next full pass, even when its folder changed (a reset
                # job moves thousands in, and every pass meanwhile stat'ed every archive).
                found.append((src, None))
                continue
            if written is not None and row is not None and _unwritten(src, row, written):
                found.append((src, None))
                continue
            try:
                found.append((src, os.stat(src.path)))
            except OSError:
                continue
        if full:
            self._last_full = started
        ps = _Pass(
            halt,
            progress,
            SyncStats(files=len(found)),
            PassWrites(conn, self.nice),
            appended=appended or {},
        )
        present = {src.key for src, _ in found}
        if listing:
            vanished = {(r.dev, r.ino): r for k, r in self.files.items() if k not in present}
        else:
            vanished = self._vanished_among(found, present)
        try:
            for n, (src, st) in enumerate(found):
                if st is not None:
                    self._sync_file(ps, src, st, vanished)
                if progress is not None:
                    progress(n + 1, len(found), ps.w.written + len(ps.w.docs))
                if ps.w.uncommitted + len(ps.w.docs) >= COMMIT_DOCS or _halted(ps):
                    self._commit(ps)
            for row in vanished.values():
                self._drop_file(ps, row)
                ps.stats.removed += 1
            self._commit(ps, final=True)
        except BaseException as e:
            ps.w.join()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not isinstance(e, Halted):  # Halted comes after a commit: nothing is void
                # Rows changed in memory since the last commit are void: read them back.
                self._load_files()
            raise
        ps.w.join()
        ps.stats.docs = ps.w.written
        ps.stats.seconds = time.monotonic() - started
        return ps.stats

    def _vanished_among(
        self, found: list[tuple[Source, os.stat_result | None]], present: set[str]
    ) -> dict[tuple[int, int], FileRow]:
        """A pass that did not list the sessions folders: the memory files gone from their
        (listed) folders, and the transcripts moved into archive/ since (a new archive file
        with the inode of a known transcript that is no longer where it was)."""
        out = {}
        for key in self._memory - present:
            r = self.files[key]
            out[(r.dev, r.ino)] = r
        arrived = {
            (st.st_dev, st.st_ino)
            for src, st in found
            if st is not None and src.archived and src.key not in self.files
        }
        if arrived:
            for r in self.files.values():
                moved = (r.dev, r.ino) in arrived and not r.archived and r.path not in present
                if moved and not os.path.exists(self.state_dir / r.path):
                    out[(r.dev, r.ino)] = r
        return out

    def _reopen_if_replaced(self) -> None:
        """Someone deleted the index (allowed: it is derived): start a new one."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            same = False
        if same and self.conn is not None:
            return
        if self.conn is not None:
            log.warning("search.index_missing", path=str(self.path))
            self.close()
        self.open()

    def _sync_file(
        self,
        ps: _Pass,
        src: Source,
        st: os.stat_result,
        vanished: dict[tuple[int, int], FileRow],
    ) -> None:
        row = self.files.get(src.key)
        if row is None:
            moved = vanished.pop((st.st_dev, st.st_ino), None)
            if moved is not None and moved.source == src.source:
                row = self._move(ps, moved, src)
                ps.stats.moved += 1
        if row is not None and (row.dev, row.ino) != (st.st_dev, st.st_ino):
            self._restart(row, ps)  # a new file under a known name
            row.dev, row.ino = st.st_dev, st.st_ino
        if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
            return
        if row is None:
            row = self._new_row(ps, src, st)
        if src.gz:
            self._read_gz(ps, src, row, st)
        else:
            self._read_plain(ps, src, row, st)
        ps.w.save_row(row)

    def _new_row(self, ps: _Pass, src: Source, st: os.stat_result) -> FileRow:
        row = FileRow(
            self._next_file_id, src.key, src.source, src.agent_id, None, None, src.archived,
            st.st_dev, st.st_ino, 0, 0, 0, 0, False, b"",
        )  # fmt: skip
        self._next_file_id += 1
        ps.w.save_row(row)
        self.files[src.key] = row
        if src.source == "memory":
            self._memory.add(src.key)
        return row

    def _move(self, ps: _Pass, row: FileRow, src: Source) -> FileRow:
        """A file renamed (a reset moves a transcript into archive/): same entries, new place."""
        del self.files[row.path]
        self._memory.discard(row.path)
        row.path, row.archived, row.agent_id = src.key, src.archived, src.agent_id
        self.files[row.path] = row
        if row.source == "memory":
            self._memory.add(row.path)
        ps.w.save_row(row)
        return row

    def _restart(self, row: FileRow, ps: _Pass) -> None:
        """Forget what was read of a file that changed under us; it is read again."""
        ps.w.delete_docs(row.id, 0)
        row.offset = row.lines = row.size = row.mtime_ns = 0
        row.tail = False
        row.anchor = b""
        row.session_id = row.session_key = None
        ps.stats.restarted += 1

    def _drop_file(self, ps: _Pass, row: FileRow) -> None:
        ps.w.delete_docs(row.id, 0)
        ps.w.delete_row(row.id)
        self.files.pop(row.path, None)
        self._memory.discard(row.path)

    def _read_plain(self, ps: _Pass, src: Source, row: FileRow, st: os.stat_result) -> None:
        handed = ps.appended.get(src.key) if src.source == "session" else None
        if handed is not None and self._take_handed(ps, src, row, st, handed):
            ps.stats.handed += 1
            if row.offset >= st.st_size:
                row.size, row.mtime_ns = st.st_size, st.st_mtime_ns
                return  # all there is: the file is not opened
        try:
            f = open(src.path, "rb")  # noqa: SIM115 (closed below; the with would hide the flow)
        except OSError:
            return
        with f:
            if row.offset and not self._anchor_holds(f, row, st.st_size):
                self._restart(row, ps)
            if row.tail:
                ps.w.delete_docs(row.id, row.offset)
                row.tail = False
            f.seek(row.offset)
            remaining = st.st_size - row.offset
            carry = b""
            pos = row.offset  # file offset of carry's first byte
            ts_of = Timestamps()
            while remaining > 0:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                lines = split_lines(data[:cut], pos)
                self._add_lines(ps, src, row, lines, st, ts_of)
                if cut:
                    row.anchor = data[max(0, cut - ANCHOR_BYTES) : cut]
                carry = data[cut:]
                pos += cut
                row.offset = pos
                row.lines += len(lines)
                if remaining > 0 and ps.w.uncommitted + len(ps.w.docs) >= COMMIT_DOCS:
                    # Mid-file: size 0 makes the next pass look again, from `offset` on.
                    row.size = row.mtime_ns = 0
                    ps.w.save_row(row)
                    self._commit(ps)
            if carry and src.source == "memory":
                # A memory file's last line may never get its newline: index it for now, and
                # take it out again before reading on.
                self._add_lines(ps, src, row, [(pos, carry)], st, ts_of)
                row.tail = True
        row.size, row.mtime_ns = st.st_size, st.st_mtime_ns
        ps.stats.read += 1

    def _take_handed(
        self,
        ps: _Pass,
        src: Source,
        row: FileRow,
        st: os.stat_result,
        handed: tuple[int, bytes],
    ) -> bool:
        """Index the bytes the daemon appended at `offset` (complete lines) as if read from the
        file, when they continue what the index read of it: they start at its offset, or before
        it with the bytes up to it equal to the remembered anchor (an earlier pass read them
        from the file already). False when they do not fit (a gap: the caller reads the file
        from the recorded offset on)."""
        start, data = handed
        skip = row.offset - start
        if row.tail or skip < 0 or start + len(data) > st.st_size or not data.endswith(b"\n"):
            return False
        if skip > 0:
            n = len(row.anchor)
            if skip > len(data) or skip < n or data[skip - n : skip] != row.anchor:
                return False
        chunk = data[skip:]
        if chunk:
            lines = split_lines(chunk, row.offset)
            self._add_lines(ps, src, row, lines, st, Timestamps())
            row.anchor = (row.anchor + chunk)[-ANCHOR_BYTES:]
            row.offset += len(chunk)
            row.lines += len(lines)
        return True

    def _anchor_holds(self, f: Any, row: FileRow, size: int) -> bool:
        if size < row.offset:
            return False
        n = len(row.anchor)
        f.seek(row.offset - n)
        return bool(f.read(n) == row.anchor)

    def _read_gz(self, ps: _Pass, src: Source, row: FileRow, st: os.stat_result) -> None:
        """A compressed archive never grows: it is read whole, once (again if it changed)."""
        if row.offset:
            self._restart(row, ps)
        try:
            with gzip.open(src.path, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as e:
            log.warning("search.unreadable", path=row.path, error=str(e))
            row.size, row.mtime_ns = st.st_size, st.st_mtime_ns
            return
        cut = data.rfind(b"\n") + 1
        lines = split_lines(data[:cut], 0)
        self._add_lines(ps, src, row, lines, st, Timestamps())
        row.offset, row.lines = cut, len(lines)
        row.anchor = data[max(0, cut - ANCHOR_BYTES) : cut]
        row.size, row.mtime_ns = st.st_size, st.st_mtime_ns
        ps.stats.read += 1

    def _add_lines(
        self,
        ps: _Pass,
        src: Source,
        row: FileRow,
        lines: list[tuple[int, bytes]],
        st: os.stat_result,
        ts_of: Callable[[Any], int],
    ) -> None:
        if src.source == "memory":
            ts = memory_ts(src.path, st.st_mtime_ns)
            name = os.path.basename(src.path)
            first = row.lines + 1
            for i, (off, line) in enumerate(lines):
                text = line.decode("utf-8", "replace").strip()[:MAX_TEXT_CHARS]
                if text:
                    ps.w.docs.append((row.id, off, f"{name}:{first + i}", None, ts, text))
        else:
            docs, header = transcript_docs(row.id, lines, ts_of)
            if row.session_id is None:
                self._identify(ps, src, row, header)
            ps.w.docs.extend(docs)
        if len(ps.w.docs) >= FLUSH_DOCS:
            ps.w.flush()

    def _identify(
        self, ps: _Pass, src: Source, row: FileRow, header: dict[str, Any] | None
    ) -> None:
        """Session id and key: from the header (ours always carry sessionKey), else from the
        file name and the agent's registry or archive index (OpenClaw's transcripts)."""
        sid = header.get("id") if header else None
        key = header.get("sessionKey") if header else None
        if not isinstance(sid, str):
            sid = os.path.basename(src.path).split(".jsonl")[0]
        if not isinstance(key, str):
            key = self._keys_of(ps, src.agent_id).get(sid)
        row.session_id, row.session_key = sid, key

    def _keys_of(self, ps: _Pass, agent: str) -> dict[str, str]:
        keys = ps.keys.get(agent)
        if keys is None:
            keys = ps.keys[agent] = session_keys(self.state_dir / "agents" / agent / "sessions")
        return keys

    def _commit(self, ps: _Pass, *, final: bool = False) -> None:
        """Commit at a safe point (daemon/search/writes.py). Raises Halted (after committing)
        when asked to stop."""
        ps.w.commit()
        if not final and _halted(ps):
            raise Halted


def _unwritten(src: Source, row: FileRow, written: set[str]) -> bool:
    """An active transcript read to its end, the same file, not written since."""
    return (
        src.ino != 0
        and src.ino == row.ino
        and not src.archived
        and src.key not in written
        and row.offset == row.size > 0
        and not row.tail
    )


def _halted(ps: _Pass) -> bool:
    return ps.halt is not None and ps.halt.is_set()


def rebuild(
    state_dir: Path,
    workspace_of: Callable[[str], Path],
    agents: Iterable[str] = ("main",),
    progress: Progress | None = None,
) -> SyncStats:
    """Build the index from scratch into a new file and rename it into place (`sessiond
    reindex`; the caller holds the state lock). The old index serves until the rename."""
    dest = index_path(state_dir)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest.with_name(f"{DB_NAME}.rebuild-{os.getpid()}")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    listed = tuple(agents)
    idx = SearchIndex(tmp, state_dir, workspace_of, lambda: listed, bulk=True)
    complete = False
    try:
        idx.open()
        stats = idx.sync(progress=progress)
        idx.finish_bulk()
        complete = True
    finally:
        if not complete:  # the half-built file is ours: take it away, then let the error go
            idx.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    install(tmp, dest)
    return stats
