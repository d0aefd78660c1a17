"""Answering `memory.search` from the index: bm25 ranking, filters, snippets, errors.

Readers are pooled read-only SQLite connections (WAL lets them read while a pass writes, also
from another process: in the daemon, passes run in the index worker, daemon/search/worker.py).
Read-only, so a reader never creates the file: before the worker has made it, or while it makes
it anew, a search fails instead. `close` (the index was replaced or is shutting down) retires
them, also those in use, which are closed when they come back. A malformed FTS5 query is the
caller's mistake: sqlite3.OperationalError is translated into -32602 here, where it enters.

A plain-language query (the default; daemon/search/plain.py makes its terms) never reaches FTS5
as syntax, so it cannot be malformed. What it can be is expensive: bm25 scores every entry that
matches, and a word like "the" matches most of them. So each term's matches are counted up to a
cap first (cheap: no scoring), and the query ranks by the rarest terms whose matches fit in
SCORE_BUDGET together; more common words only help when nothing rarer was asked. When even the
rarest term is that common, the newest entries are ranked, in windows of SCORE_BUDGET rows
(newest first), until enough hits are found or WINDOWS_MAX windows were scored. Every query so
scores at most a bounded number of rows, whatever the size of a year of chat.
"""

from __future__ import annotations

import queue
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from daemon.core.ids import now_ms
from daemon.core.keys import normalize_agent_id
from daemon.core.protocol import SearchParams
from daemon.errors import InvalidParams, RequestError
from daemon.search.plain import fts_or, plain_terms
from daemon.store.transcript import iso_ms

SNIPPET_TOKENS = 16
QUERY_SECONDS = 10.0  # a query running longer is interrupted (-32603, never a stuck thread)
MIN_PREFIX_CHARS = 3
SCORE_BUDGET = 5_000  # rows a plain query scores at most per window (2-10 µs each)
READER_CACHE_KIB = 32_768  # page cache per reader: scoring visits docs rows all over the file
WINDOWS_MAX = 3  # windows of the newest entries scored when every term is that common
RECENCY_BOOST = 0.5  # a hit from now scores up to 1.5x; the boost halves at RECENCY_MS of age
RECENCY_MS = 30 * 86_400_000
# A bareword prefix (outside "quoted strings") and the characters before its star.
_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_PREFIX = re.compile(r"(\w*)\*")
_QUERY_ERRORS = ("fts5:", "no such column", "unterminated string", "unknown special query")


class Readers:
    """A pool of read connections to one index file; `search` from any number of threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool: queue.SimpleQueue[tuple[int, sqlite3.Connection]] = queue.SimpleQueue()
        self._generation = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Retire every connection: idle ones now, those in use when they come back."""
        with self._lock:
            self._generation += 1
        while True:
            try:
                _g, conn = self._pool.get_nowait()
            except queue.Empty:
                return
            conn.close()

    def search(self, q: SearchParams) -> list[dict[str, Any]]:
        """Ranked hits (bm25; ties by newer first, then entry id, then place in the file, so the
        order is the same on every index built from the same files). A malformed query raises
        InvalidParams; one that runs too long is interrupted (RequestError)."""
        gen, conn = self._reader()
        try:
            return self._query(conn, q)
        except sqlite3.OperationalError as e:
            msg = str(e)
            if msg == "interrupted":
                raise RequestError(
                    f"the search took longer than {QUERY_SECONDS:g} s and was stopped; "
                    "narrow it (more words, agentId, after/before)"
                ) from None
            if msg.startswith(_QUERY_ERRORS):
                raise InvalidParams(
                    "query",
                    f'not a valid FTS5 query ({msg}); use words, "quoted phrases", '
                    "AND, OR, NOT, NEAR(a b) and prefix*; quote words that contain "
                    'punctuation, or leave out syntax "fts5" to search in plain language',
                ) from None
            raise
        finally:
            self._release(gen, conn)

    def _query(self, conn: sqlite3.Connection, q: SearchParams) -> list[dict[str, Any]]:
        deadline = time.monotonic() + QUERY_SECONDS
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            if q.syntax == "fts5":
                check_prefixes(q.query)
                return self._ranked(conn, q, q.query, None)
            terms = plain_terms(q.query)
            if not terms:
                return []  # only punctuation or symbols: nothing a message could match
            counted = sorted(
                ((_capped_count(conn, fts_or([t])), i, t) for i, t in enumerate(terms)),
            )
            chosen: list[tuple[int, tuple[str, ...]]] = []
            total = 0
            for count, i, term in counted:
                if count == 0:
                    continue
                if chosen and total + count > SCORE_BUDGET:
                    break
                chosen.append((i, term))
                total += count
            if not chosen:
                return []
            match = fts_or([t for _i, t in sorted(chosen)])
            if total <= SCORE_BUDGET:
                return self._ranked(conn, q, match, None)
            # Even the rarest word is in more entries than we score: rank the newest ones.
            top = conn.execute("SELECT max(rowid) FROM docs").fetchone()[0] or 0
            hits: list[dict[str, Any]] = []
            for w in range(WINDOWS_MAX):
                hi = top - w * SCORE_BUDGET
                if hi <= 0 or len(hits) >= q.limit:
                    break
                more = self._ranked(conn, q, match, (hi - SCORE_BUDGET, hi), q.limit - len(hits))
                hits.extend(more)
            return hits
        finally:
            conn.set_progress_handler(None, 0)

    def _ranked(
        self,
        conn: sqlite3.Connection,
        q: SearchParams,
        match: str,
        window: tuple[int, int] | None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The best hits of one MATCH expression, optionally among rowids (lo, hi] only."""
        where = ["fts MATCH ?"]
        args: list[Any] = [match]
        if window is not None:
            where.append("fts.rowid > ? AND fts.rowid <= ?")
            args.extend(window)
        if q.agent_id is not None:
            where.append("f.agent_id = ?")
            args.append(normalize_agent_id(q.agent_id))
        if not (q.include_sessions and q.include_memory):
            where.append("f.source = ?")
            args.append("session" if q.include_sessions else "memory")
        if q.session_id is not None:
            where.append("f.session_id = ?")
            args.append(q.session_id)
        if q.session_key is not None:
            where.append("f.session_key = ?")
            args.append(q.session_key)
        if q.after is not None:
            where.append("d.ts >= ?")
            args.append(q.after)
        if q.before is not None:
            where.append("d.ts < ?")
            args.append(q.before)
        boost = RECENCY_BOOST if q.recency else 0.0
        now = now_ms()
        rows = conn.execute(
            "SELECT d.id, bm25(fts) * (1.0 + ? / (1.0 + max(0, ? - d.ts) / ?)) AS r, "
            "f.source, f.agent_id, f.session_id, "
            "f.session_key, d.entry_id, d.role, d.ts, f.archived, f.path "
            "FROM fts JOIN docs d ON d.id = fts.rowid JOIN files f ON f.id = d.file_id "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY r, d.ts DESC, d.entry_id, f.path, d.off LIMIT ?",
            (boost, now, float(RECENCY_MS), *args, limit or q.limit),
        ).fetchall()
        hits = []
        for rid, rank, source, agent, sid, key, eid, role, ts, archived, path in rows:
            snip = conn.execute(
                "SELECT snippet(fts, 0, '«', '»', '…', ?) FROM fts WHERE fts MATCH ? AND rowid = ?",
                (SNIPPET_TOKENS, match, rid),
            ).fetchone()
            hit: dict[str, Any] = {
                "source": source,
                "agentId": agent,
                "sessionId": sid,
                "sessionKey": key,
                "entryId": eid,
                "role": role,
                "timestamp": iso_ms(ts),
                "snippet": snip[0] if snip else "",
                "score": round(-rank, 6),
            }
            if source == "session":
                hit["archived"] = bool(archived)
            else:
                hit["file"] = path
            hits.append(hit)
        return hits

    def _reader(self) -> tuple[int, sqlite3.Connection]:
        with self._lock:
            gen = self._generation
        while True:
            try:
                g, conn = self._pool.get_nowait()
            except queue.Empty:
                conn = sqlite3.connect(
                    f"{self.path.absolute().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
                conn.execute("PRAGMA query_only=1")
                return gen, conn
            if g == gen:
                return g, conn
            conn.close()

    def _release(self, gen: int, conn: sqlite3.Connection) -> None:
        with self._lock:
            current = gen == self._generation
        if current:
            self._pool.put((gen, conn))
        else:
            conn.close()


def _capped_count(conn: sqlite3.Connection, match: str) -> int:
    """How many entries match, counted up to SCORE_BUDGET + 1 (reading rowids, no scoring)."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM fts WHERE fts MATCH ? LIMIT ?)",
        (match, SCORE_BUDGET + 1),
    ).fetchone()
    return int(row[0])


def check_prefixes(query: str) -> None:
    """Refuse `a*` and `ab*`: without a prefix index such a query merges the lists of thousands
    of words and can keep a reader busy for seconds; three characters narrow it enough."""
    # A quoted string counts by its last word: `"ab"*` is the prefix ab.
    unquoted = _QUOTED.sub(lambda m: " " + ["", *re.findall(r"\w+", m.group(0))][-1], query)
    for m in _PREFIX.finditer(unquoted):
        if len(m.group(1)) < MIN_PREFIX_CHARS:
            raise InvalidParams(
                "query",
                f"a prefix search needs at least {MIN_PREFIX_CHARS} characters before the *, "
                f"got {m.group(0)!r}",
            )
