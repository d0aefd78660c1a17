"""sessions.json's change log: what changed in an agent's registry since sessions.json was written.

Rewriting sessions.json costs its whole size (87 MB at 100,000 sessions), so doing it at every
checkpoint makes the cost of a checkpoint grow with every session there is, not with what
changed. Instead, a checkpoint appends the entries that changed to `sessions.json.delta` (next to
sessions.json) and syncs it; sessions.json itself is rewritten only when the log has grown to a
share of its size, or is old (`WritePolicy`). sessions.json stays exactly OpenClaw's format and is
at most `max_age` behind while the daemon runs; a reader that knows the log (the daemon at
start-up, `doctor`) sees sessions.json with the log applied, which is what a full rewrite at
the last checkpoint would have written.

  invariant 1: a log holds changes on top of one version of sessions.json only: its first record
               names that version (its size and a hash of its bytes, which survive a copy of
               the state folder). A log whose base is not the sessions.json on disk is stale
               (sessions.json was rewritten after it, by us or anyone) and is ignored.
  invariant 2: a change is in the log and synced before the checkpoint that recorded it ends,
               so before the journal file that covered it may be reused (journal invariant 2):
               the journal replay then covers what sessions.json and the log lack, as before.
  invariant 3: each record is a whole entry (or its removal), so applying the log in order is
               idempotent and the last record of a key wins.

Format: journal frames (store/journal.py, CRC per frame): the first frame holds one record
`S\\t<identity>\\t<salt>\\t` naming the base; each later frame one checkpoint's changes, records
`E\\t-\\t-\\t<JSON [key, entry or null]>`, its CRC seeded with the salt. Reading stops at the
first torn frame, or the first of an older log: the log is begun again in place, and a power cut
may keep the new first frame and lose the truncation before it (journal.py, Salts).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE, fsync_dir
from daemon.store.journal import decode_file, frame, header

DELTA_SUFFIX = ".delta"
# Entries per orjson call when writing sessions.json: one call holds the interpreter lock
# throughout, and the event loop waits for it (about 0.5 ms per 1,000 entries here): the loop's
# longest wait for a checkpoint's serialising is one chunk's.
CHUNK = 256

Change = tuple[str, "dict[str, Any] | None"]


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """When a checkpoint rewrites sessions.json rather than appending to its log.

    Rewriting costs the file's size; appending costs what changed. Rewriting once the log (with
    what this checkpoint would add to it) has grown to `log_share` of the file's size keeps the
    rewrite's cost at most 1/`log_share` times the bytes that changed, whatever the number of
    sessions; a checkpoint that changed `busy_share` of the entries rewrites rather than logs
    them (logging a change costs more per entry than the rewrite does);
    small files are always rewritten (cheap, and sessions.json is then never behind); `max_age`
    (seconds) bounds how far behind it can be. A share of 1 (not less): while sessions are
    being created by the thousand, sessions.json grows with the log, and a smaller share
    rewrote the whole file each time it had grown by a quarter (five times every byte, where a
    share of 1 writes it about twice).
    """

    always_below: int = 256 << 10
    log_share: float = 1.0
    busy_share: float = 0.5
    max_age: float = 30.0

    def full(self, saved_size: int, log_size: int, age: float, coming: int = 0) -> bool:
        """`log_size`: the log with this checkpoint's changes; `coming`: those changes alone."""
        return (
            saved_size < self.always_below
            or log_size >= saved_size * self.log_share
            or coming >= saved_size * self.busy_share
            or age >= self.max_age
        )


def identity(data: bytes) -> str:
    """What names one version of sessions.json (hashlib lets other threads run meanwhile)."""
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def log_path(registry_path: Path) -> Path:
    return registry_path.with_name(registry_path.name + DELTA_SUFFIX)


def read_changes(registry_path: Path, registry_data: bytes) -> list[Change]:
    """The changes logged on top of sessions.json (whose bytes are `registry_data`), oldest
    first ([] when the log is missing, stale or unreadable: sessions.json is all there is)."""
    try:
        data = log_path(registry_path).read_bytes()
    except FileNotFoundError:
        return []
    records = iter(decode_file(data))
    first = next(records, None)
    if first is None or first.kind != "S" or first.a != identity(registry_data):
        return []
    out: list[Change] = []
    for rec in records:
        if rec.kind != "E":
            continue
        try:
            key, entry = orjson.loads(rec.payload)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            break
        if isinstance(key, str) and (entry is None or isinstance(entry, dict)):
            out.append((key, entry))
    return out


def apply_changes(doc: dict[str, Any], changes: list[Change]) -> None:
    for key, entry in changes:
        if entry is None:
            doc.pop(key, None)
        else:
            doc[key] = entry


def serialize(items: list[tuple[str, dict[str, Any]]]) -> bytes:
    """sessions.json's bytes (compact JSON) from its entries, in chunks: run in a worker thread,
    it lets the event loop in between (one orjson call holds the GIL throughout)."""
    parts = []
    for i in range(0, len(items), CHUNK):
        part = orjson.dumps(dict(items[i : i + CHUNK]))[1:-1]
        if part:
            parts.append(part)
    return b"{" + b",".join(parts) + b"}"


class ChangeLog:
    """One agent's `sessions.json.delta`, written by the checkpoint thread only.

    Errors: OSError as the system reports it (SyncFailed when a sync failed). A failed append is
    cut off again when it can be; otherwise the log is begun again at its next use.
    """

    def __init__(self, registry_path: Path) -> None:
        self.registry_path = registry_path
        self.path = log_path(registry_path)
        self.fd: int | None = None
        self.size = 0  # bytes of changes since the base
        self._end = 0
        self._base: str | None = None  # the sessions.json the log is on top of; None: begin again
        self._salt = 0  # the log's (its first frame's), for the frames appended after it

    def rebase(self) -> None:
        """sessions.json was rewritten: the next append begins the log again on top of it."""
        self._base = None
        self.size = 0

    def append(self, base: str, changes: list[Change]) -> int:
        """Log and sync one checkpoint's changes on top of the sessions.json whose identity is
        `base`; returns the bytes written."""
        if self._base != base:
            self._begin(base)
        # `record("E", "-", "-", payload)` written out: one of these per changed entry.
        records = [b"E\t-\t-\t%s\n" % orjson.dumps([key, entry]) for key, entry in changes]
        body = frame(records, self._salt)
        assert self.fd is not None
        try:
            fileio.pwrite(self.fd, body, self._end)
            fileio.fdatasync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):
                fileio.ftruncate(self.fd, self._end)
            self._base = None  # a torn frame would hide every later one: begin again
            raise
        self._end += len(body)
        self.size += len(body)
        return len(body)

    def _begin(self, base: str) -> None:
        if self.fd is None:
            created = not self.path.exists()
            self.fd = fileio.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            if created:
                fsync_dir(self.path.parent)
        head, salt = header("S", base)
        fileio.ftruncate(self.fd, 0)
        fileio.pwrite(self.fd, head, 0)
        fileio.fdatasync(self.fd)
        self._end = len(head)
        self.size = 0
        self._base = base
        self._salt = salt

    def close(self) -> None:
        if self.fd is not None:
            fileio.close(self.fd)
            self.fd = None
