"""Full-text search over transcripts and memory files (SPEC 3 `memory.search`, SPEC 2 `index/`).

    sources.py   which files are read, and which lines become entries (pure)
    db.py        the SQLite FTS5 database file: schema, connections, the writer thread
    index.py     the passes over it: incremental ones, rebuilding from scratch
    query.py     answering a search: bm25 order, filters, snippets, query errors (read-only)
    worker.py    the index worker's jobs (daemon/workers.py Pool): open the index and keep it
                 open, run a pass; the only writer of the database
    service.py   the daemon's task: passes about a second behind the appends (handing each the
                 lines appended since the last), the worker's restarts, and the method

Everything in the index is derived from files the store keeps; deleting `<stateDir>/index/`
loses nothing: the next start (or `sessiond reindex`) reads the files again and gives the same
answers.
"""

from daemon.search.db import IndexUnavailable, index_path, lower_priority
from daemon.search.index import Halted, SearchIndex, SyncStats, rebuild
from daemon.search.query import check_prefixes
from daemon.search.service import SearchService
from daemon.search.sources import is_archived_name, message_text, transcript_docs

__all__ = [
    "Halted",
    "IndexUnavailable",
    "SearchIndex",
    "SearchService",
    "SyncStats",
    "check_prefixes",
    "index_path",
    "is_archived_name",
    "lower_priority",
    "message_text",
    "rebuild",
    "transcript_docs",
]
