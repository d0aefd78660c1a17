"""Holes in a backup mirror (issue 12): a page a power cut never wrote (zeros) in the middle of a
`history.jsonl`, with complete records after it, or records missing between others (a gap).

A mirror with a hole is refilled from its transcript: the intact records in their order, with
the transcript lines missing between them put back where they belong (nothing doubled, a record
only the mirror has stays in place). The old file is kept beside it as
`history.jsonl.damaged-<ms>`; the new one is written under a temporary name, synced, and renamed
into place. The daemon checks the recent part of a mirror each time it locates a session
(`MirrorWriter.refill_holes`); `doctor` looks at every byte (`daemon/doctor_holes.py`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from daemon.core.holes import Damage, damaged_lines, has_zeros
from daemon.core.ids import now_ms
from daemon.failpoints import failpoint
from daemon.store import transcript
from daemon.store.backup import (
    MAX_BYTES_PER_JOB,
    Job,
    Source,
    _parse_lines,
    _repair_tail,
    _write_all,
    compressed_segments,
    key_of_line,
    key_of_record,
    live_path,
    to_record,
)
from daemon.store.fsutil import FILE_MODE, fsync_dir

# A power cut can only leave a hole in what it had not synced yet: the last round, at most one job
# of MAX_BYTES_PER_JOB per session. Locating a session looks that far back for zeros.
HOLE_SCAN_BYTES = 2 * MAX_BYTES_PER_JOB
DAMAGED = "damaged"  # <sessionId>/history.jsonl.damaged-<ms>: a mirror with a hole, kept as it was


def is_record_line(line: bytes) -> bool:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(rec, dict) and isinstance(rec.get("metadata"), dict)


def recent_zeros(live: Path) -> bool:
    """Whether the last HOLE_SCAN_BYTES of a live mirror hold zeros (the cheap check made each
    time a session is located; `doctor` looks at every byte)."""
    try:
        fd = os.open(live, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - HOLE_SCAN_BYTES)
        return has_zeros(os.pread(fd, size - start, start))
    finally:
        os.close(fd)


def mirror_damage(live: Path) -> list[Damage]:
    """Every damaged complete line of a live mirror file (zeros, or not a record)."""
    try:
        data = live.read_bytes()
    except FileNotFoundError:
        return []
    return damaged_lines(data, is_record_line)


@dataclass(frozen=True, slots=True)
class RefillPlan:
    """A live mirror rewritten whole: its good records in their order, with the transcript lines
    missing between them (`missing`: their identities) put back where they belong."""

    damage: list[Damage]
    missing: list[str]
    content: bytes


def plan_refill(root: Path, job: Job, src: Source, end: int) -> RefillPlan | None:
    """What refilling a session's live mirror would write, or None when it has no damaged line
    and no gap (a transcript line missing before the mirror's last record). Only reads.

    Lines after the mirror's last record are not gaps (catching up appends them). A record the
    transcript does not hold stays where it is; nothing is doubled: a line already in the
    mirror (live or compressed) is never put back.
    """
    live = live_path(root, job.session_id)
    try:
        data = live.read_bytes()
    except FileNotFoundError:
        return None
    body = data[: data.rfind(b"\n") + 1]
    damage = damaged_lines(body, is_record_line)
    good: list[tuple[str, bytes]] = []
    for line in body.split(b"\n")[:-1]:
        if line and not has_zeros(line) and is_record_line(line):
            good.append((key_of_record(orjson.loads(line)), line))
    have = {k for k, _ in good}
    for seg in compressed_segments(root, job.session_id):
        have.update(key_of_record(r) for r in _parse_lines(transcript.read_gz(seg)))
    text = src.read(0, end)
    lines = text[: text.rfind(b"\n") + 1].split(b"\n")[:-1]
    keys: list[str] = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        keys.append(key_of_line(obj, line))
    where: dict[str, int] = {}
    for i, k in enumerate(keys):
        where.setdefault(k, i)
    out: list[bytes] = []
    missing: list[str] = []
    put: set[str] = set()
    prev = -1
    for k, rec_line in good:
        at = where.get(k)
        if at is not None and at > prev:
            for j in range(prev + 1, at):
                if keys[j] in have or keys[j] in put or not lines[j]:
                    continue
                rec = to_record(
                    lines[j],
                    agent_id=job.agent_id,
                    session_key=job.session_key,
                    session_id=job.session_id,
                    channel=job.channel,
                )
                out.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
                missing.append(keys[j])
                put.add(keys[j])
            prev = at
        out.append(rec_line + b"\n")
    if not damage and not missing:
        return None
    return RefillPlan(damage, missing, b"".join(out))


def apply_refill(root: Path, session_id: str, plan: RefillPlan) -> Path:
    """Move the live mirror aside as `history.jsonl.damaged-<ms>` (kept: its damaged bytes are
    never deleted) and put the refilled one in its place. Returns the kept file's path.

    The new file is written and synced under a temporary name first; a crash between the two
    renames leaves no live file, and locating the session then mirrors the transcript again
    from its start (the kept file still holds every old byte). Raises OSError.
    """
    live = live_path(root, session_id)
    tmp = live.with_name(f".{live.name}.tmp-{os.getpid()}")
    kept = live.with_name(f"{live.name}.{DAMAGED}-{now_ms()}")
    while kept.exists():
        kept = kept.with_name(kept.name + "x")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            _write_all(fd, plan.content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(live, kept)
        failpoint("mirror.refill_kept")
        os.rename(tmp, live)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # only our own temporary file
        raise
    fsync_dir(live.parent)
    return kept


def refill(root: Path, job: Job) -> int:
    """Refill one session's live mirror (doctor --repair): every damaged line and gap, not only
    recent zeros. Returns the number of records put back. Raises OSError."""
    _repair_tail(live_path(root, job.session_id))
    src = Source(job.paths)
    try:
        plan = plan_refill(root, job, src, src.size())
    finally:
        src.close()
    if plan is None:
        return 0
    apply_refill(root, job.session_id, plan)
    return len(plan.missing)
