"""A session's model context as its transcript holds it: the latest compaction, the entries it
kept, everything after it. Read from the end of the file, never more than that.

The transcript is the truth for the registry's token fields too: after a crash the registry may be
a checkpoint behind, so start-up recounts the sessions the journal replay touched (`recount`).
Recounting is idempotent, where adding replayed entries to a checkpointed count would not be
(the checkpoint may already hold some of them).

Worker threads only (file reads); nothing here changes a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.core import tokens
from daemon.store.transcript import iter_lines_backwards, json_object

if TYPE_CHECKING:
    from daemon.store.entry import SessionEntry

COMPACTION = "compaction"
FLUSH_ENTRY = "sessiond.memoryFlush"  # custom entry: the memory flush of a cycle ran
MAX_RECOUNT_BYTES = 64 * 1024 * 1024  # beyond this a recount keeps the registry's numbers


@dataclass(slots=True)
class ContextView:
    """What a model would be sent, as stored: `kept` are the entries from the latest compaction's
    `firstKeptEntryId` up to that compaction entry, `after` every entry after it (with no
    compaction: every entry). Both oldest first, every entry type (callers filter)."""

    compaction: dict[str, Any] | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    end: int = 0  # the file offset the view was read up to
    complete: bool = True  # False when the read stopped at `max_bytes`

    @property
    def summary(self) -> str | None:
        s = self.compaction.get("summary") if self.compaction else None
        return s if isinstance(s, str) else None

    @property
    def tokens(self) -> int:
        return tokens.context_tokens(self.summary, self.kept, self.after)

    @property
    def compaction_id(self) -> str | None:
        c = self.compaction.get("id") if self.compaction else None
        return c if isinstance(c, str) else None

    @property
    def flush(self) -> dict[str, Any] | None:
        """The latest memory-flush marker after the latest compaction."""
        for e in reversed(self.after):
            if e.get("type") == "custom" and e.get("customType") == FLUSH_ENTRY:
                found: dict[str, Any] = e
                return found
        return None

    @property
    def last_entry_id(self) -> str | None:
        for part in (self.after, self.kept):
            for e in reversed(part):
                if isinstance(e.get("id"), str):
                    return str(e["id"])
        return None

    def messages(self) -> list[dict[str, Any]]:
        """The message entries of the context (kept, then after), oldest first."""
        return [e for e in (*self.kept, *self.after) if tokens.is_message(e)]


def read_context(path: Path, end: int | None = None, max_bytes: int | None = None) -> ContextView:
    """The context of the transcript at `path` up to byte `end` (default: its current end).

    Raises OSError (FileNotFoundError when the file is gone). A torn or half-written last line is
    not part of the view. When `max_bytes` is given, reading stops after that many bytes from the
    end (`complete` is then False and `after` holds only what was read).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        stop = size if end is None else min(end, size)
        view = ContextView(end=stop)
        after_rev: list[dict[str, Any]] = []
        kept_rev: list[dict[str, Any]] = []
        first_kept: str | None = None
        for off, line in iter_lines_backwards(fd, stop):
            if max_bytes is not None and stop - off > max_bytes:
                view.complete = False
                break
            obj = json_object(line)
            if obj is None:
                continue
            if obj.get("type") == "session":
                if first_kept is not None:
                    kept_rev = []  # the kept entry is not in this file: keep nothing
                break
            if view.compaction is None:
                if obj.get("type") == COMPACTION:
                    view.compaction = obj
                    fk = obj.get("firstKeptEntryId")
                    if not isinstance(fk, str) or fk == obj.get("id"):
                        break
                    first_kept = fk
                    continue
                after_rev.append(obj)
                continue
            kept_rev.append(obj)
            if obj.get("id") == first_kept:
                first_kept = None
                break
        view.after = after_rev[::-1]
        view.kept = kept_rev[::-1]
        return view
    finally:
        os.close(fd)


DETAIL_LINES = 60  # /context detail lists at most this many entries, the newest ones


def detail_reply(session_key: str, session_id: str, view: ContextView) -> str:
    """/context detail: the summary and each message of the context with its estimated tokens
    (ceil(chars / 4)) and its share of their sum, oldest first; older entries beyond
    DETAIL_LINES are added up in one line."""
    rows: list[tuple[str, int]] = []
    if view.summary is not None:
        rows.append(
            (f"summary (compaction {view.compaction_id})", tokens.estimate(len(view.summary)))
        )
    for e in view.messages():
        text = _preview(e)
        rows.append((f"{e.get('id')} {tokens.role_of(e) or '?':10} {text}", tokens.entry_tokens(e)))
    total = sum(n for _, n in rows)
    lines = [
        f"Context of {session_key} (session {session_id[:8]}): about {total} tokens in "
        f"{len(rows)} entries (estimated as characters / 4)"
    ]
    shown = rows[-DETAIL_LINES:]
    if len(rows) > len(shown):
        older = sum(n for _, n in rows[: len(rows) - len(shown)])
        lines.append(_share(f"... {len(rows) - len(shown)} older entries", older, total))
    lines.extend(_share(label, n, total) for label, n in shown)
    if not rows:
        lines.append("(nothing yet)")
    return "\n".join(lines)


def _share(label: str, n: int, total: int) -> str:
    pct = 100.0 * n / total if total else 0.0
    return f"{n:>7} {pct:5.1f}%  {label}"


def _preview(entry: dict[str, Any]) -> str:
    msg = entry.get("message")
    content = msg.get("content") if isinstance(msg, dict) else None
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = [
            str(b.get("text")) if b.get("type") == "text" else f"[{b.get('type')}]"
            for b in content
            if isinstance(b, dict)
        ]
        text = " ".join(parts)
    else:
        text = ""
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:39] + "…"


@dataclass(frozen=True, slots=True)
class Recount:
    """Registry numbers as the transcript has them."""

    total_tokens: int
    compaction_count: int | None  # from our latest compaction entry (None: not ours / none)
    flush_count: int | None  # the cycle of the latest memory flush after it


def recount(path: Path) -> Recount | None:
    """Recount a session from its transcript; None when the file is missing or too long to
    recount from its tail (the registry's numbers then stay)."""
    try:
        view = read_context(path, max_bytes=MAX_RECOUNT_BYTES)
    except OSError:
        return None
    if not view.complete:
        return None
    cc: int | None = None
    fc: int | None = None
    if view.compaction is not None:
        details = view.compaction.get("details")
        if isinstance(details, dict):
            cc = _count(details.get("compactionCount"))
            fc = _count(details.get("memoryFlushCompactionCount"))
    marker = view.flush
    if marker is not None:
        data = marker.get("data")
        n = _count(data.get("compactionCount") if isinstance(data, dict) else None)
        fc = n if n is not None else fc
    return Recount(view.tokens, cc, fc)


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def apply_recount(entry: SessionEntry, r: Recount) -> None:
    """Put recounted numbers into a registry entry; counters only ever move forward."""
    entry.total_tokens = r.total_tokens
    if r.compaction_count is not None:
        entry.compaction_count = max(_int(entry.get("compactionCount")), r.compaction_count)
    if r.flush_count is not None:
        prior = entry.get("memoryFlushCompactionCount")
        entry.memory_flush_compaction_count = max(
            _int(prior) if prior is not None else -1, r.flush_count
        )


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def find_transcript(path: Path) -> Path:
    """`path`, or where archiving moved it (archive/<name>) when it is no longer in place."""
    if path.exists():
        return path
    moved = path.parent / "archive" / path.name
    return moved if moved.exists() else path
