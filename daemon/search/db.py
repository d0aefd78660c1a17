"""The index's database file: its schema, connections to it, and the thread that writes it.

    <stateDir>/index/search.sqlite3     (WAL mode; derived data only)

Only the index worker writes (daemon/search/index.py drives the passes); searches read through
daemon/search/query.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.store.fsutil import fsync_dir

INDEX_DIR = "index"
DB_NAME = "search.sqlite3"
SCHEMA_VERSION = "1"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
  id INTEGER PRIMARY KEY,
  path TEXT NOT NULL UNIQUE,  -- relative to the state folder, absolute outside it
  source TEXT NOT NULL,       -- session | memory
  agent_id TEXT NOT NULL,
  session_id TEXT,
  session_key TEXT,
  archived INTEGER NOT NULL,
  dev INTEGER NOT NULL,
  ino INTEGER NOT NULL,
  size INTEGER NOT NULL,      -- on disk (compressed for .gz)
  mtime_ns INTEGER NOT NULL,
  offset INTEGER NOT NULL,    -- bytes read, up to the last complete line (uncompressed)
  lines INTEGER NOT NULL,     -- complete lines before offset
  tail INTEGER NOT NULL,      -- 1: an unfinished last line of a memory file is indexed for now
  anchor BLOB NOT NULL        -- the bytes just before offset
);
CREATE TABLE IF NOT EXISTS docs(
  id INTEGER PRIMARY KEY,
  file_id INTEGER NOT NULL,
  off INTEGER NOT NULL,
  entry_id TEXT NOT NULL,
  role TEXT,
  ts INTEGER NOT NULL,
  text TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
  text, content='docs', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '{SCHEMA_VERSION}');
"""
# Made at the end of a bulk build (one sort beats keeping it up to date row by row).
DOCS_INDEX = "CREATE INDEX IF NOT EXISTS docs_file ON docs(file_id, off);"


@dataclass(slots=True)
class FileRow:
    id: int
    path: str
    source: str
    agent_id: str
    session_id: str | None
    session_key: str | None
    archived: bool
    dev: int
    ino: int
    size: int
    mtime_ns: int
    offset: int
    lines: int
    tail: bool
    anchor: bytes


class IndexUnavailable(Exception):
    """This Python's SQLite cannot hold the index (no FTS5)."""


Job = Callable[[sqlite3.Connection], None]


class Writer:
    """The thread that runs a pass's SQL, in order, while the pass goes on reading and parsing
    files: SQLite releases the GIL while it works, so the two overlap (about 1.5x on a large
    build). Owned by one `sync` call, which always joins it before returning. A job that fails
    makes every later `submit` and `barrier` raise its error."""

    def __init__(self, conn: sqlite3.Connection, nice: int = 0) -> None:
        self.conn = conn
        self.nice = nice
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="search-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lower_priority(self.nice)
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job(self.conn)
            except BaseException as e:  # handed to the pass, which re-raises it
                self.error = e
            finally:
                self.jobs.task_done()

    def submit(self, job: Job) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put(job)

    def barrier(self) -> None:
        """Wait until every job so far has run."""
        self.jobs.join()
        if self.error is not None:
            raise self.error

    def join(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def connect(path: Path, *, bulk: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit). WAL lets searches read
    while a pass writes; synchronous=NORMAL because the index can always be rebuilt."""
    private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA page_size=8192")  # a new file only; FTS5 segments fill them well
    if bulk:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def private(path: Path) -> None:
    """Make the database file 0600 before SQLite opens it (creating it empty if need be).

    SQLite gives the `-wal` and `-shm` files it creates the database file's mode; a file it
    created itself would be 0644 under the usual umask, and so its WAL, which holds what the
    transcripts say. Side files an older version left open are tightened too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def check_fts5() -> None:
    """Raise IndexUnavailable when SQLite was built without FTS5."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError as e:
        raise IndexUnavailable(f"SQLite {sqlite3.sqlite_version} has no FTS5: {e}") from None
    finally:
        conn.close()


def lower_priority(nice: int) -> None:
    """Lower the CPU priority of the calling thread only (Linux schedules threads one by one):
    when the machine is busy, acknowledging messages goes before indexing them."""
    if nice <= 0:
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


def begin(c: sqlite3.Connection) -> None:
    c.execute("BEGIN")


def commit(c: sqlite3.Connection) -> None:
    c.execute("COMMIT")


def execute(c: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> None:
    c.execute(sql, params)


def index_path(state_dir: Path) -> Path:
    return state_dir / INDEX_DIR / DB_NAME


def install(new: Path, dest: Path) -> None:
    """Put a finished database in place of `dest` by renaming; the old one's WAL and shared
    memory files are taken away first, since SQLite would otherwise apply them to the new one."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{dest}{suffix}")
    os.replace(new, dest)
    fsync_dir(dest.parent)
