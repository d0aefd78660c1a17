"""`sessiond backup verify`: proof that the backup mirror and the transcripts agree.

Per session, every line of its transcripts (active, archived, compressed) is compared with the
mirror's records by identity (the entry id; a hash of the line for the header and for lines
without one): entries missing from the mirror, extra entries only the mirror has, entries the
mirror holds twice, and entries whose content differs. Then each session's state: one archived
in the state folder must be recorded archived in the mirror, with the same reason and lineage
(what a restore gives back), and an active one must not. Only reads; safe while a daemon runs
(a session still being mirrored is looked at again for a few seconds before it counts).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.store import archive
from daemon.store import backup as mirror_files
from daemon.store.backup import Source, entry_of, key_of_line, key_of_record
from daemon.store.registry import SESSIONS_JSON, is_active_transcript_name, read_registry

SHOW_IDS = 10  # ids listed per kind of difference in the text report
LAG_RETRIES = 3
LAG_PAUSE = 1.5


@dataclass(frozen=True, slots=True)
class TranscriptFile:
    """A transcript in a state folder: active, or archived (plain or compressed)."""

    agent_id: str
    path: Path
    archived: bool


def transcript_files(state_dir: Path) -> Iterator[TranscriptFile]:
    """Every transcript of every agent, active first; side files (torn fragments, corrupt
    registries) and our temporary files are not transcripts."""
    agents = state_dir / "agents"
    if not agents.is_dir():
        return
    for agent in sorted(os.scandir(agents), key=lambda e: e.name):
        folder = Path(agent.path) / "sessions"
        if not folder.is_dir():
            continue
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if not e.is_file() or e.name.startswith("."):
                continue
            if is_active_transcript_name(e.name):
                yield TranscriptFile(agent.name, Path(e.path), False)
            elif archive.OPENCLAW_SUFFIX.match(e.name):
                yield TranscriptFile(agent.name, Path(e.path), True)
        for p in sorted(archive.archived_files(folder)):
            if ".torn-" not in p.name:
                yield TranscriptFile(agent.name, p, True)


def session_id_of(path: Path, first_line: bytes | None) -> str:
    """The header's id, else the file name before `.jsonl`."""
    if first_line:
        try:
            obj = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            obj = None
        if (
            isinstance(obj, dict)
            and obj.get("type") == "session"
            and isinstance(obj.get("id"), str)
        ):
            return str(obj["id"])
    return path.name.split(".jsonl")[0]


def known_keys(state_dir: Path) -> dict[str, str]:
    """session id -> session key, from registries and archive indexes (for exclude_patterns)."""
    out: dict[str, str] = {}
    agents = state_dir / "agents"
    if not agents.is_dir():
        return out
    for agent in os.scandir(agents):
        folder = Path(agent.path) / "sessions"
        for rec in archive.read_index(folder):
            if rec.sessionKey:
                out[rec.sessionId] = rec.sessionKey
        doc = read_registry(folder / SESSIONS_JSON)[0]  # with its change log applied
        for key, entry in doc.items() if doc is not None else []:
            if isinstance(entry, dict) and isinstance(entry.get("sessionId"), str):
                out[entry["sessionId"]] = key
    return out


@dataclass(slots=True)
class SessionDiff:
    session_id: str
    session_key: str | None
    transcript_entries: int
    mirror_entries: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.doubled or self.differs)

    def to_json(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "sessionKey": self.session_key,
            "transcriptEntries": self.transcript_entries,
            "mirrorEntries": self.mirror_entries,
            "missing": self.missing,
            "extra": self.extra,
            "doubled": self.doubled,
            "differs": self.differs,
        }

    def render(self) -> str:
        parts = []
        for name, ids in (
            ("missing from the mirror", self.missing),
            ("only in the mirror", self.extra),
            ("mirrored twice", self.doubled),
            ("different", self.differs),
        ):
            if ids:
                shown = ", ".join(ids[:SHOW_IDS]) + (", ..." if len(ids) > SHOW_IDS else "")
                parts.append(f"{len(ids)} {name} ({shown})")
        return f"{self.session_id} ({self.session_key or 'no key'}): " + "; ".join(parts)


@dataclass(slots=True)
class VerifyReport:
    sessions: int = 0
    entries: int = 0
    excluded: int = 0
    diffs: list[SessionDiff] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # sessions whose state the mirror misstates

    @property
    def ok(self) -> bool:
        return not (self.diffs or self.states)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sessions": self.sessions,
            "entries": self.entries,
            "excluded": self.excluded,
            "differences": [d.to_json() for d in self.diffs],
            "states": self.states,
        }

    def render(self) -> str:
        lines = [d.render() for d in self.diffs] + self.states
        verdict = (
            "mirror and transcripts agree"
            if self.ok
            else f"{len(self.diffs)} session(s) differ, {len(self.states)} state(s) differ"
        )
        lines.append(
            f"verified {self.sessions} session(s), {self.entries} entries"
            + (f" ({self.excluded} excluded by exclude_patterns)" if self.excluded else "")
            + f": {verdict}"
        )
        return "\n".join(lines)


def _transcript_entries(files: list[TranscriptFile]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in files:
        src = Source((f.path,))
        try:
            data = src.read(0, src.size())
        finally:
            src.close()
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            out.setdefault(key_of_line(obj, line), obj)
    return out


def compare(
    session_id: str, session_key: str | None, files: list[TranscriptFile], root: Path
) -> SessionDiff:
    """One session: its transcripts against its mirror."""
    t = _transcript_entries(files) if files else {}
    m: dict[str, Any] = {}
    doubled: list[str] = []
    for rec in mirror_files.read_records(root, session_id):
        k = key_of_record(rec)
        if k in m:
            doubled.append(k)
            continue
        m[k] = entry_of(rec)
    d = SessionDiff(session_id, session_key, len(t), len(m), doubled=doubled)
    d.missing = [k for k in t if k not in m]
    d.extra = [k for k in m if k not in t]
    d.differs = [k for k, obj in t.items() if k in m and obj is not None and m[k] != obj]
    return d


def verify(
    state_dir: Path,
    root: Path,
    *,
    excluded: Callable[[str | None], bool] = lambda _k: False,
    daemon_running: bool = False,
    progress: Callable[[int, int], None] = lambda _d, _t: None,
) -> VerifyReport:
    """Compare every session's transcripts with its mirror. With a daemon running, a session
    that differs is looked at again a few times: the mirror follows within about a second."""
    by_sid: dict[str, list[TranscriptFile]] = {}
    keys = known_keys(state_dir)
    for f in transcript_files(state_dir):
        first = first_line(f.path)
        sid = session_id_of(f.path, first)
        by_sid.setdefault(sid, []).append(f)
        if sid not in keys:
            key = _header_key(first)
            if key is not None:
                keys[sid] = key
    sids = sorted(set(by_sid) | set(mirror_files.mirrored_sessions(root)))
    report = VerifyReport()
    for n, sid in enumerate(sids, 1):
        key = keys.get(sid)
        if excluded(key):
            report.excluded += 1
            progress(n, len(sids))
            continue
        d = compare(sid, key, by_sid.get(sid, []), root)
        tries = LAG_RETRIES if daemon_running else 0
        while not d.ok and tries:
            time.sleep(LAG_PAUSE)
            tries -= 1
            d = compare(sid, key, by_sid.get(sid, []), root)
        report.sessions += 1
        report.entries += d.transcript_entries
        if not d.ok:
            report.diffs.append(d)
        progress(n, len(sids))
    report.states = state_diffs(state_dir, root, keys, excluded)
    tries = LAG_RETRIES if daemon_running else 0
    while report.states and tries:
        time.sleep(LAG_PAUSE)
        tries -= 1
        report.states = state_diffs(state_dir, root, keys, excluded)
    return report


def state_diffs(
    state_dir: Path, root: Path, keys: dict[str, str], excluded: Callable[[str | None], bool]
) -> list[str]:
    """Sessions whose state a restore from the mirror would get wrong, one line each."""
    archived: dict[str, archive.ArchiveRecord] = {}
    active: set[str] = set()
    agents = state_dir / "agents"
    for agent in sorted(os.scandir(agents), key=lambda e: e.name) if agents.is_dir() else []:
        folder = Path(agent.path) / "sessions"
        for found in archive.read_index(folder):
            archived[found.sessionId] = found
        doc = read_registry(folder / SESSIONS_JSON)[0]  # with its change log applied
        for entry in doc.values() if doc is not None else []:
            if isinstance(entry, dict) and isinstance(entry.get("sessionId"), str):
                active.add(entry["sessionId"])
    out = []
    for sid in mirror_files.mirrored_sessions(root):
        if excluded(keys.get(sid)):
            continue
        state = mirror_files.read_state(root, sid)
        rec = archived.get(sid)
        if rec is not None and sid not in active:
            if state is None:
                last = mirror_files.last_record(root, sid)
                if last is None or not mirror_files.is_closing(last):
                    out.append(
                        f"{sid}: archived ({rec.reason}) in the state folder, but the mirror "
                        "does not record it (a restore would make it active)"
                    )
                continue
            said = (state.get("reason"), state.get("predecessor"), state.get("successor"))
            if said != (rec.reason, rec.predecessor, rec.successor):
                out.append(
                    f"{sid}: archived as (reason, predecessor, successor) "
                    f"{(rec.reason, rec.predecessor, rec.successor)}, the mirror says {said}"
                )
        elif sid in active and state is not None:
            out.append(
                f"{sid}: active in the state folder, but the mirror records it archived "
                f"({state.get('reason')})"
            )
    return out


def first_line(path: Path) -> bytes | None:
    """A transcript's first line (its header), also of a .gz archive; None when unreadable."""
    try:
        if path.name.endswith(".gz"):
            import gzip

            with gzip.open(path, "rb") as f:
                return f.readline(1 << 20)
        with open(path, "rb") as f:
            return f.readline(1 << 20)
    except (OSError, EOFError):
        return None


def _header_key(first: bytes | None) -> str | None:
    if not first:
        return None
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("sessionKey"), str):
        return str(obj["sessionKey"])
    return None
