"""The backup mirror's files: records, layout, and the writer that appends and syncs them.

    <backup>/sessiond-backup.json                  marker: this folder is a sessiond backup
    <backup>/<sessionId>/history.jsonl             the mirror of one session, append-only, 0600
    <backup>/archive/<sessionId>/history*.jsonl.gz  mirrors compressed by the retention sweep
    <backup>/<sessionId>/state.json                the session's state when it is archived

A record is `{role, content, timestamp, metadata}`; `metadata` holds agentId, sessionKey,
sessionId, entryId and channel, and `entry`: the rest of the transcript line, so the line can be
rebuilt exactly (`line_of`). The header and custom entries (resets, closings, compactions) are
mirrored too, with role and content null. Nothing here holds state between calls: the daemon's
mirror stage (daemon/backup.py) and the maintenance commands drive it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from daemon.core.ids import now_ms
from daemon.failpoints import failpoint
from daemon.guard import BACKUP_MARKER as BACKUP_MARKER
from daemon.store import fileio, transcript
from daemon.store.archive import transcript_candidates
from daemon.store.fsutil import (
    FILE_MODE,
    atomic_write,
    ensure_dir,
    fsync_dir,
    sync_filesystem,
    write_all,
)

log = structlog.get_logger("daemon.backup")

HISTORY = "history.jsonl"
STATE = "state.json"
ARCHIVE = "archive"
FORMAT_VERSION = 1
MAX_JOBS_PER_ROUND = 256  # catching up thousands of sessions must not starve new batches
MAX_BYTES_PER_JOB = 8 << 20  # a huge transcript is caught up over several rounds
SYNCFS_ABOVE = 16

# ---------------------------------------------------------------------------------------------
# Records (pure)


def to_record(
    line: bytes,
    *,
    agent_id: str,
    session_key: str | None,
    session_id: str,
    channel: str | None = None,
) -> dict[str, Any]:
    """The mirror record of one transcript line. Fields shown at the top level (role, content,
    timestamp, entry id) are left as null placeholders in `metadata.entry`, which keeps the
    line's key order, so `line_of` rebuilds it exactly."""
    meta: dict[str, Any] = {
        "agentId": agent_id,
        "sessionKey": session_key,
        "sessionId": session_id,
        "entryId": None,
        "channel": channel,
    }
    obj = transcript.json_object(line)
    if obj is None:
        meta["raw"] = base64.b64encode(line).decode()
        return {"role": None, "content": None, "timestamp": None, "metadata": meta}
    entry = dict(obj)
    role = content = None
    if "timestamp" in entry:
        entry["timestamp"] = None
    if entry.get("type") != "session" and "id" in entry:
        meta["entryId"] = entry["id"]
        entry["id"] = None
    msg = entry.get("message")
    if entry.get("type") == "message" and isinstance(msg, dict):
        msg = dict(msg)
        role, content = msg.get("role"), msg.get("content")
        for k in ("role", "content"):
            if k in msg:
                msg[k] = None
        entry["message"] = msg
    origin = obj.get("origin")
    if isinstance(origin, dict) and isinstance(origin.get("channel"), str):
        meta["channel"] = origin["channel"]
    meta["entry"] = entry
    return {"role": role, "content": content, "timestamp": obj.get("timestamp"), "metadata": meta}


def entry_of(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The transcript object a record was made from (None for a line that was not JSON)."""
    meta = rec.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("entry"), dict):
        return None
    entry = dict(meta["entry"])
    if "timestamp" in entry:
        entry["timestamp"] = rec.get("timestamp")
    if entry.get("type") != "session" and "id" in entry:
        entry["id"] = meta.get("entryId")
    msg = entry.get("message")
    if entry.get("type") == "message" and isinstance(msg, dict):
        msg = dict(msg)
        for k in ("role", "content"):
            if k in msg:
                msg[k] = rec.get(k)
        entry["message"] = msg
    return entry


def line_of(rec: dict[str, Any]) -> bytes:
    """The transcript line a record was made from."""
    meta = rec.get("metadata") or {}
    if isinstance(meta.get("raw"), str):
        return base64.b64decode(meta["raw"])
    entry = entry_of(rec)
    if entry is None:
        raise ValueError("not a mirror record")
    return orjson.dumps(entry)


def key_of_line(obj: Any, line: bytes) -> str:
    """Identity of a transcript line: its entry id, else a hash of its canonical form."""
    if isinstance(obj, dict) and obj.get("type") != "session":
        eid = obj.get("id")
        if isinstance(eid, str):
            return eid
    canon = orjson.dumps(obj) if isinstance(obj, dict) else line
    return "#" + hashlib.sha1(canon, usedforsecurity=False).hexdigest()


def key_of_record(rec: dict[str, Any]) -> str:
    meta = rec.get("metadata") or {}
    if isinstance(meta.get("raw"), str):
        return key_of_line(None, base64.b64decode(meta["raw"]))
    entry = entry_of(rec)
    return key_of_line(entry, b"")


def is_closing(rec: dict[str, Any]) -> bool:
    entry = (rec.get("metadata") or {}).get("entry")
    return isinstance(entry, dict) and entry.get("customType") == "sessiond.closed"


# ---------------------------------------------------------------------------------------------
# Mirror files


def live_path(root: Path, session_id: str) -> Path:
    return root / session_id / HISTORY


def compressed_segments(root: Path, session_id: str) -> list[Path]:
    """The compressed parts of a session's mirror, oldest first."""
    folder = root / ARCHIVE / session_id
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.endswith(".gz") and not p.name.startswith(".")]
    return sorted(found, key=_segment_order)


def _segment_order(p: Path) -> tuple[int, str]:
    # history.jsonl.gz, then history.1.jsonl.gz, history.2.jsonl.gz, ...
    parts = p.name.split(".")
    n = int(parts[1]) if len(parts) > 3 and parts[1].isdigit() else 0
    return n, p.name


def next_segment_name(root: Path, session_id: str) -> str:
    folder = root / ARCHIVE / session_id
    n = 0
    while True:
        name = f"{HISTORY}.gz" if n == 0 else f"history.{n}.jsonl.gz"
        if not (folder / name).exists():
            return name
        n += 1


def mirrored_sessions(root: Path) -> list[str]:
    """Session ids with a mirror (live or compressed)."""
    out: set[str] = set()
    if not root.is_dir():
        return []
    for e in os.scandir(root):
        if e.is_dir() and e.name != ARCHIVE and (Path(e.path) / HISTORY).is_file():
            out.add(e.name)
    arch = root / ARCHIVE
    if arch.is_dir():
        for e in os.scandir(arch):
            if e.is_dir() and compressed_segments(root, e.name):
                out.add(e.name)
    return sorted(out)


def _parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line of a crashed write
        if isinstance(rec, dict) and isinstance(rec.get("metadata"), dict):
            yield rec


def read_records(root: Path, session_id: str) -> Iterator[dict[str, Any]]:
    """Every record of a session's mirror, in order: compressed segments, then the live file."""
    for seg in compressed_segments(root, session_id):
        yield from _parse_lines(transcript.read_gz(seg))
    live = live_path(root, session_id)
    try:
        data = live.read_bytes()
    except FileNotFoundError:
        return
    cut = data.rfind(b"\n")
    yield from _parse_lines(data[: cut + 1])


def last_record(root: Path, session_id: str) -> dict[str, Any] | None:
    """The last complete record of a session's mirror (reads the live file's tail only)."""
    live = live_path(root, session_id)
    try:
        fd = os.open(live, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    if fd >= 0:
        try:
            for _off, line in transcript.iter_lines_backwards(fd, os.fstat(fd).st_size):
                for rec in _parse_lines(line):
                    return rec
        finally:
            os.close(fd)
    for seg in reversed(compressed_segments(root, session_id)):
        data = transcript.read_gz(seg)
        for _off, line in transcript.lines_backwards_in(data, len(data)):
            for rec in _parse_lines(line):
                return rec
    return None


# ---------------------------------------------------------------------------------------------
# Session state records


def state_path(root: Path, session_id: str) -> Path:
    return root / session_id / STATE


def state_record(archived: dict[str, Any]) -> dict[str, Any]:
    """The state record of an archived session: its archive index line (reason, times,
    predecessor and successor), marked `"state": "archived"`. A session without one is active,
    unless its mirror ends with its closing entry (mirrors from before state records)."""
    return {"state": "archived", **archived}


def read_state(root: Path, session_id: str) -> dict[str, Any] | None:
    """A session's state record, or None (none written, or unreadable: treated as none)."""
    try:
        data = state_path(root, session_id).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    obj = transcript.json_object(data.strip())
    return obj if obj is not None and obj.get("state") == "archived" else None


def write_states(root: Path, records: dict[str, dict[str, Any]]) -> int:
    """Write the state records (session id -> record) that differ from what is there; each
    replaces the old one atomically (synced, then renamed). Returns how many were written.
    Raises OSError (a record not written is written again at the next start-up)."""
    todo = {
        sid: rec
        for sid, rec in records.items()
        if valid_session_id(sid) and read_state(root, sid) != rec
    }
    if len(todo) > SYNCFS_ABOVE and _write_states_together(root, todo):
        return len(todo)
    for sid, rec in todo.items():
        folder = root / sid
        if not folder.is_dir():
            folder.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(root)
        atomic_write(state_path(root, sid), orjson.dumps(rec) + b"\n")
    return len(todo)


def _write_states_together(root: Path, todo: dict[str, dict[str, Any]]) -> bool:
    """Many state records (a reset job ends thousands of sessions): every temporary file
    written, one syncfs, every rename, one syncfs for the folders, where one at a time would
    cost three syncs each. False (nothing renamed, our temporary files removed) when syncfs is
    not available here. Raises OSError (each record keeps its old state; ours are removed)."""
    temps: list[tuple[Path, Path]] = []
    try:
        for sid, rec in todo.items():
            folder = root / sid
            folder.mkdir(mode=0o700, exist_ok=True)
            path = state_path(root, sid)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            fd = fileio.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            temps.append((tmp, path))
            try:
                write_all(fd, orjson.dumps(rec) + b"\n")
            finally:
                fileio.close(fd)
        if not sync_filesystem(root):
            raise _NoSyncfs()
    except (OSError, _NoSyncfs) as e:
        for tmp, _path in temps:
            with contextlib.suppress(FileNotFoundError):
                fileio.unlink(tmp)  # only our own temporary files
        if isinstance(e, _NoSyncfs):
            return False
        raise
    for tmp, path in temps:
        fileio.replace(tmp, path)
    sync_filesystem(root)
    return True


class _NoSyncfs(Exception):
    """syncfs(2) is not available here: the records are written one at a time."""


def ensure_root(root: Path) -> None:
    """Create the backup folder and its marker (first start, or a new path). Raises OSError."""
    ensure_dir(root)
    marker = root / BACKUP_MARKER
    if not marker.exists():
        atomic_write(marker, orjson.dumps({"format": "jsonl", "version": FORMAT_VERSION}) + b"\n")


# ---------------------------------------------------------------------------------------------
# Transcripts as a source


class Source:
    """A transcript to read lines from: a plain file (read where needed) or a `.gz` (whole)."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.path: Path | None = None
        self.fd = -1
        self.data: bytes | None = None
        first = paths[0] if paths else None
        if first is not None and not first.name.endswith(".gz"):
            # Where it nearly always is: the other places are looked at only when it is not.
            try:
                self.fd = os.open(first, os.O_RDONLY | os.O_CLOEXEC)
                self.path = first
                return
            except FileNotFoundError:
                pass
        for p in paths:
            for c in transcript_candidates(p):
                try:
                    if c.name.endswith(".gz"):
                        self.data = transcript.read_gz(c)
                    else:
                        self.fd = os.open(c, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                self.path = c
                return
        raise FileNotFoundError(f"transcript not found: {paths[0] if paths else '?'}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def size(self) -> int:
        return len(self.data) if self.data is not None else os.fstat(self.fd).st_size

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        out = []
        while start < end:
            chunk = os.pread(self.fd, min(end - start, 1 << 20), start)
            if not chunk:
                break
            out.append(chunk)
            start += len(chunk)
        return b"".join(out)

    def lines_backwards(self, end: int) -> Iterator[tuple[int, bytes]]:
        if self.data is not None:
            return transcript.lines_backwards_in(self.data, end)
        return transcript.iter_lines_backwards(self.fd, end)


# ---------------------------------------------------------------------------------------------
# Writing the mirror (worker thread; also used synchronously by doctor --repair)


@dataclass(frozen=True, slots=True)
class Job:
    """Mirror one session's transcript from `start` (None: locate it first) up to `end` (None:
    the end of the file, for a transcript nothing writes to any more)."""

    session_id: str
    agent_id: str
    session_key: str | None
    channel: str | None
    paths: tuple[Path, ...]
    start: int | None
    end: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    session_id: str
    done: int | None  # mirrored and synced up to this transcript offset (None: not found)
    end: int  # the end this round worked towards
    records: int
    missing: bool = False  # the transcript was not found (moved meanwhile): try again
    refilled: int = 0  # records put back into a hole (see refill_holes)
    kept: str | None = None  # the damaged mirror file kept aside, when a hole was refilled


@dataclass(slots=True)
class _Open:
    fd: int
    before: int
    new_file: bool


class MirrorWriter:
    """Appends records to mirror files and syncs them; owns no state between rounds."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check_root(self) -> None:
        """Raise FileNotFoundError when the backup folder is gone (e.g. its disk unmounted): a
        mirror written into an empty mount point would be on the wrong disk."""
        if not (self.root / BACKUP_MARKER).is_file():
            raise FileNotFoundError(
                2, f"backup folder {self.root} is missing or not mounted (no {BACKUP_MARKER})"
            )

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Mirror each job's lines, then sync every file written (one syncfs when many).

        Raises OSError when the mirror cannot be written or synced; bytes appended by the failed
        round are cut off again where possible (a torn record left behind is moved into a side
        file when the session is next located). A transcript that is not found is reported in its
        outcome, not raised: it was moved or compressed meanwhile and is found next round.
        """
        self.check_root()
        opened: dict[str, _Open] = {}
        new_dirs: set[Path] = set()
        outcomes: list[Outcome] = []
        try:
            for job in jobs:
                outcomes.append(self._one(job, opened, new_dirs))
            self._sync(opened, new_dirs)
        except OSError:
            for o in opened.values():
                with contextlib.suppress(OSError):
                    os.ftruncate(o.fd, o.before)
            raise
        finally:
            for o in opened.values():
                os.close(o.fd)
        return outcomes

    def _one(self, job: Job, opened: dict[str, _Open], new_dirs: set[Path]) -> Outcome:
        if not valid_session_id(job.session_id):
            log.error("backup.bad_session_id", sessionId=job.session_id)
            return Outcome(job.session_id, 0, 0, 0)
        if job.start is None and job.end is None:
            # A finished transcript whose mirror ends with its closing entry is complete: no
            # need to read (or decompress) the transcript at every start-up.
            last = last_record(self.root, job.session_id)
            if last is not None and is_closing(last):
                return Outcome(job.session_id, 0, 0, 0)
        try:
            src = Source(job.paths)
        except FileNotFoundError:
            return Outcome(job.session_id, job.start, job.end or 0, 0, missing=True)
        refilled, kept = 0, None
        try:
            size = src.size()
            end = size if job.end is None else min(job.end, size)
            seen: set[str] | None = None
            start = job.start
            if start is None:
                refilled, kept = self.refill_holes(job, src, end)
                start, seen = self.locate(job.session_id, src, end)
            if start >= end:
                return Outcome(job.session_id, start, end, refilled, False, refilled, kept)
            stop = min(end, start + MAX_BYTES_PER_JOB)
            data = src.read(start, stop)
            cut = data.rfind(b"\n")
            if cut < 0 and stop < end:
                data = src.read(start, end)  # one line longer than the chunk
                stop = end
                cut = data.rfind(b"\n")
        finally:
            src.close()
        if job.end is None and stop == end and not data.endswith(b"\n"):
            # A finished transcript ending in a fragment (a torn line OpenClaw left behind): it
            # is user bytes too, mirrored as a raw record.
            data += b"\n"
            consumed = len(data) - 1
        elif cut < 0:
            return Outcome(job.session_id, start, end, refilled, False, refilled, kept)
        else:
            data = data[: cut + 1]
            consumed = len(data)
        out = []
        for line in data[:-1].split(b"\n"):
            if seen is not None:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    obj = None
                if key_of_line(obj, line) in seen:
                    continue
            rec = to_record(
                line,
                agent_id=job.agent_id,
                session_key=job.session_key,
                session_id=job.session_id,
                channel=job.channel,
            )
            out.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        if out:
            o = opened.get(job.session_id) or self._open(job.session_id, opened, new_dirs)
            _write_all(o.fd, b"".join(out))
            failpoint("mirror.after_write")
        done = start + consumed
        return Outcome(job.session_id, done, end, len(out) + refilled, False, refilled, kept)

    def refill_holes(self, job: Job, src: Source, end: int) -> tuple[int, str | None]:
        """Refill a hole a power cut left in the recent part of the mirror (zeros with complete
        records after them, which locating by the last record would never notice) from the
        transcript. Returns the number of records put back and the name of the damaged file
        kept aside (the caller logs them: this may run in the mirror's worker process).
        Raises OSError."""
        from daemon.store import mirror_holes  # it builds on this module

        live = live_path(self.root, job.session_id)
        _repair_tail(live)
        if not mirror_holes.recent_zeros(live):
            return 0, None
        plan = mirror_holes.plan_refill(self.root, job, src, end)
        if plan is None:
            return 0, None
        return len(plan.missing), mirror_holes.apply_refill(self.root, job.session_id, plan).name

    def locate(self, session_id: str, src: Source, end: int) -> tuple[int, set[str] | None]:
        """Where the mirror of this session stands in its transcript: the offset after the line
        whose entry id is the mirror's last, or 0 and the set of every mirrored line's identity
        when that line cannot be found. Cuts a torn last record into a side file first."""
        live = live_path(self.root, session_id)
        _repair_tail(live)
        last = last_record(self.root, session_id)
        if last is None:
            return 0, None
        want = key_of_record(last)
        for off, line in src.lines_backwards(end):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            if key_of_line(obj, line) == want:
                return off + len(line) + 1, None
        seen = {key_of_record(r) for r in read_records(self.root, session_id)}
        return 0, seen

    def _open(self, session_id: str, opened: dict[str, _Open], new_dirs: set[Path]) -> _Open:
        """Open (or create) a session's mirror file for appending. A new session's folder is
        simply created (no look first: most rounds mirror new sessions), and the file is created
        exclusively, which says whether it is new without a look either."""
        folder = self.root / session_id
        try:
            folder.mkdir(mode=0o700)
            new_dirs.add(self.root)
        except FileExistsError:
            pass
        path = folder / HISTORY
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
            o = opened[session_id] = _Open(fd, os.fstat(fd).st_size, False)
            return o
        o = opened[session_id] = _Open(fd, 0, True)
        new_dirs.add(folder)
        return o

    def _sync(self, opened: dict[str, _Open], new_dirs: set[Path]) -> None:
        """One syncfs for the whole round when it touched many files or folders: it covers the
        files' data and every new folder entry, so no folder is synced one by one after it
        (a round mirroring 256 new sessions made 257 folder syncs). Else a sync per file and
        per new folder, parents first."""
        if not opened:
            return
        if len(opened) + len(new_dirs) > SYNCFS_ABOVE and sync_filesystem(self.root):
            return
        for o in opened.values():
            os.fdatasync(o.fd)
        for d in sorted(new_dirs, key=lambda p: len(str(p))):
            fsync_dir(d)


def valid_session_id(sid: str) -> bool:
    """Session ids become folder names in the backup; anything that could leave it is refused."""
    return bool(sid) and "/" not in sid and "\x00" not in sid and sid not in (".", "..", ARCHIVE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _repair_tail(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        transcript.repair_torn_tail(path, now_ms())


# ---------------------------------------------------------------------------------------------
# Catching up synchronously (doctor --repair; tests)


@dataclass(slots=True)
class CatchUp:
    sessions: int = 0
    records: int = 0
    missing: list[str] = field(default_factory=list)


def catch_up(root: Path, targets: list[Job]) -> CatchUp:
    """Mirror everything the transcripts hold beyond the mirror, to the end of each file (the
    caller holds the state folder's lock, so nothing is being written). Raises OSError."""
    ensure_root(root)
    w = MirrorWriter(root)
    out = CatchUp()
    todo = list(targets)
    n = MAX_JOBS_PER_ROUND
    while todo:
        results = w.run(todo[:n])
        nxt = []
        for job, o in zip(todo[:n], results, strict=True):
            out.records += o.records
            if o.missing:
                out.missing.append(job.session_id)
            elif o.done is not None and o.done < o.end and o.done != job.start:
                nxt.append(Job(**{**_job_fields(job), "start": o.done}))
            else:
                out.sessions += 1
        todo = nxt + todo[n:]
    return out


def _job_fields(job: Job) -> dict[str, Any]:
    return {
        "session_id": job.session_id,
        "agent_id": job.agent_id,
        "session_key": job.session_key,
        "channel": job.channel,
        "paths": job.paths,
        "start": job.start,
        "end": job.end,
    }
