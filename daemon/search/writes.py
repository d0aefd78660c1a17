"""A pass's writes to the index: entries and the file rows they belong to, handed in order to
the pass's writer thread (daemon/search/db.py `Writer`) in batches.

A file row is saved once per flush, whatever the number of times the pass changed it: the rows
a flush saves go in one `executemany` (an upsert: a new row is inserted, a known one updated),
with the entries gathered since. A pass over 100,000 new transcripts used to hand the writer
two statements per file, each a trip through the writer's queue (a lock, a wake-up of the
other thread and a turn of the GIL each), which cost more than indexing the lines did.

  invariant: at a commit, every entry inserted belongs to a file row saved with the offset
             after it (the pass commits only at such safe points, `commit`), so a pass that
             dies leaves the index as of its last commit, and the next reads on from there.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from daemon.search.db import FileRow, Job, Writer, begin, commit, execute
from daemon.search.sources import Doc

UPSERT_ROW = (
    "INSERT INTO files(id, path, source, agent_id, session_id, session_key, archived, dev, ino, "
    "size, mtime_ns, offset, lines, tail, anchor) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET path = excluded.path, agent_id = excluded.agent_id, "
    "session_id = excluded.session_id, session_key = excluded.session_key, "
    "archived = excluded.archived, dev = excluded.dev, ino = excluded.ino, "
    "size = excluded.size, mtime_ns = excluded.mtime_ns, offset = excluded.offset, "
    "lines = excluded.lines, tail = excluded.tail, anchor = excluded.anchor"
)


def row_values(row: FileRow) -> tuple[Any, ...]:
    """A snapshot of a row for UPSERT_ROW: the row changes on while the writer catches up."""
    return (
        row.id, row.path, row.source, row.agent_id, row.session_id, row.session_key,
        int(row.archived), row.dev, row.ino, row.size, row.mtime_ns, row.offset, row.lines,
        int(row.tail), row.anchor,
    )  # fmt: skip


class PassWrites:
    """The writes of one pass. Owns the writer thread once the first write is submitted; the
    pass always calls `join` before it returns (also after an error)."""

    def __init__(self, conn: sqlite3.Connection, nice: int = 0) -> None:
        self.conn = conn
        self.nice = nice
        self.writer: Writer | None = None
        self.in_transaction = False
        self.docs: list[Doc] = []  # entries not yet handed to the writer
        self.rows: dict[int, FileRow] = {}  # rows changed since the last flush, by id
        self.uncommitted = 0  # entries handed to the writer since the last commit
        self.written = 0  # entries handed to the writer in all

    def submit(self, job: Job) -> None:
        """Run `job` on the writer thread, after everything submitted before it, inside the
        pass's open transaction."""
        if self.writer is None:
            self.writer = Writer(self.conn, self.nice)
        if not self.in_transaction:
            self.writer.submit(begin)
            self.in_transaction = True
        self.writer.submit(job)

    def save_row(self, row: FileRow) -> None:
        """Save the row at the next flush (as it is then)."""
        self.rows[row.id] = row

    def delete_docs(self, file_id: int, from_off: int) -> None:
        """Take a file's entries from `from_off` on out of the index (after what is pending)."""
        self.flush()

        def job(c: sqlite3.Connection) -> None:
            # External-content FTS5 needs the old text to take a row out of its index.
            c.execute(
                "INSERT INTO fts(fts, rowid, text) SELECT 'delete', id, text FROM docs "
                "WHERE file_id = ? AND off >= ?",
                (file_id, from_off),
            )
            c.execute("DELETE FROM docs WHERE file_id = ? AND off >= ?", (file_id, from_off))

        self.submit(job)

    def delete_row(self, file_id: int) -> None:
        """Take a file's row out of the index (its entries: `delete_docs` first)."""
        self.flush()
        self.submit(lambda c: execute(c, "DELETE FROM files WHERE id = ?", (file_id,)))

    def flush(self) -> int:
        """Hand the pending rows and entries to the writer; returns the number of entries."""
        if not self.docs and not self.rows:
            return 0
        docs, self.docs = self.docs, []
        rows = [row_values(r) for r in self.rows.values()]
        self.rows = {}

        def job(c: sqlite3.Connection) -> None:
            if rows:
                c.executemany(UPSERT_ROW, rows)
            if docs:
                (last,) = c.execute("SELECT coalesce(max(id), 0) FROM docs").fetchone()
                c.executemany(
                    "INSERT INTO docs(file_id, off, entry_id, role, ts, text) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    docs,
                )
                c.execute(
                    "INSERT INTO fts(rowid, text) SELECT id, text FROM docs WHERE id > ?", (last,)
                )

        self.submit(job)
        self.uncommitted += len(docs)
        self.written += len(docs)
        return len(docs)

    def commit(self) -> None:
        """Flush and commit, and wait until the writer has done it (a safe point)."""
        self.flush()
        if self.writer is not None and self.in_transaction:
            self.writer.submit(commit)
            self.writer.barrier()
            self.in_transaction = False
        self.uncommitted = 0

    def join(self) -> None:
        """Stop the writer thread (what was submitted runs first)."""
        if self.writer is not None:
            self.writer.join()
            self.writer = None
