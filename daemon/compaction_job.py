"""What a compaction or a memory flush does in a worker process (daemon/workers.py).

The daemon hands over a path, the offset to read up to and the settings; the worker reads the
transcript's tail (never more than `max_bytes` of it), plans the compaction, asks the summarizer
and hands back the summary, the flush's notes and the numbers the daemon needs to append the
entries. Nothing here writes a transcript: the daemon appends through its committer once the
answer is back, so a worker killed mid-job leaves nothing behind. The memory flushes of sessions a
reset closed (`flush_closed`) do write their notes here, grouped per memory file: one write and
one sync for a whole group of sessions.

How much is read: what a compaction summarises is everything since the previous compaction except
the kept tail. A session that was never compacted (imported, say) may be 1 GB long; only the newest
`read_budget` bytes are read then, which is more than a model's context window can hold, so nothing
a model could still have been sent is left out of the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.core import tokens
from daemon.errors import SummarizerFailed, os_reason
from daemon.store.context import (
    FLUSH_ENTRY,
    ContextView,
    detail_reply,
    find_transcript,
    read_context,
)
from daemon.store.memoryfile import write_memory_sections
from daemon.summarizers import (
    COMPACTION_PROMPT,
    DEFAULT_FLUSH_PROMPT,
    SummarizerSettings,
    SummaryRequest,
    check_notes,
    check_summary,
    summarize_here,
)

if TYPE_CHECKING:
    # Not at run time: this module is what compaction and flush workers import, and the
    # config's pydantic models were a third of their start (they are handed plain settings).
    from daemon.config import CompactionConfig

# Bytes of transcript per token of context window read at most: a line carries its JSON framing
# and metadata besides the text the tokens are counted from.
READ_BYTES_PER_TOKEN = 4 * tokens.CHARS_PER_TOKEN
MIN_READ_BYTES = 4 * 1024 * 1024


def read_budget(cc: CompactionConfig) -> int:
    """The most bytes of a transcript's tail a compaction or flush reads."""
    return max(MIN_READ_BYTES, cc.contextWindow * READ_BYTES_PER_TOKEN)


def kept_budget(th: tokens.Thresholds) -> int:
    """Tokens of the kept tail: `keepRecentTokens`, but never more than a quarter of the
    compaction threshold, so that kept tail plus summary stay well below it (a hot session must
    not compact again right away)."""
    return min(th.keep_recent, max(1, th.compact_at // 4))


def after_limit(th: tokens.Thresholds) -> int:
    """The most tokens a compaction may leave (summary plus kept tail): half the threshold."""
    return max(1, th.compact_at // 2)


@dataclass(frozen=True, slots=True)
class Latest:
    """A session's latest compaction, for the /context reply."""

    entry_id: str | None
    summary: str
    first_kept: str | None
    tokens_before: int | None


@dataclass(frozen=True, slots=True)
class Job:
    """One turn of a session's compaction work, as the worker gets it."""

    path: str
    end: int  # read up to this offset (what the registry counted when the job started); -1: all
    max_bytes: int
    keep_recent: int
    max_after: int  # summary plus kept tail at most this (a longer summary shortens the tail)
    compact: bool
    flush: bool  # the cycle's memory flush is to run first
    flush_alone: bool  # flush even when there turns out to be nothing to compact
    summarizer: SummarizerSettings
    flush_prompt: str | None
    instructions: str | None
    session_key: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The compaction the worker summarised."""

    summary: str
    previous_summary: bool
    first_kept: str
    kept_tokens: int
    kept_entries: int
    summarized: int
    complete: bool  # False: the session's start was beyond the read budget


@dataclass(frozen=True, slots=True)
class Done:
    """The worker's answer. A summarizer failure is reported, not raised, so that a flush
    that succeeded is recorded even when the compaction after it failed."""

    kind: str
    flush_entries: int = 0  # messages the flush covered (0: no flush ran)
    notes: str | None = None  # None: NO_REPLY (or no flush)
    last_entry_id: str | None = None  # the newest entry the flush covered
    flush_error: str | None = None
    plan: Plan | None = None
    nothing_to_compact: bool = False
    compact_error: str | None = None


def run(job: Job) -> Done:
    """In a worker: read, plan, flush, summarise. Raises OSError (the transcript unreadable)."""
    # A session not touched since start-up has no known size yet (-1): up to its end.
    end = job.end if job.end >= 0 else None
    view = read_context(Path(job.path), end=end, max_bytes=job.max_bytes)
    msgs = view.messages()
    cut = 0
    sizes = [tokens.entry_tokens(m) for m in msgs]
    if job.compact:
        cut = _cut(msgs, sizes, job.keep_recent)
    kind: str = job.summarizer.kind
    done = Done(kind, nothing_to_compact=job.compact and cut == 0)
    if job.flush and (cut > 0 or job.flush_alone):
        entries = tuple(e for e in view.after if tokens.is_message(e))
        if entries:
            req = SummaryRequest(
                "memoryFlush",
                job.flush_prompt or DEFAULT_FLUSH_PROMPT,
                entries,
                session_key=job.session_key,
                agent_id=job.agent_id,
            )
            try:
                kind, text = summarize_here(job.summarizer, req)
                notes = check_notes(text)
            except SummarizerFailed as e:
                # Nothing is written: no compaction either (the flush must come first).
                return Done(kind, flush_error=str(e) or "the summarizer failed")
            done = Done(kind, len(entries), notes, view.last_entry_id)
    if cut == 0:
        return _with(done, nothing_to_compact=job.compact)
    try:
        kind, summary = _summary(job, msgs, cut, view.summary)
        room = job.max_after - tokens.estimate(len(summary))
        if sum(sizes[cut:]) > room:
            # A long summary: the tail kept beside it shrinks so that the two together stay
            # within `max_after`, and the summary is written again over what no longer fits.
            longer = _cut(msgs, sizes, max(0, room))
            if longer > cut:
                cut = longer
                kind, summary = _summary(job, msgs, cut, view.summary)
    except SummarizerFailed as e:
        return _with(done, compact_error=str(e) or "the summarizer failed")
    kept = msgs[cut:]
    plan = Plan(
        summary,
        view.summary is not None,
        str(msgs[cut].get("id")),
        sum(tokens.entry_tokens(m) for m in kept),
        len(kept),
        cut,
        view.complete,
    )
    return _with(done, kind=kind, plan=plan)


def _cut(msgs: list[dict[str, Any]], sizes: list[int], keep: int) -> int:
    """Index of the first kept message (0: nothing to summarise)."""
    cut = tokens.split_kept(sizes, [tokens.role_of(m) for m in msgs], keep)
    return cut if cut < len(msgs) and isinstance(msgs[cut].get("id"), str) else 0


def _summary(
    job: Job, msgs: list[dict[str, Any]], cut: int, previous: str | None
) -> tuple[str, str]:
    req = SummaryRequest(
        "compaction",
        COMPACTION_PROMPT,
        tuple(msgs[:cut]),
        previous,
        job.instructions,
        job.session_key,
        job.agent_id,
    )
    kind, text = summarize_here(job.summarizer, req)
    return kind, check_summary(text)


def _with(done: Done, **changes: Any) -> Done:
    return replace(done, **changes)


# ---------------------------------------------------------------------------------------------
# Reads for /context and sessions.context


def context(path: str, max_bytes: int) -> ContextView:
    """In a worker: the session's context, from at most `max_bytes` of its tail."""
    return read_context(Path(path), max_bytes=max_bytes)


def latest(path: str, max_bytes: int) -> Latest | None:
    """In a worker: the latest compaction's summary (None: none in the tail read)."""
    return latest_of(read_context(Path(path), max_bytes=max_bytes))


def latest_of(view: ContextView) -> Latest | None:
    """The latest compaction of a context, as /context shows it (None: there is none)."""
    c = view.compaction
    if c is None or view.summary is None:
        return None
    before = c.get("tokensBefore")
    fk = c.get("firstKeptEntryId")
    eid = c.get("id")
    return Latest(
        eid if isinstance(eid, str) else None,
        view.summary,
        fk if isinstance(fk, str) else None,
        before if isinstance(before, int) else None,
    )


def detail(path: str, session_key: str, session_id: str, max_bytes: int) -> str:
    """In a worker: the /context detail reply."""
    return detail_reply(session_key, session_id, read_context(Path(path), max_bytes=max_bytes))


# ---------------------------------------------------------------------------------------------
# The memory flushes of sessions a reset closed, in groups


@dataclass(frozen=True, slots=True)
class Closed:
    """A closed session to flush: where its transcript was, and what a flush already covered."""

    session_id: str
    session_key: str
    agent_id: str
    path: str
    memory_folder: str
    covered: str | None  # the last entry a flush of this process covered
    max_bytes: int
    summarizer: SummarizerSettings
    flush_prompt: str | None


@dataclass(frozen=True, slots=True)
class ClosedDone:
    session_id: str
    entries: int = 0  # 0: nothing new to flush
    file: str | None = None
    bytes: int = 0
    no_reply: bool = False
    error: str | None = None  # the flush failed (nothing written for it); retried


def flush_closed(items: list[Closed], local: datetime) -> list[ClosedDone]:
    """In a worker: the notes of each closed session (only what no flush covered yet), written
    to the memory files in one append per file. A failure is reported per session."""
    out: dict[str, ClosedDone] = {}
    files: dict[str, list[tuple[Closed, int, str]]] = {}
    for item in items:
        try:
            entries = _closed_entries(item)
            if not entries:
                out[item.session_id] = ClosedDone(item.session_id)
                continue
            req = SummaryRequest(
                "memoryFlush",
                item.flush_prompt or DEFAULT_FLUSH_PROMPT,
                entries,
                session_key=item.session_key,
                agent_id=item.agent_id,
            )
            notes = check_notes(summarize_here(item.summarizer, req)[1])
        except (SummarizerFailed, OSError) as e:
            out[item.session_id] = ClosedDone(item.session_id, error=_why(e))
            continue
        if notes is None:
            out[item.session_id] = ClosedDone(item.session_id, len(entries), no_reply=True)
            continue
        files.setdefault(item.memory_folder, []).append((item, len(entries), notes))
    for folder, group in files.items():
        try:
            path, sizes = write_memory_sections(
                Path(folder), local, [(it.session_key, notes) for it, _n, notes in group]
            )
        except OSError as e:
            for it, _n, _notes in group:
                out[it.session_id] = ClosedDone(it.session_id, error=_why(e))
            continue
        for (it, n, _notes), size in zip(group, sizes, strict=True):
            out[it.session_id] = ClosedDone(it.session_id, n, str(path), size)
    return [out[i.session_id] for i in items]


def _closed_entries(item: Closed) -> tuple[dict[str, object], ...]:
    view = read_context(find_transcript(Path(item.path)), max_bytes=item.max_bytes)
    after = view.after
    # Only what no flush has covered yet: after the cycle's marker, or after what a flush of
    # this process covered when its marker could not be appended any more.
    start = 0
    for i, e in enumerate(after):
        is_marker = e.get("type") == "custom" and e.get("customType") == FLUSH_ENTRY
        if is_marker or (item.covered is not None and e.get("id") == item.covered):
            start = i + 1
    return tuple(e for e in after[start:] if tokens.is_message(e))


def _why(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"{os_reason(e)} ({getattr(e, 'filename', None) or 'file'})"
    return str(e) or type(e).__name__
