"""Memory flushes and compactions, in the background (SPEC 4.6 and 4.7).

Where compaction used to lose history, it only appends here:

- The committer counts tokens as it appends (daemon/core/tokens.py). Once a batch is durable it
  calls `after_commit`, which checks the thresholds of the sessions the batch touched and marks
  those that crossed one; nothing else happens on the ingest path.
- A worker task (in the daemon's task group) runs the marked sessions' jobs, at most
  `daemon.compactionWorkers` at once and one at a time per session. A job is: the memory flush of
  the cycle if it has not run yet, then the compaction if one is due or was asked for. The flush
  therefore always comes first, once per cycle (`memoryFlushCompactionCount`).
- A flush (daemon/memoryflush.py) gives the summarizer the flush prompt and the entries since
  the last compaction; its notes are appended to `<workspace>/memory/YYYY-MM-DD.md` (one write +
  fsync, mode 0600) unless it answers NO_REPLY. A `sessiond.memoryFlush` custom entry then
  records the cycle in the transcript, through the committer, so the fact survives a crash.
- A compaction summarises everything before the kept tail (`keepRecentTokens`) plus the previous
  summary, and appends a `compaction` entry through the committer. The transcript before it is
  never rewritten: a model's context is the latest summary plus the entries from its
  `firstKeptEntryId` on (`sessions.context`).
- A reset (when `memoryFlush.onReset`) queues a flush of the closed session: it reads the
  archived transcript after the reset is durable, so it can never delay the reset or the message
  that caused it.
- A summarizer failure (timeout, exit code, HTTP error, empty or template-only answer) writes
  nothing: the job is logged with the reason and retried with exponential backoff
  (`retryBaseSeconds`, doubling, at most an hour) while the session keeps taking messages.

Pending work is held in memory: after a restart a session over the threshold is picked up again
by its next message.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon.config import CompactionConfig
from daemon.core import tokens
from daemon.core.commands import Command
from daemon.core.ids import next_entry_id
from daemon.core.protocol import CompactParams, SessionRef
from daemon.errors import NotFound, RequestError, StorageUnavailable, SummarizerFailed, os_reason
from daemon.memoryflush import MemoryFlusher
from daemon.store.context import ContextView, detail_reply, read_context
from daemon.store.registry import SessionState
from daemon.store.store import Batch
from daemon.summarizers import (
    COMPACTION_PROMPT,
    SummaryRequest,
    check_summary,
    make_summarizer,
)
from daemon.work import Commit, Entrance

log = structlog.get_logger("daemon.compaction")

MAX_BACKOFF_SECONDS = 3600.0
RESET_FLUSH_ATTEMPTS = 6
LATEST_CACHE = 4096  # sessions whose latest summary is kept in memory for /context
REPLY_SUMMARY_CHARS = 1500
SETTLE_SECONDS = 2.0

Outcome = dict[str, Any]
Waiter = Callable[[Outcome], None]


@dataclass(slots=True)
class Request:
    """A compaction asked for by /compact or sessions.compact."""

    instructions: str | None
    reason: str  # "command" | "api"
    waiters: list[Waiter] = field(default_factory=list)


@dataclass(slots=True)
class Pending:
    """A session's outstanding work; its jobs run one at a time."""

    agent_id: str
    session_key: str
    session_id: str
    flush: bool = False  # the flush threshold was crossed
    compact: bool = False  # the compaction threshold was crossed
    requested: Request | None = None
    running: bool = False
    compacting: bool = False  # the running job includes a compaction
    taken: Request | None = None  # the request the running job took on
    failures: int = 0
    retry_at: float = 0.0  # anyio.current_time() before which no retry starts
    last_error: str | None = None

    @property
    def has_work(self) -> bool:
        return self.flush or self.compact or self.requested is not None


@dataclass(slots=True)
class ResetFlush:
    """The memory flush of a session closed by a reset; reads its archived transcript."""

    agent_id: str
    session_key: str
    session_id: str
    rel_path: str
    settings: CompactionConfig
    attempts: int = 0
    retry_at: float = 0.0
    running: bool = False


@dataclass(frozen=True, slots=True)
class Latest:
    """A session's latest compaction, for the /context reply."""

    entry_id: str | None
    summary: str
    first_kept: str | None
    tokens_before: int | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one compaction will summarise, decided before the cycle's flush runs (a flush only
    appends a marker, so the plan stays right)."""

    previous_summary: str | None
    summarized: tuple[dict[str, Any], ...]
    first_kept: str
    kept_tokens: int
    kept_entries: int
    tokens_at_plan: int  # the registry's count when planned: later messages stay counted


class Compactor:
    """Owns the background worker; the pipeline calls its hooks, the server its two methods."""

    def __init__(self, entrance: Entrance, workspace_of: Callable[[str], str]) -> None:
        self.entrance = entrance
        self.store = entrance.store
        self.workspace_of = workspace_of
        self.pending: dict[str, Pending] = {}  # by session id
        self.reset_flushes: list[ResetFlush] = []
        self.latest: OrderedDict[str, Latest | None] = OrderedDict()
        # Transcript size right after our latest compaction of a session: the growth guard.
        self.marks: dict[str, int] = {}
        self.flusher = MemoryFlusher(entrance, workspace_of)
        self._to_load: set[str] = set()
        self._loading: set[str] = set()
        self._wake = anyio.Event()
        self._scope = anyio.CancelScope()
        self._stopping = False
        self._limiter = anyio.CapacityLimiter(entrance.config.daemon.compactionWorkers)
        self._config: object = None
        self._settings: dict[str, tuple[CompactionConfig, tokens.Thresholds]] = {}

    # ------------------------------------------------------------------------------------------
    # Settings

    def _follow_config(self) -> None:
        """Pick up a reloaded config (the pipeline holds the current one)."""
        cfg = self.entrance.config
        if cfg is not self._config:
            self._config = cfg
            self._settings.clear()
            self._limiter.total_tokens = cfg.daemon.compactionWorkers

    def settings(self, agent_id: str) -> tuple[CompactionConfig, tokens.Thresholds]:
        """The agent's effective compaction config and thresholds (memoised per config)."""
        self._follow_config()
        hit = self._settings.get(agent_id)
        if hit is None:
            cc = self.entrance.config.compaction_for(agent_id)
            hit = self._settings[agent_id] = (cc, cc.thresholds())
        return hit

    # ------------------------------------------------------------------------------------------
    # Hooks (event loop, called by the committer; never block)

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None:
        """Stage 6 (which schedules stage 7): a batch is durable; note resets, check the
        thresholds of the sessions that received a message, and say in `commit.compaction`
        which ones it newly scheduled (their ingest answers report it). Never raises: it runs
        inside the committer, which must go on acknowledging messages whatever happens here."""
        try:
            self._after_commit(commit)
        except Exception as e:
            log.exception("compaction.hook_failed", error=repr(e))

    def _after_commit(self, commit: Commit) -> None:
        for old, _new, _reason in commit.resets:
            self._session_ended(old)
        # Runs for every batch: settings looked up once per agent.
        by_id = self.store.by_id
        windows: dict[str, int] = {}
        for sid in commit.messaged:
            st = by_id.get(sid)
            if st is None:  # closed later in the same batch
                continue
            window = windows.get(st.agent_id)
            if window is None:
                window = windows[st.agent_id] = self.settings(st.agent_id)[1].context_window
            if st.entry.get("contextTokens") != window:
                # As OpenClaw writes it: the window `totalTokens` is measured against.
                st.entry.context_tokens = window
            if self._check(st):
                commit.compaction[sid] = {"scheduled": True, "reason": "threshold"}
            if sid not in self.latest and int(st.entry.get("compactionCount") or 0) > 0:
                self._to_load.add(sid)
        if self.pending or self.reset_flushes or self._to_load:
            self._wake.set()

    def _check(self, st: SessionState) -> bool:
        """Mark a session whose count crossed a threshold; True when this newly schedules a
        compaction (what the ingest answer reports)."""
        _cc, th = self.settings(st.agent_id)
        entry = st.entry
        count = _int(entry.get("totalTokens"))
        if count < th.flush_at:
            return False
        d = self._due(st, th)
        if not (d.flush or d.compact):
            return False
        p = self._pending(st)
        newly = d.compact and not p.compact and not p.compacting
        p.flush = p.flush or d.flush
        p.compact = p.compact or d.compact
        return newly

    def _due(self, st: SessionState, th: tokens.Thresholds) -> tokens.Due:
        entry = st.entry
        mark = self.marks.get(st.session_id)
        grown = None if mark is None else tokens.estimate(max(0, st.size - mark))
        fc = entry.get("memoryFlushCompactionCount")
        return tokens.due(
            _int(entry.get("totalTokens")),
            th,
            _int(entry.get("compactionCount")),
            fc if isinstance(fc, int) else None,
            grown,
        )

    def command_reply(self, cmd: Command, st: SessionState) -> str:
        """The reply to /compact [instructions] (which schedules a compaction) or /context.
        Never raises (it runs inside the committer)."""
        try:
            return self._command_reply(cmd, st)
        except Exception as e:
            log.exception("compaction.hook_failed", error=repr(e))
            return f"/{cmd.name} failed; the daemon logged why. Your message was stored."

    def _command_reply(self, cmd: Command, st: SessionState) -> str:
        cc, th = self.settings(st.agent_id)
        count = _int(st.entry.get("totalTokens"))
        if cmd.name != "compact":
            return self._context_reply(st, cc, th)
        self._request(st, cmd.arg or None, "command", None)
        lines = [
            f"Compacting {st.session_key} in the background: about {count} tokens now "
            f"(automatic compaction at {th.compact_at} of a {th.context_window}-token window).",
        ]
        if cmd.arg:
            lines.append(f"Instructions: {cmd.arg}")
        if th.flush_enabled and not _flushed(st):
            lines.append("Lasting notes are saved to the memory file first.")
        lines.append(
            "Older messages are summarised; the transcript keeps every message. "
            "Send /context to see the summary."
        )
        return "\n".join(lines)

    def _context_reply(self, st: SessionState, cc: CompactionConfig, th: tokens.Thresholds) -> str:
        e = st.entry
        lines = [
            f"Context of {st.session_key} (session {st.session_id[:8]})",
            f"tokens: about {_int(e.get('totalTokens'))} of {th.context_window} "
            f"(memory flush at {th.flush_at if th.flush_enabled else 'off'}, "
            f"compaction at {th.compact_at})",
        ]
        count = _int(e.get("compactionCount"))
        flushed = "yes" if _flushed(st) else "no"
        lines.append(f"compactions: {count}; memory flushed this cycle: {flushed}")
        p = self.pending.get(st.session_id)
        if p is not None and (p.running or p.has_work):
            state = "running" if p.running else "pending"
            if p.last_error and not p.running:
                wait = max(0, round(p.retry_at - anyio.current_time()))
                state += f", retry in {wait}s after: {p.last_error}"
            lines.append(f"compaction: {state}")
        latest = self.latest.get(st.session_id)
        known = st.session_id in self.latest
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
            self._to_load.add(st.session_id)
            lines.append("latest summary: being loaded; sessions.context returns it.")
        lines.append("Send /context detail for each entry's share of the tokens.")
        return "\n".join(lines)

    async def context_detail(self, st: SessionState) -> str:
        """The reply to /context detail: each entry of the context with its share of the tokens.
        Never raises (the message is already stored; the answer waits for this)."""
        try:
            await self._settled(st)
            view = await self._read(st)
        except Exception as e:
            log.exception("compaction.hook_failed", error=repr(e))
            return "/context detail failed; the daemon logged why. Your message was stored."
        return detail_reply(st.session_key, st.session_id, view)

    def _session_ended(self, old: SessionState) -> None:
        """A reset closed `old`: its pending work ends, and its memory flush is queued."""
        sid = old.session_id
        p = self.pending.get(sid)
        if p is not None and not p.running:
            del self.pending[sid]
        if p is not None and p.requested is not None:
            _answer(p.requested.waiters, _not_done(old, "the session was reset"))
            p.requested = None
        self.marks.pop(sid, None)
        self.latest.pop(sid, None)
        cc, th = self.settings(old.agent_id)
        if th.flush_on_reset:
            self.reset_flushes.append(
                ResetFlush(old.agent_id, old.session_key, sid, old.rel_path, cc)
            )

    # ------------------------------------------------------------------------------------------
    # Protocol methods

    async def rpc_compact(self, cp: CompactParams) -> Outcome:
        """sessions.compact {sessionKey, instructions?}: compact now and answer with the outcome
        (a failure answers {compacted: false, reason} and is retried in the background)."""
        st = self._find(cp.session_key)
        if self._stopping:
            raise StorageUnavailable("the daemon is shutting down; retry")
        done = anyio.Event()
        box: list[Outcome] = []

        def waiter(outcome: Outcome) -> None:
            box.append(outcome)
            done.set()

        self._request(st, cp.instructions, "api", waiter)
        self._wake.set()
        await done.wait()
        return box[0]

    async def rpc_context(self, ref: SessionRef) -> Outcome:
        """sessions.context {sessionKey}: the latest summary, the entries from its
        firstKeptEntryId on (messages only, oldest first) and the token estimate."""
        found = self.store.by_id.get(ref.session_id) if ref.session_id else None
        if ref.session_id is None:
            assert ref.session_key is not None
            found = self._find(ref.session_key)
        elif found is None or ref.session_key not in (None, found.session_key):
            raise NotFound(f"no active session with id {ref.session_id!r}")
        st = found
        await self._settled(st)
        view = await self._read(st)
        self._remember(st.session_id, view)
        _cc, th = self.settings(st.agent_id)
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
            "totalTokens": _int(st.entry.get("totalTokens")),
            "contextWindow": th.context_window,
            "compactionCount": _int(st.entry.get("compactionCount")),
        }

    def _find(self, key: str) -> SessionState:
        st = self.entrance.find_by_key(key)
        if st is None:
            raise NotFound(f"no session with key {key!r}")
        return st

    def _pending(self, st: SessionState) -> Pending:
        p = self.pending.get(st.session_id)
        if p is None:
            p = self.pending[st.session_id] = Pending(st.agent_id, st.session_key, st.session_id)
        return p

    def _request(
        self, st: SessionState, instructions: str | None, reason: str, waiter: Waiter | None
    ) -> None:
        p = self._pending(st)
        if p.requested is None:
            p.requested = Request(instructions, reason)
        elif instructions:
            p.requested.instructions = instructions
        if waiter is not None:
            p.requested.waiters.append(waiter)
        # Asked for by a person: no waiting out an earlier failure's backoff.
        p.retry_at = 0.0

    # ------------------------------------------------------------------------------------------
    # The worker

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start due jobs until `stop`; each job runs in this task group under the limiter."""
        with self._scope:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    self._wake = anyio.Event()
                    wait = self._start_due(tg)
                    with anyio.move_on_after(wait):
                        await self._wake.wait()

    def stop(self) -> None:
        """Cancel the worker (jobs in a summarizer are abandoned and retried after a restart by
        the next message); waiting callers get an answer."""
        self._stopping = True
        for p in self.pending.values():
            if p.requested is not None:
                _answer(p.requested.waiters, {"compacted": False, "reason": "the daemon stopped"})
                p.requested.waiters.clear()
        self._scope.cancel()

    def _start_due(self, tg: TaskGroup) -> float | None:
        """Start every job whose time has come; return the seconds until the next retry."""
        self._follow_config()
        now = anyio.current_time()
        next_at = math.inf
        for sid, p in list(self.pending.items()):
            if p.running:
                continue
            if not p.has_work:
                del self.pending[sid]
                continue
            if p.retry_at > now:
                next_at = min(next_at, p.retry_at)
                continue
            p.running = True
            tg.start_soon(self._session_job, p)
        for rf in self.reset_flushes:
            if rf.running:
                continue
            busy = self.pending.get(rf.session_id)
            if busy is not None and busy.running:
                continue  # its threshold flush first; the job's end wakes us
            if rf.retry_at > now:
                next_at = min(next_at, rf.retry_at)
                continue
            rf.running = True
            tg.start_soon(self._reset_flush_job, rf)
        for sid in self._to_load - self._loading:
            self._loading.add(sid)
            tg.start_soon(self._load_latest, sid)
        self._to_load.clear()
        return None if next_at == math.inf else max(0.0, next_at - now)

    async def _session_job(self, p: Pending) -> None:
        try:
            async with self._limiter:
                await self._job(p)
        except anyio.get_cancelled_exc_class():
            # The daemon is stopping: whoever waits on this job gets an answer (the server
            # drains every request before it exits).
            if p.taken is not None:
                _answer(p.taken.waiters, {"compacted": False, "reason": "the daemon stopped"})
            raise
        except Exception as e:
            # A bug must neither kill the worker nor drop the session's work.
            log.exception("compaction.crashed", sessionId=p.session_id, error=repr(e))
            self._backoff(p, f"internal error: {type(e).__name__}")
            p.compact = True
        finally:
            p.running = p.compacting = False
            p.taken = None
            self._wake.set()

    async def _job(self, p: Pending) -> None:
        """One turn for a session: plan the compaction (when due or asked for), run the cycle's
        flush if it has not run yet, then compact. A failure leaves the work pending with a
        backoff; a reset in between ends it (the reset's own flush takes over)."""
        st = self.store.by_id.get(p.session_id)
        if st is None or st.session_key != p.session_key:
            self.pending.pop(p.session_id, None)
            if p.requested is not None:
                _answer(p.requested.waiters, {"compacted": False, "reason": "session ended"})
                p.requested = None
            return
        cc, th = self.settings(st.agent_id)
        req, p.requested = p.requested, None
        p.taken = req
        p.flush = p.compact = False
        d = self._due(st, th)
        compact = req is not None or d.compact
        flush = th.flush_enabled and not _flushed(st) and (d.flush or compact)
        if not (flush or compact):
            return  # the count fell back below the thresholds (a fresh usage report)
        p.compacting = compact
        stage = "compaction"
        outcome: Outcome | None = None
        try:
            plan = await self._plan(st, th) if compact else None
            if compact and plan is None:
                # Nothing to summarise: no compaction, and so no flush that it would need.
                outcome = _not_done(st, "nothing to compact: every entry is in the kept tail")
                flush = flush and d.flush
            stage = "memory flush"
            if flush:
                await self.flusher.flush_cycle(st, cc, "threshold" if d.flush else "compaction")
            stage = "compaction"
            if plan is not None:
                outcome = await self._compact(st, cc, plan, req)
        except NotFound:
            self.pending.pop(p.session_id, None)
            if req is not None:
                _answer(req.waiters, _not_done(st, "the session was reset"))
            return
        except (SummarizerFailed, OSError, StorageUnavailable) as e:
            reason = _why(e)
            delay = self._backoff(p, f"{stage}: {reason}")
            p.flush = p.flush or (flush and stage == "memory flush")
            p.compact = p.compact or compact
            if req is not None:
                if p.requested is None:
                    p.requested = Request(req.instructions, req.reason)
                _answer(
                    req.waiters,
                    {
                        **_not_done(st, f"{stage} failed: {reason}"),
                        "retryInSeconds": round(delay, 3),
                    },
                )
            event = "memory.flush_failed" if stage == "memory flush" else "compaction.failed"
            log.warning(
                event,
                agentId=st.agent_id,
                sessionKey=st.session_key,
                sessionId=st.session_id,
                reason=reason,
                attempt=p.failures,
                retryInSeconds=round(delay, 3),
            )
            return
        p.failures = 0
        p.retry_at = 0.0
        p.last_error = None
        if req is not None:
            _answer(req.waiters, outcome or _not_done(st, "nothing to compact"))

    def _backoff(self, p: Pending, reason: str) -> float:
        cc, _th = self.settings(p.agent_id)
        p.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, cc.retryBaseSeconds * 2.0 ** (p.failures - 1))
        p.retry_at = anyio.current_time() + delay
        p.last_error = reason
        return delay

    # --- the compaction --------------------------------------------------------------------------

    async def _plan(self, st: SessionState, th: tokens.Thresholds) -> Plan | None:
        """What a compaction would summarise now; None (logged) when every message is in the
        kept tail. Raises OSError."""
        view = await self._read(st)
        msgs = view.messages()
        sizes = [tokens.entry_tokens(m) for m in msgs]
        cut = tokens.split_kept(sizes, [tokens.role_of(m) for m in msgs], th.keep_recent)
        first_kept = msgs[cut].get("id") if msgs else None
        if cut == 0 or not isinstance(first_kept, str):
            # Nothing older than the kept tail: the threshold waits for new material.
            self.marks[st.session_id] = view.end
            log.info(
                "compaction.skipped",
                sessionKey=st.session_key,
                sessionId=st.session_id,
                reason="nothing to compact before the kept tail",
                entries=len(msgs),
            )
            return None
        return Plan(
            view.summary,
            tuple(msgs[:cut]),
            first_kept,
            sum(sizes[cut:]),
            len(msgs) - cut,
            _int(st.entry.get("totalTokens")),
        )

    async def _compact(
        self,
        st: SessionState,
        cc: CompactionConfig,
        plan: Plan,
        req: Request | None,
    ) -> Outcome:
        """Summarise what the plan says and append the compaction entry. Raises
        SummarizerFailed (nothing appended), NotFound (session reset), StorageUnavailable."""
        reason = req.reason if req is not None else "threshold"
        first_kept = plan.first_kept
        at_read = plan.tokens_at_plan
        cut = len(plan.summarized)
        summarizer = make_summarizer(cc.summarizer)
        instructions = req.instructions if req is not None else None
        request = SummaryRequest(
            "compaction",
            COMPACTION_PROMPT,
            plan.summarized,
            plan.previous_summary,
            instructions,
            st.session_key,
            st.agent_id,
        )
        summary = check_summary(await summarizer.summarize(request))
        after = tokens.estimate(len(summary)) + plan.kept_tokens
        details: dict[str, Any] = {
            "compactionCount": 0,
            "reason": reason,
            "summarizer": summarizer.kind,
            "summarizedEntries": cut,
        }
        if instructions:
            details["instructions"] = instructions

        def prepare(batch: Batch, s: SessionState, now: int, ts: str) -> dict[str, Any]:
            cycle = _int(s.entry.get("compactionCount")) + 1
            details["compactionCount"] = cycle
            flushed = s.entry.get("memoryFlushCompactionCount")
            if isinstance(flushed, int):
                # Carried so that a recount from the transcript alone finds it (store/context.py).
                details["memoryFlushCompactionCount"] = flushed
            eid = next_entry_id(s.last_entry_id)
            entry = {
                "type": "compaction",
                "id": eid,
                "parentId": s.last_entry_id,
                "timestamp": ts,
                "summary": summary,
                "firstKeptEntryId": first_kept,
                "tokensBefore": at_read,
                "details": details,
            }
            self.store.add_line(batch, s, orjson.dumps(entry), eid)
            # Messages that arrived while the summarizer worked stay counted on top.
            grown = max(0, _int(s.entry.get("totalTokens")) - at_read)
            s.entry.update({"totalTokens": after + grown, "compactionCount": cycle})
            return {"entryId": eid, "end": s.size, "tokensAfter": after + grown}

        with anyio.CancelScope(shield=True):
            done = await self.entrance.append_prepared(st.session_id, prepare)
        self.marks[st.session_id] = int(done["end"])
        self._cache(st.session_id, Latest(done["entryId"], summary, first_kept, at_read))
        info = {
            "agentId": st.agent_id,
            "sessionKey": st.session_key,
            "sessionId": st.session_id,
            "entryId": done["entryId"],
            "firstKeptEntryId": first_kept,
            "tokensBefore": at_read,
            "tokensAfter": done["tokensAfter"],
            "compactionCount": details["compactionCount"],
            "summarizedEntries": cut,
            "keptEntries": plan.kept_entries,
            "summarizer": summarizer.kind,
            "reason": reason,
        }
        log.info("compaction.done", **info)
        self.entrance.events.publish("compaction.done", info)
        return {"compacted": True, **info, "summary": summary}

    # --- the flush before a reset -----------------------------------------------------------

    async def _reset_flush_job(self, rf: ResetFlush) -> None:
        try:
            async with self._limiter:
                await self.flusher.flush_closed(
                    rf.agent_id, rf.session_key, rf.session_id, rf.rel_path, rf.settings
                )
            self.reset_flushes.remove(rf)
        except (SummarizerFailed, OSError) as e:
            rf.attempts += 1
            reason = _why(e)
            gave_up = rf.attempts >= RESET_FLUSH_ATTEMPTS
            delay = min(MAX_BACKOFF_SECONDS, rf.settings.retryBaseSeconds * 2.0**rf.attempts)
            log.warning(
                "memory.flush_failed",
                agentId=rf.agent_id,
                sessionKey=rf.session_key,
                sessionId=rf.session_id,
                reason=reason,
                trigger="reset",
                attempt=rf.attempts,
                gaveUp=gave_up,
                retryInSeconds=None if gave_up else delay,
            )
            if gave_up:
                self.reset_flushes.remove(rf)
            else:
                rf.retry_at = anyio.current_time() + delay
        finally:
            rf.running = False
            self._wake.set()

    # --- reading -------------------------------------------------------------------------------

    async def _settled(self, st: SessionState) -> None:
        """Wait (briefly) until what the committer prepared for `st` is in its file: the
        registry shows a batch's effects when it is prepared, the file once it is written,
        and a reader that has seen the one expects the other."""
        target = st.size
        path = self.store.state_dir / st.rel_path
        with anyio.move_on_after(SETTLE_SECONDS):
            while st.size >= target > 0 and self.store.broken is None:
                try:
                    if (await anyio.Path(path).stat()).st_size >= target:
                        return
                except OSError:
                    return
                await anyio.sleep(0.005)

    async def _read(self, st: SessionState) -> ContextView:
        return await anyio.to_thread.run_sync(read_context, self.store.state_dir / st.rel_path)

    async def _load_latest(self, sid: str) -> None:
        try:
            st = self.store.by_id.get(sid)
            if st is None:
                return
            async with self._limiter:
                view = await self._read(st)
            self._remember(sid, view)
        except OSError as e:
            log.debug("compaction.summary_unreadable", sessionId=sid, error=str(e))
            self._cache(sid, None)  # not tried again with every message
        finally:
            self._loading.discard(sid)

    def _remember(self, sid: str, view: ContextView) -> None:
        c = view.compaction
        if c is None or view.summary is None:
            self._cache(sid, None)  # known to have none: not read again for /context
            return
        before = c.get("tokensBefore")
        fk = c.get("firstKeptEntryId")
        eid = c.get("id")
        self._cache(
            sid,
            Latest(
                eid if isinstance(eid, str) else None,
                view.summary,
                fk if isinstance(fk, str) else None,
                before if isinstance(before, int) else None,
            ),
        )

    def _cache(self, sid: str, latest: Latest | None) -> None:
        self.latest[sid] = latest
        self.latest.move_to_end(sid)
        while len(self.latest) > LATEST_CACHE:
            self.latest.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _flushed(st: SessionState) -> bool:
    """Has the memory flush of the session's current cycle run?"""
    fc = st.entry.get("memoryFlushCompactionCount")
    return isinstance(fc, int) and fc == _int(st.entry.get("compactionCount"))


def _not_done(st: SessionState, reason: str) -> Outcome:
    return {
        "compacted": False,
        "sessionKey": st.session_key,
        "sessionId": st.session_id,
        "reason": reason,
    }


def _answer(waiters: list[Waiter], outcome: Outcome) -> None:
    for w in waiters:
        w(outcome)
    waiters.clear()


def _why(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"{os_reason(e)} ({getattr(e, 'filename', None) or 'file'})"
    if isinstance(e, RequestError):
        return e.message
    return str(e) or type(e).__name__
