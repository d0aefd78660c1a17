"""What the search index reads: which files, and which of their lines become entries.

Transcripts (active, archived, compressed, OpenClaw's `.jsonl.reset.*`) give their user and
assistant text blocks and compaction summaries; memory files (`<workspace>/memory/*.md`) give
one entry per line. Pure functions over bytes and folder listings: no SQLite here.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.keys import normalize_agent_id
from daemon.store.archive import ARCHIVE_DIR, INDEX, OPENCLAW_SUFFIX, read_index
from daemon.store.registry import SESSIONS_JSON, read_registry
from daemon.store.transcript import json_object, parse_iso_ms

MAX_TEXT_CHARS = 32_768  # of one entry; a pasted file should not dominate the index
SESSION_ROLES = ("user", "assistant")
# Agents whose memory is looked for even before they have a session: callers pass the config's
# agents, the default one first (its workspace is <stateDir>/workspace).
DEFAULT_AGENTS = ("main",)
_MEMORY_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True, slots=True)
class Source:
    """A file the index reads."""

    path: str  # a string: a pass looks at 100,000 of them, and a Path costs a parse each
    key: str  # files.path: relative to the state folder (absolute outside it)
    source: str  # "session" | "memory"
    agent_id: str
    archived: bool = False
    gz: bool = False
    ino: int = 0  # from the folder listing (no stat), for an active transcript; 0: not known


def is_archived_name(name: str) -> bool:
    """`<id>.jsonl`, `<id>.jsonl.gz`, `<id>.jsonl.<n>`, `<id>.jsonl.reset.<ts>` in archive/."""
    if name.startswith(".") or name == INDEX or ".jsonl" not in name:
        return False
    if ".torn-" in name or name.endswith((".tmp", ".part", ".partial")):
        return False
    return ".gz" not in name or name.endswith(".gz")


def scan_sources(
    state_dir: Path,
    workspace_of: Callable[[str], Path],
    agents: Iterable[str] = (),
    archive_cache: dict[str, tuple[int, list[Source]]] | None = None,
    active: bool = True,
) -> Iterator[Source]:
    """Every file to index.

    `archive_cache` (folder -> (mtime, sources)) spares listing archive folders that have not
    changed: archives are written once and only ever moved in. `active=False` leaves out the
    files in the sessions folders themselves (the caller knows which of them changed).
    """
    known_agents = {normalize_agent_id(a) for a in agents}
    agents_dir = state_dir / "agents"
    for entry in _scandir(agents_dir):
        if not entry.is_dir():
            continue
        agent = entry.name
        known_agents.add(agent)
        folder = Path(entry.path) / "sessions"
        # Keys built as strings: Path.relative_to for each of 100,000 files costs seconds.
        prefix = f"agents/{agent}/sessions/"
        for f in _scandir(folder) if active else ():
            name = f.name
            if name.startswith(".") or not f.is_file():
                continue
            if name.endswith(".jsonl"):
                yield Source(f.path, prefix + name, "session", agent, ino=f.inode())
            elif OPENCLAW_SUFFIX.match(name):
                yield _session_source(state_dir, Path(f.path), agent, archived=True)
        archive = folder / ARCHIVE_DIR
        yield from _archive_sources(archive, f"{prefix}{ARCHIVE_DIR}/", agent, archive_cache)
    seen: set[Path] = set()
    for entry in _scandir(state_dir):
        if entry.name.startswith("workspace-") and entry.is_dir():
            known_agents.add(normalize_agent_id(entry.name[len("workspace-") :]))
    for agent in sorted(known_agents):
        memory = workspace_of(agent) / "memory"
        if memory in seen:
            continue
        seen.add(memory)
        for f in sorted(_scandir(memory), key=lambda e: e.name):
            if f.name.endswith(".md") and not f.name.startswith(".") and f.is_file():
                path = Path(f.path)
                yield Source(f.path, _key(state_dir, path), "memory", agent)


def _archive_sources(
    folder: Path,
    prefix: str,
    agent: str,
    cache: dict[str, tuple[int, list[Source]]] | None,
) -> Iterator[Source]:
    """The transcripts in an archive folder (keys: `prefix` + name). A reset job moves
    thousands of files in while passes run: the folder changes between every two passes, and
    each lists it again."""
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return
    ck = str(folder)
    # A listing is reused only when the folder has been still for a while: a change in the
    # same clock tick as the listing would otherwise go unseen.
    still = time.time_ns() - mtime > 2_000_000_000
    if cache is not None and still and ck in cache and cache[ck][0] == mtime:
        yield from cache[ck][1]
        return
    names = {e.name: e for e in _scandir(folder) if e.is_file()}
    out = []
    for name, e in sorted(names.items()):
        if not is_archived_name(name):
            continue
        if name.endswith(".gz") and name[:-3] in names:
            continue  # being compressed: the plain file is still the one to read
        # Keys built as strings, as for the sessions folders (Path.relative_to for each of
        # ten thousand archives, in every pass of a reset job, is what they avoid).
        out.append(Source(e.path, prefix + name, "session", agent, True, name.endswith(".gz")))
    if cache is not None:
        cache[ck] = (mtime, out)
    yield from out


def active_sources(state_dir: Path, keys: Iterable[str]) -> Iterator[Source]:
    """The active transcripts named by these keys (`agents/<agent>/sessions/<name>.jsonl`);
    other keys are skipped."""
    root = str(state_dir)
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "agents" and parts[2] == "sessions":
            name = parts[3]
            if name.endswith(".jsonl") and not name.startswith(".") and ".." not in parts:
                yield Source(f"{root}/{key}", key, "session", parts[1])


def _session_source(state_dir: Path, path: Path, agent: str, *, archived: bool) -> Source:
    gz = path.name.endswith(".gz")
    return Source(str(path), _key(state_dir, path), "session", agent, archived, gz)


def _key(state_dir: Path, path: Path) -> str:
    try:
        return str(path.relative_to(state_dir))
    except ValueError:
        return str(path)


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def message_text(content: Any) -> str:
    """The searchable text of a message: its text blocks (tool calls, images and thinking are
    left out: they are noise to someone looking for what was said)."""
    if isinstance(content, str):
        return content[:MAX_TEXT_CHARS]
    if not isinstance(content, list):
        return ""
    if len(content) == 1:  # the common case: one text block
        block = content[0]
        if type(block) is dict and block.get("type") == "text" and type(block.get("text")) is str:
            return str(block["text"])[:MAX_TEXT_CHARS]
    parts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "\n".join(parts)[:MAX_TEXT_CHARS]


class Timestamps:
    """ISO timestamps as epoch ms. The store's own form (2026-11-22T09:15:00.123Z) is read by
    slicing, with the day looked up once; anything else goes through `parse_iso_ms`."""

    __slots__ = ("days",)

    def __init__(self) -> None:
        self.days: dict[str, int] = {}

    def __call__(self, v: Any) -> int:
        if type(v) is str and len(v) == 24 and v[23] == "Z" and v[10] == "T" and v[19] == ".":
            day = self.days.get(v[:10])
            if day is None:
                day = self.days[v[:10]] = parse_iso_ms(v[:10] + "T00:00:00Z")
            try:
                return day + (
                    int(v[11:13]) * 3_600_000
                    + int(v[14:16]) * 60_000
                    + int(v[17:19]) * 1000
                    + int(v[20:23])
                )
            except ValueError:
                pass
        return parse_iso_ms(v)


Doc = tuple[int, int, str, str | None, int, str]  # file_id, off, entry_id, role, ts, text


def transcript_docs(
    file_id: int, lines: list[tuple[int, bytes]], ts_of: Callable[[Any], int]
) -> tuple[list[Doc], dict[str, Any] | None]:
    """Docs for the message entries among `lines` (offset, bytes), and a session header if
    one is among them."""
    docs: list[Doc] = []
    header = None
    for off, line in lines:
        if b'"message"' not in line and b'"compaction"' not in line and b'"session"' not in line:
            continue
        obj = json_object(line)
        if obj is None:
            continue
        kind = obj.get("type")
        if kind == "message":
            msg = obj.get("message")
            if not isinstance(msg, dict) or msg.get("role") not in SESSION_ROLES:
                continue
            role = msg["role"]
            text = message_text(msg.get("content"))
        elif kind == "compaction":
            summary = obj.get("summary")
            role, text = "compaction", summary[:MAX_TEXT_CHARS] if isinstance(summary, str) else ""
        else:
            if kind == "session" and header is None:
                header = obj
            continue
        if not text.strip():
            continue
        eid = obj.get("id")
        docs.append((file_id, off, eid if isinstance(eid, str) else str(off), role,
                     ts_of(obj.get("timestamp")), text))  # fmt: skip
    return docs, header


def memory_ts(path: str, mtime_ns: int) -> int:
    """A memory file's time: the day its name says (YYYY-MM-DD.md, 00:00 UTC), else its mtime."""
    m = _MEMORY_DATE.match(os.path.basename(path))
    if m is not None:
        ms = parse_iso_ms(m.group(1) + "T00:00:00Z")
        if ms:
            return ms
    return mtime_ns // 1_000_000


def split_lines(data: bytes, start: int) -> list[tuple[int, bytes]]:
    """Complete lines of `data` (which ends with a newline or is empty) with their offsets."""
    out = []
    pos = start
    for line in data.split(b"\n")[:-1]:
        out.append((pos, line))
        pos += len(line) + 1
    return out


def session_keys(sessions_folder: Path) -> dict[str, str]:
    """sessionId -> sessionKey from the registry and the archive index (for transcripts whose
    header does not say: OpenClaw writes no sessionKey there)."""
    out: dict[str, str] = {}
    doc = read_registry(sessions_folder / SESSIONS_JSON)[0]  # with its change log applied
    if doc is not None:
        for key, entry in doc.items():
            if isinstance(entry, dict) and isinstance(entry.get("sessionId"), str):
                out.setdefault(entry["sessionId"], key)
    for rec in read_index(sessions_folder):
        if rec.sessionKey:
            out.setdefault(rec.sessionId, rec.sessionKey)
    return out
