"""The session registry: `sessions.json` per agent, in OpenClaw's shape, plus what a writer needs.

The registry is derived data: the transcripts (and, after a crash, the journal) are the truth.
It is held in memory, written at checkpoints (never once per message): the entries that changed
are appended to sessions.json's change log, and sessions.json is rewritten atomically when the
log has grown to a share of its size or is old (store/registry_log.py). It is rebuilt from
transcript headers when `sessions.json` is missing or unreadable. Fields sessiond does not
know (OpenClaw's skillsSnapshot, systemPromptReport, ...) are kept as they were read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.core.ids import now_ms
from daemon.store import fileio
from daemon.store.entry import SessionEntry
from daemon.store.fsutil import Staged, atomic_write, stage_atomic
from daemon.store.registry_log import (
    ChangeLog,
    WritePolicy,
    apply_changes,
    identity,
    read_changes,
    serialize,
)
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
class RegistryWrite:
    """What one checkpoint writes for one agent, decided on the event loop: either all its
    entries (sessions.json rewritten) or the entries that changed (appended to its log; None
    for a key that no longer names a session).

    A rewrite is decided on the event loop as a copy of the agent's sessions (one C-level copy
    of a dict), and the entries to write are picked from it in the checkpoint's thread
    (`entries`): at 100,000 sessions going through each of them held the loop for tens of
    milliseconds at every rewrite, and with it every acknowledgement."""

    full: list[tuple[str, SessionState]] | None = None  # the sessions as they were at the plan
    leave_out: frozenset[int] = frozenset()  # id() of sessions unwritten batches created
    shown: dict[str, SessionState] = field(default_factory=dict)  # ... and what they replace
    changes: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """The entries of a rewrite (any thread: it reads only its own copy)."""
        assert self.full is not None
        leave_out = self.leave_out
        whole = {k: st for k, st in self.full if id(st) not in leave_out}
        for k, st in self.shown.items():
            whole.setdefault(k, st)
        return [(k, st.entry.document()) for k, st in whole.items()]


@dataclass(slots=True)
class AgentRegistry:
    """The sessions of one agent, keyed by session key.

    What the next checkpoint writes: `dirty` asks for sessions.json to be rewritten whole
    (start-up, a failed write); `changed_keys` names the entries that changed since the last
    checkpoint, which it appends to the change log (store/registry_log.py) unless the policy
    says a rewrite is due.
    """

    agent_id: str
    folder: Path  # <stateDir>/agents/<agentId>/sessions
    sessions: dict[str, SessionState] = field(default_factory=dict)
    dirty: bool = False
    changed_keys: set[str] = field(default_factory=set)
    saved_size: int = -1  # bytes of sessions.json as last written or read; -1: none yet
    saved_id: str | None = None  # its identity (registry_log.identity); None: none yet
    saved_at: float = field(default_factory=time.monotonic)
    log: ChangeLog | None = None

    def serialize(self, sessions: dict[str, SessionState] | None = None) -> bytes:
        """sessions.json's bytes: these sessions (default: all of this agent's)."""
        chosen = self.sessions if sessions is None else sessions
        return serialize([(key, st.entry.document()) for key, st in chosen.items()])

    def changed(self, key: str | None = None) -> None:
        """Write this entry (None: all of sessions.json) at the next checkpoint."""
        if key is None:
            self.dirty = True
        else:
            self.changed_keys.add(key)

    @property
    def pending(self) -> bool:
        return self.dirty or bool(self.changed_keys)

    def entry(self, data: dict[str, Any], key: str) -> SessionEntry:
        """The entry of this registry's session `key`: its setters mark that key changed."""
        return SessionEntry(data, self.changed, key)

    def rename(self, old: str, new: str) -> SessionState:
        """Give a session a new key (the caller checked `new` is free)."""
        st = self.sessions.pop(old)
        st.session_key = new
        st.entry.key = new
        self.sessions[new] = st
        self.changed_keys.update((old, new))
        return st

    def wants_full(self, policy: WritePolicy) -> bool:
        """Whether the next checkpoint rewrites sessions.json rather than logging changes."""
        age = time.monotonic() - self.saved_at
        logged = 0 if self.log is None else self.log.size
        if self.dirty or self.saved_id is None:
            return True
        # The changed entries' share of sessions.json, as a guess at what logging them costs.
        coming = self.saved_size * len(self.changed_keys) // max(1, len(self.sessions))
        return policy.full(self.saved_size, logged + coming, age, coming)

    def write(self, w: RegistryWrite) -> None:
        """Carry out a checkpoint's write (worker thread). Raises OSError; after a failure the
        next checkpoint rewrites sessions.json (the caller marks the registry `changed`)."""
        if w.full is not None:
            self.save(serialize(w.entries()))
            return
        if self.saved_id is None:
            raise FileNotFoundError(2, "no sessions.json to log changes on top of")
        if self.log is None:
            self.log = ChangeLog(self.folder / SESSIONS_JSON)
        self.log.append(self.saved_id, w.changes)

    def stage(self, w: RegistryWrite) -> Staged:
        """`write` in two halves (store.checkpoint_sync): a rewrite's bytes go into the
        temporary file now, and `finish` syncs it (unless the checkpoint's syncfs covered it)
        and renames it over sessions.json; logged changes are appended and synced at `finish`,
        as `write` does. Raises OSError (worker thread)."""
        if w.full is None:
            return Staged(lambda _covered: self.write(w))
        data = serialize(w.entries())
        staged = stage_atomic(self.folder / SESSIONS_JSON, data, step="registry")

        def finish(covered: Collection[int]) -> None:
            staged.finish(covered)
            self._saved(data)

        return Staged(finish, staged.discard)

    def save_if_changed(self) -> None:
        """Write sessions.json now if it changed (worker thread). Raises OSError."""
        if self.pending:
            self.save(self.serialize())
            self.dirty = False
            self.changed_keys.clear()

    def save(self, data: bytes) -> None:
        """Atomically replace sessions.json (mode 0600); its change log then begins again.
        Raises OSError on failure."""
        atomic_write(self.folder / SESSIONS_JSON, data, step="registry")
        self._saved(data)

    def _saved(self, data: bytes) -> None:
        """sessions.json now holds `data`."""
        self.saved_id = identity(data)
        self.saved_size = len(data)
        self.saved_at = time.monotonic()
        if self.log is not None:
            self.log.rebase()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def plan_writes(
    agents: Iterable[AgentRegistry],
    created: list[SessionState],
    closed: list[SessionState],
    policy: WritePolicy,
    *,
    final: bool = False,
) -> list[tuple[AgentRegistry, RegistryWrite]]:
    """What each changed registry writes at a checkpoint (event loop), and which keys stay
    changed for the next one. A sessions.json behind its change log is rewritten when the
    policy says so even if nothing changed since (a daemon at rest catches up), and always at
    the `final` checkpoint (a stopped daemon leaves every sessions.json whole).

    `created` and `closed` are the sessions that batches prepared but not yet written have
    registered and unregistered: what is written now must show neither, or a crash before
    those batches are durable would leave sessions.json naming a session without a transcript,
    or dropping one whose closing entry never made it (orphaned). Their keys stay changed, to
    be written again once the batches are durable. Costs what changed (and the unwritten
    batches), except when sessions.json is rewritten whole.
    """
    new = frozenset(id(st) for st in created)
    was: dict[tuple[str, str], SessionState] = {}
    for st in closed:
        was.setdefault((st.agent_id, st.session_key), st)
    unsettled: dict[str, set[str]] = {}
    for st in [*created, *closed]:
        unsettled.setdefault(st.agent_id, set()).add(st.session_key)
    out = []
    for reg in agents:
        behind = reg.log is not None and reg.log.size > 0
        if (final and (behind or reg.pending)) or (behind and reg.wants_full(policy)):
            reg.dirty = True
        if not reg.pending:
            continue

        def shown(key: str, reg: AgentRegistry = reg) -> SessionState | None:
            st = reg.sessions.get(key)
            if st is not None and id(st) not in new:
                return st
            return was.get((reg.agent_id, key))

        ahead = {k for k in unsettled.get(reg.agent_id, ()) if shown(k) is not reg.sessions.get(k)}
        if reg.wants_full(policy):
            before = {k: b for k in ahead if (b := shown(k)) is not None}
            w = RegistryWrite(full=list(reg.sessions.items()), leave_out=new, shown=before)
        else:
            changes: list[tuple[str, dict[str, Any] | None]] = []
            for k in reg.changed_keys:
                now = shown(k)
                changes.append((k, None if now is None else now.entry.document()))
            w = RegistryWrite(changes=changes)
        out.append((reg, w))
        reg.dirty = False
        reg.changed_keys = ahead
    return out


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
    """sessions.json parsed, with its change log applied (store/registry_log.py), or None and
    what is wrong with it ("is missing", ...)."""
    doc, problem, _data, _changes = read_registry_and_log(path)
    return doc, problem


def read_registry_and_log(
    path: Path,
) -> tuple[dict[str, Any] | None, str | None, bytes, int]:
    """`read_registry`, the file's bytes, and how many logged changes were applied on top."""
    try:
        data = path.read_bytes()
        doc = orjson.loads(data)
    except FileNotFoundError:
        return None, "is missing", b"", 0
    except (OSError, orjson.JSONDecodeError) as e:
        return None, f"is unreadable ({e})", b"", 0
    if not isinstance(doc, dict):
        return None, "is not a JSON object", b"", 0
    changes = read_changes(path, data)
    apply_changes(doc, changes)
    return doc, None, data, len(changes)


def fill_registry(reg: AgentRegistry, doc: dict[str, Any]) -> None:
    """Registry entries from a parsed sessions.json (entries without a session id are skipped)."""
    for key, entry in doc.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sessionId"), str):
            continue
        sid = entry["sessionId"]
        name = session_file_name(entry, sid)
        rel = f"agents/{reg.agent_id}/sessions/{name}"
        reg.sessions[key] = SessionState(reg.agent_id, key, sid, rel, reg.entry(dict(entry), key))


def load_agent(state_dir: Path, agent_id: str, folder: Path) -> tuple[AgentRegistry, str | None]:
    """Load one agent's registry; rebuild it from transcript headers when it cannot be read.

    Returns the registry and, when it was rebuilt, the reason (for the log). An unreadable
    sessions.json is kept aside as `sessions.json.corrupt-<ms>`, never removed.
    """
    reg = AgentRegistry(agent_id, folder)
    path = folder / SESSIONS_JSON
    doc, problem, data, changes = read_registry_and_log(path)
    if doc is not None:
        fill_registry(reg, doc)
        # Logged changes are folded into sessions.json at start-up: the log begins again.
        reg.dirty = changes > 0
        reg.saved_size, reg.saved_id = len(data), identity(data)
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
        reg.sessions[key] = SessionState(reg.agent_id, key, sid, rel, reg.entry(entry_doc, key))
