"""Stage 4 of SPEC 4, the part that touches the store: a request's lines go into the batch and its
registry changes into the entries, in one place. For an inbound message the pure planner
(`core.ingest.plan_ingest`) has decided everything; this applies the plan. The other requests
(an agent's message, a reset without a message, prepared entries) are applied here too.

Everything runs on the event loop while the batch is prepared; nothing is durable until the
committer has written the batch, and `Store.fail` undoes the positions if that write fails.
"""

from __future__ import annotations

from typing import Any, Protocol

from daemon.core import tokens
from daemon.core.commands import Command
from daemon.core.ids import next_entry_id
from daemon.core.ingest import (
    RESET_ENTRY,
    STOP_ENTRY,
    CommandPlan,
    IngestPlan,
    carried_fields,
    plan_ingest,
    stop_event,
)
from daemon.errors import NotFound
from daemon.lifecycle import sessions_reply, status_reply
from daemon.store.registry import SessionState
from daemon.store.store import Store
from daemon.store.transcript import custom_line, header_line, message_line
from daemon.work import (
    Answer,
    AppendWork,
    Commit,
    Entrance,
    EntryWork,
    IngestOutcome,
    IngestWork,
    ResetWork,
)


class Commands(Protocol):
    """Replies to the chat commands that need the compaction service (daemon/compaction.py)."""

    def command_reply(self, cmd: Command, st: SessionState) -> str:
        """The reply to /compact (which schedules a compaction) or /context. Never raises."""
        ...

    async def context_detail(self, st: SessionState) -> str:
        """The reply to /context detail: each entry's share of the tokens. Never raises."""
        ...


class Applier:
    """Applies requests to the batch being prepared (see the module docstring)."""

    def __init__(self, entrance: Entrance, commands: Commands | None) -> None:
        self.entrance = entrance
        self.store: Store = entrance.store
        self.commands = commands

    def ingest(self, item: IngestWork, commit: Commit) -> IngestOutcome:
        """Stages 3-4 of SPEC 4: the pure planner decides, this applies its plan."""
        store = self.store
        route = item.route
        reg = store.agents.get(route.agent_id)
        sessions: dict[str, SessionState] = {} if reg is None else reg.sessions
        cfg = self.entrance.config
        plan = plan_ingest(
            sessions,
            route,
            item.params,
            self.entrance.policies,
            commit.now,
            reset_triggers=cfg.session.resetTriggers,
            compaction=self.commands is not None,
        )
        old = sessions[plan.reset.previous] if plan.reset is not None else None
        if plan.new is not None:
            st = self._begin_session(
                commit,
                route.agent_id,
                plan.new.session_key,
                plan.new.fields,
                old,
                plan.reset.reason if plan.reset is not None else None,
                plan.reset.data if plan.reset is not None else None,
            )
        else:
            assert plan.target is not None
            st = sessions[plan.target]
            if plan.rewrite_header:
                self._rewrite_header(commit, st)
        entry_id = self._write_entry(item, plan, st, commit)
        self._update_registry(plan, st, route.agent_id)
        commit.messaged[st.session_id] = st
        reset = None
        if old is not None and plan.reset is not None:
            reset = {"reason": plan.reset.reason, "previousSessionId": old.session_id}
        command = None
        if plan.command is not None:
            command = self._command(plan.command, st, route.agent_id, commit.now)
        return IngestOutcome(st, entry_id, plan.new is not None, reset, command, plan.compaction)

    def _write_entry(
        self, item: IngestWork, plan: IngestPlan, st: SessionState, commit: Commit
    ) -> str:
        ts = commit.ts
        entry_id = next_entry_id(st.last_entry_id)
        if plan.kind == "stop":
            line = custom_line(
                entry_id, st.last_entry_id, ts, STOP_ENTRY, plan.stop_data, plan.origin
            )
            commit.stops.append(stop_event(st.agent_id, st, entry_id, item.params))
        else:
            assert plan.message is not None
            line = message_line(entry_id, st.last_entry_id, ts, plan.message, plan.origin)
        self.store.add_line(commit.batch, st, line, entry_id)
        return entry_id

    def _update_registry(self, plan: IngestPlan, st: SessionState, agent_id: str) -> None:
        entry = st.entry
        fields = plan.registry
        if plan.added_tokens is not None:
            fields = {**fields, "totalTokens": entry.total_tokens + plan.added_tokens}
        entry.update(fields)
        change = plan.route_change
        if change is not None:
            chat = self.store.agent(agent_id).sessions.get(change.chat_key, st)
            chat.entry.route_to = change.target

    def _begin_session(
        self,
        commit: Commit,
        agent_id: str,
        key: str,
        fields: dict[str, Any],
        old: SessionState | None,
        reason: str | None,
        reset_data: dict[str, Any] | None,
    ) -> SessionState:
        """Create a session (header first); when it replaces `old`, close and archive that one
        and record why in the new one, so a reset is never silent."""
        store = self.store
        batch, now = commit.batch, commit.now
        # A key whose last session ended without a successor (a scheduled reset, a deletion, an
        # adopted archive) continues that chain: the header names it, its index line follows.
        prev = store.predecessor_of(agent_id, key) if old is None else None
        pred = old.session_id if old is not None else (prev.session_id if prev else None)
        st, header = store.create_session(agent_id, key, now, fields, pred)
        if prev is not None:
            commit.linked.append((prev, st.session_id))
        # Registered now, so the next batch (prepared during this one's sync) finds it.
        store.register(st)
        batch.created.append(st)
        store.add_line(batch, st, header, None)
        if old is not None and reason is not None:
            store.close_session(batch, old, reason, st.session_id, now)
            data = reset_data or {"reason": reason, "predecessor": old.session_id}
            eid = next_entry_id(st.last_entry_id)
            line = custom_line(eid, None, commit.ts, RESET_ENTRY, data)
            store.add_line(batch, st, line, eid)
            commit.resets.append((old, st, reason))
        return st

    def _rewrite_header(self, commit: Commit, st: SessionState) -> None:
        store = self.store
        cwd = store.workspaces.get(st.agent_id) or str(store.state_dir / "workspace")
        line = header_line(st.session_id, st.session_key, commit.now, cwd)
        store.add_line(commit.batch, st, line, None)

    def _command(self, cmd: CommandPlan, st: SessionState, agent_id: str, now: int) -> CommandPlan:
        """The planned reply to a chat command, rendered here where it needs more state; /context
        detail's stays None (the pipeline answers it once the transcript is read)."""
        reply = cmd.reply
        if reply is not None:
            reply = reply.replace("{sessionId}", st.session_id)
        elif cmd.ask == "status":
            reply = status_reply(st, self.entrance.policies, now)
        elif cmd.ask == "sessions":
            reply = sessions_reply(self.store, agent_id, self.entrance.policies.tz)
        elif cmd.ask != "context_detail":
            assert self.commands is not None
            reply = self.commands.command_reply(Command(cmd.name, "/" + cmd.name, cmd.arg), st)
        return CommandPlan(cmd.name, reply, cmd.ask, cmd.arg)

    def reset(self, item: ResetWork, commit: Commit) -> Answer:
        """A reset asked for by the API or the scheduler (no message to carry)."""
        reg = self.store.agents.get(item.agent_id)
        st = None if reg is None else reg.sessions.get(item.session_key)
        if st is None:
            raise NotFound(f"no session with key {item.session_key!r}")
        if item.only_if_stale:
            verdict = self.entrance.policies.staleness(st, max(commit.now, item.at or 0))
            if not verdict.stale:
                return {"sessionKey": st.session_key, "skipped": True}
            reason = verdict.reason or item.reason
        else:
            reason = item.reason
        if item.start_new:
            fields = carried_fields(st.entry, None)
            new = self._begin_session(commit, st.agent_id, st.session_key, fields, st, reason, None)
            return {
                "sessionKey": st.session_key,
                "previousSessionId": st.session_id,
                "sessionId": new.session_id,
                "reason": reason,
            }
        self.store.close_session(commit.batch, st, reason, None, commit.now)
        commit.resets.append((st, None, reason))
        return {
            "sessionKey": st.session_key,
            "previousSessionId": st.session_id,
            "sessionId": None,
            "reason": reason,
        }

    def entries(self, item: EntryWork, commit: Commit) -> Answer:
        st = self.store.by_id.get(item.session_id)
        if st is None or st.size <= 0:
            raise NotFound(f"no active session with id {item.session_id!r}")
        return item.prepare(commit.batch, st, commit.now, commit.ts)

    def append(self, item: AppendWork, commit: Commit) -> Answer:
        """An agent's message (reply, tool call, tool result) at the end of its session."""
        st = self.entrance.find_by_key(item.params.session_key)
        if st is None:
            raise NotFound(f"no session with key {item.params.session_key!r}")
        store = self.store
        now = commit.now
        entry_id = next_entry_id(st.last_entry_id)
        message = dict(item.params.message)
        message.setdefault("timestamp", now)
        line = message_line(entry_id, st.last_entry_id, commit.ts, message)
        store.add_line(commit.batch, st, line, entry_id)
        # SPEC 4.6: the provider's usage where known, else ceil(chars/4) on top.
        entry = st.entry
        total = tokens.after_message(entry.total_tokens, message)
        entry.update({"updatedAt": now, "totalTokens": total})
        commit.messaged[st.session_id] = st
        return {"sessionKey": st.session_key, "sessionId": st.session_id, "entryId": entry_id}
