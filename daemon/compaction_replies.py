"""What /compact, /context and `sessions.context` answer, and the latest summaries /context shows.

Pure text and JSON made from a session's registry entry, its pending compaction work and its
context as the transcript holds it (read in a worker: daemon/compaction_job.py). The compaction
worker (daemon/compaction.py) owns the state and calls these.
"""

from __future__ import annotations

from collections import OrderedDict

from daemon.compaction_job import Latest
from daemon.compaction_state import Outcome, Pending, flushed, int_of
from daemon.core import tokens
from daemon.store.context import ContextView
from daemon.store.registry import SessionState

LATEST_CACHE = 4096  # sessions whose latest summary is kept in memory for /context
REPLY_SUMMARY_CHARS = 1500


def compact_reply(st: SessionState, th: tokens.Thresholds, instructions: str | None) -> str:
    """/compact [instructions]: the compaction is scheduled; what will happen."""
    count = int_of(st.entry.get("totalTokens"))
    lines = [
        f"Compacting {st.session_key} in the background: about {count} tokens now "
        f"(automatic compaction at {th.compact_at} of a {th.context_window}-token window).",
    ]
    if instructions:
        lines.append(f"Instructions: {instructions}")
    if th.flush_enabled and not flushed(st):
        lines.append("Lasting notes are saved to the memory file first.")
    lines.append(
        "Older messages are summarised; the transcript keeps every message. "
        "Send /context to see the summary."
    )
    return "\n".join(lines)


def context_reply(
    st: SessionState,
    th: tokens.Thresholds,
    pending: Pending | None,
    now: float,
    latest: Latest | None,
    known: bool,
) -> tuple[str, bool]:
    """/context: counts, thresholds, the state of pending work and the latest summary. Returns
    the text and whether the latest summary is still to be loaded (`known` False and the
    session has compactions)."""
    e = st.entry
    lines = [
        f"Context of {st.session_key} (session {st.session_id[:8]})",
        f"tokens: about {int_of(e.get('totalTokens'))} of {th.context_window} "
        f"(memory flush at {th.flush_at if th.flush_enabled else 'off'}, "
        f"compaction at {th.compact_at})",
    ]
    count = int_of(e.get("compactionCount"))
    done = "yes" if flushed(st) else "no"
    lines.append(f"compactions: {count}; memory flushed this cycle: {done}")
    p = pending
    if p is not None and (p.running or p.has_work):
        state = "running" if p.running else "pending"
        if p.last_error and not p.running:
            wait = max(0, round(p.retry_at - now))
            state += f", retry in {wait}s after: {p.last_error}"
        lines.append(f"compaction: {state}")
    load = False
    if latest is not None:
        lines.append(
            f"latest summary (entry {latest.entry_id}, keeps entries from "
            f"{latest.first_kept} on; {latest.tokens_before} tokens before):"
        )
        text = latest.summary
        if len(text) > REPLY_SUMMARY_CHARS:
            text = text[:REPLY_SUMMARY_CHARS].rstrip() + "\n… (sessions.context has all of it)"
        lines.append(text)
    elif count == 0 or known:
        lines.append("no summary yet: the whole transcript is the context.")
    else:
        load = True
        lines.append("latest summary: being loaded; sessions.context returns it.")
    lines.append("Send /context detail for each entry's share of the tokens.")
    return "\n".join(lines), load


def context_answer(st: SessionState, th: tokens.Thresholds, view: ContextView) -> Outcome:
    """sessions.context: the latest summary, the entries from its firstKeptEntryId on
    (messages only, oldest first) and the token estimate."""
    c = view.compaction
    return {
        "sessionKey": st.session_key,
        "sessionId": st.session_id,
        "agentId": st.agent_id,
        "summary": view.summary,
        "compaction": None
        if c is None
        else {
            "entryId": c.get("id"),
            "timestamp": c.get("timestamp"),
            "firstKeptEntryId": c.get("firstKeptEntryId"),
            "tokensBefore": c.get("tokensBefore"),
        },
        "entries": view.messages(),
        "tokens": view.tokens,
        "totalTokens": int_of(st.entry.get("totalTokens")),
        "contextWindow": th.context_window,
        "compactionCount": int_of(st.entry.get("compactionCount")),
    }


class LatestCache:
    """The latest summary of recently seen sessions (None: known to have none), newest last."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, Latest | None] = OrderedDict()

    def __contains__(self, sid: str) -> bool:
        return sid in self.items

    def get(self, sid: str) -> Latest | None:
        return self.items.get(sid)

    def pop(self, sid: str) -> None:
        self.items.pop(sid, None)

    def put(self, sid: str, latest: Latest | None) -> None:
        self.items[sid] = latest
        self.items.move_to_end(sid)
        while len(self.items) > LATEST_CACHE:
            self.items.popitem(last=False)
