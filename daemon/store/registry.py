"""The session registry: `sessions.json` per agent, in OpenClaw's shape, plus what a writer needs.

The registry is derived data: the transcripts (and, after a crash, the journal) are the truth.
It is held in memory, written atomically at checkpoints (never once per message), and rebuilt
from transcript headers when `sessions.json` is missing or unreadable. Fields sessiond does not
know (OpenClaw's skillsSnapshot, systemPromptReport, ...) are kept as they were read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.core.ids import now_ms
from daemon.store import fileio
from daemon.store.entry import SessionEntry
from daemon.store.fsutil import atomic_write
from daemon.store.transcript import read_header

SESSIONS_JSON = "sessions.json"


@dataclass(slots=True)
class SessionState:
    """One live session: its registry entry and the writer's position in its transcript."""

    agent_id: str
    session_key: str
    session_id: str
    rel_path: str  # transcript path relative to the state folder
    entry: SessionEntry  # the sessions.json entry, unknown fields included
    size: int = -1  # next append offset; -1 until the tail has been read
    last_entry_id: str | None = None
    fd: int | None = None
    new: bool = False  # created since the last checkpoint (its folder needs a sync)

    @property
    def loaded(self) -> bool:
        return self.size >= 0


@dataclass(slots=True)
class AgentRegistry:
    """The sessions of one agent, keyed by session key."""

    agent_id: str
    folder: Path  # <stateDir>/agents/<agentId>/sessions
    sessions: dict[str, SessionState] = field(default_factory=dict)
    dirty: bool = False

    def serialize(self, sessions: dict[str, SessionState] | None = None) -> bytes:
        """sessions.json's bytes: these sessions (default: all of this agent's)."""
        chosen = self.sessions if sessions is None else sessions
        doc = {key: st.entry.document() for key, st in chosen.items()}
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    def changed(self) -> None:
        """Write sessions.json at the next checkpoint (again, after a failed one)."""
        self.dirty = True

    def entry(self, data: dict[str, Any]) -> SessionEntry:
        """An entry of this registry: its setters mark it changed."""
        return SessionEntry(data, self.changed)

    def rename(self, old: str, new: str) -> SessionState:
        """Give a session a new key (the caller checked `new` is free)."""
        st = self.sessions.pop(old)
        st.session_key = new
        self.sessions[new] = st
        self.dirty = True
        return st

    def save_if_changed(self) -> None:
        """Write sessions.json now if it changed (worker thread). Raises OSError."""
        if self.dirty:
            self.save(self.serialize())
            self.dirty = False

    def save(self, data: bytes) -> None:
        """Atomically replace sessions.json (mode 0600). Raises OSError on failure."""
        atomic_write(self.folder / SESSIONS_JSON, data, step="registry")


def is_active_transcript_name(name: str) -> bool:
    """`<id>.jsonl` or OpenClaw's `<id>-topic-<thread>.jsonl`; archived names are not active,
    nor OpenClaw's `<id>.trajectory.jsonl` side files (not sessions)."""
    return name.endswith(".jsonl") and not name.startswith(".") and ".trajectory." not in name


def session_file_name(entry: Mapping[str, Any], session_id: str) -> str:
    """The transcript file name for a registry entry.

    OpenClaw writes an absolute `sessionFile` from the machine that wrote it; only its base name
    is trusted, and only when it is a plain name that cannot leave the sessions folder.
    """
    sf = entry.get("sessionFile")
    if isinstance(sf, str) and sf:
        name = os.path.basename(sf)
        plain = name not in ("", ".", "..") and not any(c in name for c in "\x00\t\n")
        if plain and is_active_transcript_name(name):
            return name
    return f"{session_id}.jsonl"


def read_registry(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """sessions.json parsed, or None and what is wrong with it ("is missing", ...)."""
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, orjson.JSONDecodeError) as e:
        return None, f"is unreadable ({e})"
    if not isinstance(doc, dict):
        return None, "is not a JSON object"
    return doc, None


def fill_registry(reg: AgentRegistry, doc: dict[str, Any]) -> None:
    """Registry entries from a parsed sessions.json (entries without a session id are skipped)."""
    for key, entry in doc.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sessionId"), str):
            continue
        sid = entry["sessionId"]
        name = session_file_name(entry, sid)
        rel = f"agents/{reg.agent_id}/sessions/{name}"
        reg.sessions[key] = SessionState(reg.agent_id, key, sid, rel, reg.entry(dict(entry)))


def load_agent(state_dir: Path, agent_id: str, folder: Path) -> tuple[AgentRegistry, str | None]:
    """Load one agent's registry; rebuild it from transcript headers when it cannot be read.

    Returns the registry and, when it was rebuilt, the reason (for the log). An unreadable
    sessions.json is kept aside as `sessions.json.corrupt-<ms>`, never removed.
    """
    reg = AgentRegistry(agent_id, folder)
    path = folder / SESSIONS_JSON
    doc, problem = read_registry(path)
    if doc is not None:
        fill_registry(reg, doc)
        return reg, None
    reason = f"sessions.json {problem}"
    if path.exists():
        aside = path.with_name(f"{SESSIONS_JSON}.corrupt-{now_ms()}")
        fileio.replace(path, aside)
    rebuild_from_transcripts(state_dir, reg)
    reg.dirty = True
    return reg, reason


def rebuild_from_transcripts(state_dir: Path, reg: AgentRegistry) -> None:
    """Fill `reg` from the headers of the active transcripts (first line only, never whole files).

    When two transcripts claim one key, the newer header wins; the other stays on disk untouched.
    Transcripts without our `sessionKey` header field (written by OpenClaw) cannot be mapped and
    are left alone.
    """
    if not reg.folder.is_dir():
        return
    best: dict[str, tuple[str, str, dict[str, Any], int]] = {}
    for entry in os.scandir(reg.folder):
        if not entry.is_file() or not is_active_transcript_name(entry.name):
            continue
        header = read_header(Path(entry.path))
        if header is None:
            continue
        key = header.get("sessionKey")
        sid = header.get("id")
        if not isinstance(key, str) or not isinstance(sid, str):
            continue
        ts = str(header.get("timestamp", ""))
        mtime_ms = int(entry.stat().st_mtime * 1000)
        prev = best.get(key)
        if prev is None or ts > prev[0]:
            best[key] = (ts, entry.name, {"sessionId": sid}, mtime_ms)
    for key, (_ts, name, entry_doc, mtime_ms) in best.items():
        sid = entry_doc["sessionId"]
        entry_doc.update(
            {
                "sessionFile": str(state_dir / "agents" / reg.agent_id / "sessions" / name),
                "updatedAt": mtime_ms,
            }
        )
        rel = f"agents/{reg.agent_id}/sessions/{name}"
        reg.sessions[key] = SessionState(reg.agent_id, key, sid, rel, reg.entry(entry_doc))
