"""Memory flushes and compactions, in the background (SPEC 4.6 and 4.7).

Where compaction used to lose history, it only appends here:

- The committer counts tokens as it appends (daemon/core/tokens.py). Once a batch is durable it
  calls `after_commit`, which checks the thresholds of the sessions the batch touched and marks
  those that crossed one; nothing else happens on the ingest path.
- A worker task (in the daemon's task group) runs the marked sessions' jobs, at most
  `daemon.compactionWorkers` at once and one at a time per session. A job is: the memory flush of
  the cycle if it has not run yet, then the compaction if one is due or was asked for. The flush
  therefore always comes first, once per cycle (`memoryFlushCompactionCount`).
- The reading and the summarizing run in worker processes (daemon/workers.py running
  daemon/compaction_job.py): the daemon passes the transcript's path and the offset the registry
  counted up to, the worker reads the tail it needs (bounded, however long the session) and
  hands back the notes and the summary. A worker killed mid-job is a failed attempt: nothing
  written, retried with backoff. Stopping the daemon cancels a running job at once.
- The kept tail is at most a quarter of the compaction threshold, so the summary plus the kept
  tail leave a session well below it: a busy session does not compact again right away.
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
  that caused it. Such flushes run in groups in a worker of their own (the reset job closes
  thousands of sessions at once), their notes written with one append per memory file.
- A summarizer failure (timeout, exit code, HTTP error, empty or template-only answer) writes
  nothing: the job is logged with the reason and retried with exponential backoff
  (`retryBaseSeconds`, doubling, at most an hour) while the session keeps taking messages.

Pending work is held in memory: after a restart a session over the threshold is picked up again
by its next message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon import compaction_job
from daemon.compaction_job import (
    Done,
    Job,
    Latest,
    after_limit,
    kept_budget,
    latest_of,
    read_budget,
)
from daemon.compaction_replies import (
    LatestCache,
    compact_reply,
    context_answer,
    context_reply,
)
from daemon.compaction_state import (
    MAX_BACKOFF_SECONDS,
    Outcome,
    Pending,
    Request,
    ResetFlush,
    Waiter,
    answer,
    flushed,
    int_of,
    not_done,
    why,
)
from daemon.config import CompactionConfig
from daemon.core import tokens
from daemon.core.commands import Command
from daemon.core.ids import next_entry_id
from daemon.core.protocol import CompactParams, SessionRef
from daemon.errors import NotFound, StorageUnavailable, SummarizerFailed
from daemon.memoryflush import MemoryFlusher
from daemon.reset_flushes import ResetFlushes
from daemon.store.context import ContextView
from daemon.store.registry import SessionState
from daemon.store.store import Batch
from daemon.work import Commit, Entrance
from daemon.workers import Pool, WorkerDied

log = structlog.get_logger("daemon.compaction")

SETTLE_SECONDS = 2.0


class Compactor:
    """Owns the background worker; the pipeline calls its hooks, the server its two methods."""

    def __init__(self, entrance: Entrance, workspace_of: Callable[[str], str]) -> None:
        self.entrance = entrance
        self.store = entrance.store
        self.workspace_of = workspace_of
        self.pending: dict[str, Pending] = {}  # by session id
        self.flusher = MemoryFlusher(entrance, workspace_of)
        self.reset_flushes = ResetFlushes(self.store, self.flusher, self._woken)
        self.latest = LatestCache()
        # Transcript size right after our latest compaction of a session: the growth guard.
        self.marks: dict[str, int] = {}
        self._to_load: set[str] = set()
        self._loading: set[str] = set()
        self._wake = anyio.Event()
        self._scope = anyio.CancelScope()
        self._stopping = False
        # Every summarizer, and every read of more than a transcript's tail window, runs in
        # these worker processes: the event loop's GIL stays with acknowledgements.
        self.pool = Pool("compaction", entrance.config.daemon.compactionWorkers)
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
            self.pool.resize(cfg.daemon.compactionWorkers)

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
        count = int_of(entry.get("totalTokens"))
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
            int_of(entry.get("totalTokens")),
            th,
            int_of(entry.get("compactionCount")),
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
        _cc, th = self.settings(st.agent_id)
        if cmd.name == "compact":
            self._request(st, cmd.arg or None, "command", None)
            return compact_reply(st, th, cmd.arg or None)
        sid = st.session_id
        text, load = context_reply(
            st,
            th,
            self.pending.get(sid),
            anyio.current_time(),
            self.latest.get(sid),
            sid in self.latest,
        )
        if load:
            self._to_load.add(sid)
        return text

    async def context_detail(self, st: SessionState) -> str:
        """The reply to /context detail: each entry of the context with its share of the tokens.
        Never raises (the message is already stored; the answer waits for this)."""
        try:
            await self._settled(st)
            return await self.pool.run(
                compaction_job.detail,
                self._path(st),
                st.session_key,
                st.session_id,
                read_budget(self.settings(st.agent_id)[0]),
            )
        except Exception as e:
            log.exception("compaction.hook_failed", error=repr(e))
            return "/context detail failed; the daemon logged why. Your message was stored."

    def _session_ended(self, old: SessionState) -> None:
        """A reset closed `old`: its pending work ends, and its memory flush is queued."""
        sid = old.session_id
        p = self.pending.get(sid)
        if p is not None and not p.running:
            del self.pending[sid]
        if p is not None and p.requested is not None:
            answer(p.requested.waiters, not_done(old, "the session was reset"))
            p.requested = None
        self.marks.pop(sid, None)
        self.latest.pop(sid)
        cc, th = self.settings(old.agent_id)
        if th.flush_on_reset:
            rf = ResetFlush(old.agent_id, old.session_key, sid, old.rel_path, cc, max(0, old.size))
            self.reset_flushes.add(rf)

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
        cc, th = self.settings(st.agent_id)
        view = await self._read(st, cc)
        self.latest.put(st.session_id, latest_of(view))
        return context_answer(st, th, view)

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
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    task_status.started()
                    while True:
                        self._wake = anyio.Event()
                        wait = self._start_due(tg)
                        with anyio.move_on_after(wait):
                            await self._wake.wait()
        finally:
            await self.pool.aclose()
            await self.reset_flushes.pool.aclose()

    def _woken(self) -> None:
        self._wake.set()

    def _running(self, sid: str) -> bool:
        p = self.pending.get(sid)
        return p is not None and p.running

    def stop(self) -> None:
        """Cancel the worker (jobs in a summarizer are abandoned and retried after a restart by
        the next message); waiting callers get an answer."""
        self._stopping = True
        for p in self.pending.values():
            if p.requested is not None:
                answer(p.requested.waiters, {"compacted": False, "reason": "the daemon stopped"})
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
        wait = self.reset_flushes.start_due(tg, now, self._running)
        if wait is not None:
            next_at = min(next_at, now + wait)
        for sid in self._to_load - self._loading:
            self._loading.add(sid)
            tg.start_soon(self._load_latest, sid)
        self._to_load.clear()
        return None if next_at == math.inf else max(0.0, next_at - now)

    async def _session_job(self, p: Pending) -> None:
        try:
            await self._job(p)
        except anyio.get_cancelled_exc_class():
            # The daemon is stopping: whoever waits on this job gets an answer (the server
            # drains every request before it exits).
            if p.taken is not None:
                answer(p.taken.waiters, {"compacted": False, "reason": "the daemon stopped"})
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
        """One turn for a session: in a worker, the cycle's flush notes if the flush has not run
        yet and the compaction's summary (when due or asked for); then the notes and the
        entries are written here, flush first. A failure leaves the work pending with a
        backoff; a reset in between ends it (the reset's own flush takes over)."""
        st = self.store.by_id.get(p.session_id)
        if st is None or st.session_key != p.session_key:
            self.pending.pop(p.session_id, None)
            if p.requested is not None:
                answer(p.requested.waiters, {"compacted": False, "reason": "session ended"})
                p.requested = None
            return
        cc, th = self.settings(st.agent_id)
        req, p.requested = p.requested, None
        p.taken = req
        p.flush = p.compact = False
        d = self._due(st, th)
        compact = req is not None or d.compact
        flush = th.flush_enabled and not flushed(st) and (d.flush or compact)
        if not (flush or compact):
            return  # the count fell back below the thresholds (a fresh usage report)
        p.compacting = compact
        stage = "compaction"
        outcome: Outcome | None = None
        try:
            # What the registry counted must be in the file before the worker reads it.
            await self._settled(st)
            at_read = int_of(st.entry.get("totalTokens"))
            job = Job(
                path=self._path(st),
                end=st.size,
                max_bytes=read_budget(cc),
                keep_recent=kept_budget(th),
                max_after=after_limit(th),
                compact=compact,
                flush=flush,
                flush_alone=d.flush,
                summarizer=cc.summarizer.settings(),
                flush_prompt=cc.memoryFlush.prompt,
                instructions=req.instructions if req is not None else None,
                session_key=st.session_key,
                agent_id=st.agent_id,
            )
            try:
                done = await self.pool.run(compaction_job.run, job)
            except WorkerDied as e:
                # As a failed summarizer: nothing was written; retried with backoff.
                raise SummarizerFailed(str(e)) from None
            if done.flush_error is not None:
                stage = "memory flush"
                raise SummarizerFailed(done.flush_error)
            if done.flush_entries:
                stage = "memory flush"
                why_flush = "threshold" if d.flush else "compaction"
                await self.flusher.record_cycle(
                    st, done.flush_entries, done.notes, done.last_entry_id, why_flush
                )
            stage = "compaction"
            if done.nothing_to_compact:
                # Nothing older than the kept tail: the threshold waits for new material.
                if job.end >= 0:
                    self.marks[st.session_id] = job.end
                log.info(
                    "compaction.skipped",
                    sessionKey=st.session_key,
                    sessionId=st.session_id,
                    reason="nothing to compact before the kept tail",
                )
                outcome = not_done(st, "nothing to compact: every entry is in the kept tail")
            elif done.compact_error is not None:
                raise SummarizerFailed(done.compact_error)
            elif done.plan is not None:
                outcome = await self._compact(st, done, at_read, job.end, req)
        except NotFound:
            self.pending.pop(p.session_id, None)
            if req is not None:
                answer(req.waiters, not_done(st, "the session was reset"))
            return
        except (SummarizerFailed, OSError, StorageUnavailable) as e:
            reason = why(e)
            delay = self._backoff(p, f"{stage}: {reason}")
            p.flush = p.flush or (flush and not flushed(st))
            p.compact = p.compact or compact
            if req is not None:
                if p.requested is None:
                    p.requested = Request(req.instructions, req.reason)
                answer(
                    req.waiters,
                    {
                        **not_done(st, f"{stage} failed: {reason}"),
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
        # A busy session may be over the threshold again with what arrived meanwhile: its next
        # turn is due now, not at its next message.
        self._check(st)
        if req is not None:
            answer(req.waiters, outcome or not_done(st, "nothing to compact"))

    def _backoff(self, p: Pending, reason: str) -> float:
        cc, _th = self.settings(p.agent_id)
        p.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, cc.retryBaseSeconds * 2.0 ** (p.failures - 1))
        p.retry_at = anyio.current_time() + delay
        p.last_error = reason
        return delay

    # --- the compaction --------------------------------------------------------------------------

    async def _compact(
        self, st: SessionState, done: Done, at_read: int, end: int, req: Request | None
    ) -> Outcome:
        """Append the compaction entry the worker summarised. Raises NotFound (session reset),
        StorageUnavailable."""
        plan = done.plan
        assert plan is not None
        reason = req.reason if req is not None else "threshold"
        summary = plan.summary
        first_kept = plan.first_kept
        after = tokens.estimate(len(summary)) + plan.kept_tokens
        details: dict[str, Any] = {
            "compactionCount": 0,
            "reason": reason,
            "summarizer": done.kind,
            "summarizedEntries": plan.summarized,
        }
        if req is not None and req.instructions:
            details["instructions"] = req.instructions
        if not plan.complete:
            # The session's start was beyond what a compaction reads (read_budget).
            details["readFromOffset"] = True

        def prepare(batch: Batch, s: SessionState, now: int, ts: str) -> dict[str, Any]:
            cycle = int_of(s.entry.get("compactionCount")) + 1
            details["compactionCount"] = cycle
            flushed_in = s.entry.get("memoryFlushCompactionCount")
            if isinstance(flushed_in, int):
                # Carried so that a recount from the transcript alone finds it (store/context.py).
                details["memoryFlushCompactionCount"] = flushed_in
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
            line = orjson.dumps(entry)
            self.store.add_line(batch, s, line, eid)
            # Messages that arrived while the summarizer worked stay counted on top: they are
            # in the session's count, not in what the compaction left (`tokensAfter`).
            grown = max(0, int_of(s.entry.get("totalTokens")) - at_read)
            s.entry.update({"totalTokens": after + grown, "compactionCount": cycle})
            return {"entryId": eid, "line": len(line) + 1, "totalTokens": after + grown}

        with anyio.CancelScope(shield=True):
            appended = await self.entrance.append_prepared(st.session_id, prepare)
        # The growth guard counts from what the summary covered: messages that arrived while
        # the summarizer ran are new material (only the compaction's own line is not).
        if end >= 0:
            self.marks[st.session_id] = end + int(appended["line"])
        self.latest.put(st.session_id, Latest(appended["entryId"], summary, first_kept, at_read))
        info = {
            "agentId": st.agent_id,
            "sessionKey": st.session_key,
            "sessionId": st.session_id,
            "entryId": appended["entryId"],
            "firstKeptEntryId": first_kept,
            "tokensBefore": at_read,
            "tokensAfter": after,
            "totalTokens": appended["totalTokens"],
            "compactionCount": details["compactionCount"],
            "summarizedEntries": plan.summarized,
            "keptEntries": plan.kept_entries,
            "summarizer": done.kind,
            "reason": reason,
        }
        log.info("compaction.done", **info)
        self.entrance.events.publish("compaction.done", info)
        return {"compacted": True, **info, "summary": summary}

    # --- the flush before a reset -----------------------------------------------------------

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

    def _path(self, st: SessionState) -> str:
        return str(self.store.state_dir / st.rel_path)

    async def _read(self, st: SessionState, cc: CompactionConfig) -> ContextView:
        """The session's context, parsed in a worker (at most `read_budget` of its tail)."""
        try:
            return await self.pool.run(compaction_job.context, self._path(st), read_budget(cc))
        except WorkerDied as e:
            raise StorageUnavailable(f"reading the context failed: {e}") from None

    async def _load_latest(self, sid: str) -> None:
        try:
            st = self.store.by_id.get(sid)
            if st is None:
                return
            cc = self.settings(st.agent_id)[0]
            found = await self.pool.run(compaction_job.latest, self._path(st), read_budget(cc))
            self.latest.put(sid, found)
        except (OSError, WorkerDied) as e:
            log.debug("compaction.summary_unreadable", sessionId=sid, error=str(e))
            self.latest.put(sid, None)  # not tried again with every message
        finally:
            self._loading.discard(sid)
