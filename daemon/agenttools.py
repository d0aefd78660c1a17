"""`sessiond mcp`: an agent's own history as Model Context Protocol tools.

Agent runtimes (OpenClaw's `mcp.servers`, Claude Code, Codex) take tools over MCP; this module is
an MCP server (the official `mcp` SDK, FastMCP, over stdio or Streamable HTTP on loopback) whose
tools are thin translations of the daemon's protocol methods. It holds no data and no rights of
its own: every call opens a connection to the daemon and authenticates with the agent token it
was started with, so the daemon's role rules decide what the agent sees (its own agent's current
and archived sessions and memory, never another's) and the daemon's read caps bound each answer.

Answers are compact text a model reads well, each line carrying the ids a follow-up call needs.
A daemon error becomes an MCP tool error (`isError`) with a sentence the model can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field

from daemon.client import Client, ConnectError, RpcError

MAX_ANSWER_CHARS = 24_000  # a tool answer longer than this is cut, saying how to see the rest
MAX_LINE_CHARS = 600  # one entry's text in a listing
CALL_TIMEOUT = 60.0

INSTRUCTIONS = (
    "Your conversation history, kept by sessiond: the current sessions, the archived ones "
    "(ended by /new, /reset, the daily or idle reset), and memory notes. Use memory_search to "
    "find what was said before (plain language works: 'what did we decide about the tip?'), "
    "sessions_history to read a session (previous=1 is the one before the current session), "
    "and sessions_list_archived to see how sessions followed each other."
)


class DaemonLink:
    """Calls the daemon as one agent: a fresh authenticated connection per call (in a thread,
    so the MCP server's event loop never blocks), so a daemon restart costs one failed call."""

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.token = token

    def call_blocking(self, method: str, params: dict[str, Any]) -> Any:
        with Client(self.address, timeout=CALL_TIMEOUT, token=self.token) as c:
            return c.call(method, params)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return await anyio.to_thread.run_sync(self.call_blocking, method, params)
        except RpcError as e:
            raise ToolError(explain(e)) from None
        except (ConnectError, OSError) as e:
            raise ToolError(
                f"sessiond is not reachable ({e}); the history service may be restarting, "
                "try again in a moment"
            ) from None


def explain(e: RpcError) -> str:
    """A daemon error as a sentence a model can act on."""
    field = e.data.get("field") if isinstance(e.data, dict) else None
    if e.code == 1002:
        return (
            "That session belongs to another agent: you can only read your own sessions. "
            "Use sessions_list or sessions_list_archived to see yours."
        )
    if e.code == 1003:
        return (
            f"Not found: {e.message}. Use sessions_list (current sessions) or "
            "sessions_list_archived (ended ones) to find a valid session key or id."
        )
    if e.code == 1001:
        return "sessiond refused the token this tool server was started with; ask the operator."
    if e.code == -32602:
        where = f" (parameter {field})" if field else ""
        return f"Invalid request{where}: {e.message}."
    if e.code == 1004:
        return "sessiond's storage is unavailable right now; try again shortly."
    return f"sessiond answered with an error: {e.message} (code {e.code})."


# ---------------------------------------------------------------------------------------------
# Text for a model


def when(value: Any) -> str:
    """An ISO-8601 string or epoch ms as `2026-11-22 09:15 UTC`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        dt = datetime.fromtimestamp(value / 1000, UTC)
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return value
    else:
        return "?"
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def one_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def entry_text(entry: dict[str, Any], include_tools: bool) -> str | None:
    """What an entry says, for a transcript listing; None for entries a reader skips."""
    kind = entry.get("type")
    if kind == "compaction":
        return f"[summary of earlier messages] {entry.get('summary', '')}"
    if kind != "message":
        return None
    msg = entry.get("message") or {}
    content = msg.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "toolCall" and include_tools:
                parts.append(f"[tool call {block.get('name', '?')}]")
    if msg.get("role") == "toolResult":
        if not include_tools:
            return None
        return "[tool result] " + " ".join(parts)
    return " ".join(parts) if parts else None


def capped(lines: list[str], more: str) -> str:
    """Lines joined, cut at MAX_ANSWER_CHARS with `more` saying how to get the rest."""
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        if size + len(line) + 1 > MAX_ANSWER_CHARS:
            out.append(f"… {len(lines) - i} more lines not shown; {more}")
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The tools


def build_server(link: DaemonLink, *, host: str = "127.0.0.1", port: int = 8000) -> FastMCP:
    """The MCP server with its five tools, calling the daemon through `link`."""
    server = FastMCP("sessiond", instructions=INSTRUCTIONS, host=host, port=port)

    @server.tool()
    async def sessions_list(
        limit: Annotated[int, Field(ge=1, le=200, description="how many sessions")] = 20,
        active_minutes: Annotated[
            int | None, Field(ge=1, description="only sessions active within this many minutes")
        ] = None,
    ) -> str:
        """Your current sessions (one per conversation: a DM, a group, a thread), most recently
        active first, with the session key to pass to sessions_history or session_context."""
        params: dict[str, Any] = {"limit": limit}
        if active_minutes is not None:
            params["activeMinutes"] = active_minutes
        res = await link.call("sessions.list", params)
        rows = res.get("sessions", [])
        if not rows:
            return "No current sessions."
        lines = [f"{len(rows)} current sessions, most recently active first:"]
        for s in rows:
            where = " ".join(str(s[k]) for k in ("channel", "chatType") if s.get(k))
            lines.append(
                f"- key {s.get('sessionKey')} | id {s.get('sessionId')} | "
                f"last active {when(s.get('updatedAt'))} | {where or 'unknown channel'} | "
                f"{s.get('totalTokens') or 0} tokens, compacted {s.get('compactionCount') or 0}x"
            )
        return capped(lines, "pass a smaller limit")

    @server.tool()
    async def sessions_list_archived(
        session_key: Annotated[
            str | None, Field(description="only archived sessions of this session key")
        ] = None,
        after: Annotated[
            str | None, Field(description="archived at or after (ISO-8601 date or time)")
        ] = None,
        before: Annotated[str | None, Field(description="archived before (ISO-8601)")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
    ) -> str:
        """Your ended sessions, newest first: when each began and ended, why it ended (new,
        reset, daily, idle, ...), its size, and the sessions before and after it (lineage).
        Read one with sessions_history(session_id=...)."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("sessionKey", session_key), ("after", after), ("before", before)):
            if value is not None:
                params[name] = value
        res = await link.call("sessions.archived", params)
        rows = res.get("sessions", [])
        if not rows:
            return "No archived sessions" + (f" for {session_key}." if session_key else ".")
        lines = [f"{len(rows)} archived sessions, newest first:"]
        for s in rows:
            lineage = []
            if s.get("predecessor"):
                lineage.append(f"after {s['predecessor']}")
            if s.get("successor"):
                lineage.append(f"followed by {s['successor']}")
            lines.append(
                f"- id {s.get('sessionId')} | key {s.get('sessionKey')} | "
                f"{when(s.get('startedAt'))} to {when(s.get('endedAt'))} | "
                f"ended: {s.get('reason')} | {s.get('messages', '?')} messages, "
                f"{s.get('bytes', '?')} bytes" + (f" | {', '.join(lineage)}" if lineage else "")
            )
        return capped(lines, "narrow with session_key, after or before")

    @server.tool()
    async def sessions_history(
        session_key: Annotated[
            str | None, Field(description="a current session's key (from sessions_list)")
        ] = None,
        session_id: Annotated[
            str | None,
            Field(description="any session's id, current or archived (sessions_list_archived)"),
        ] = None,
        previous: Annotated[
            int | None,
            Field(ge=1, description="with session_key: 1 = the session before the current one"),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="entries per page")] = 30,
        before: Annotated[
            str | None, Field(description="the cursor from the previous page, for older entries")
        ] = None,
        include_tools: Annotated[
            bool, Field(description="also show tool calls and tool results")
        ] = False,
    ) -> str:
        """Read a session's messages, newest first, a page at a time. Give session_key (add
        previous=N for the N-th earlier session of that conversation) or session_id."""
        if (session_key is None) == (session_id is None):
            raise ToolError("Give exactly one of session_key or session_id.")
        params: dict[str, Any] = {"limit": limit, "includeTools": include_tools}
        if session_key is not None:
            params["sessionKey"] = session_key
        if session_id is not None:
            params["sessionId"] = session_id
        if previous is not None:
            params["previous"] = previous
        if before is not None:
            params["before"] = before
        res = await link.call("sessions.history", params)
        lines = [f"Session {res.get('sessionId')} (key {res.get('sessionKey')}), newest first:"]
        for e in res.get("entries", []):
            text = entry_text(e, include_tools)
            if text is None:
                continue
            role = (e.get("message") or {}).get("role") or e.get("type")
            lines.append(f"[{e.get('id')}] {when(e.get('timestamp'))} {role}: {one_line(text)}")
        if len(lines) == 1:
            lines.append("(no messages on this page)")
        cursor = res.get("before")
        tail = (
            f'Older entries: call again with before="{cursor}".'
            if cursor
            else "This is the start of the session."
        )
        return capped(lines, tail) + "\n" + tail

    @server.tool()
    async def memory_search(
        query: Annotated[
            str, Field(description="plain language: a question or the words you remember")
        ],
        include_sessions: Annotated[bool, Field(description="search transcripts")] = True,
        include_memory: Annotated[bool, Field(description="search memory notes")] = True,
        after: Annotated[str | None, Field(description="only entries at or after (ISO)")] = None,
        before: Annotated[str | None, Field(description="only entries before (ISO)")] = None,
        session: Annotated[
            str | None, Field(description="only this session (a session id or a session key)")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=50)] = 10,
    ) -> str:
        """Search everything you have said and noted, current and archived sessions and memory
        files, in plain language. Each hit names the session and entry to read around it with
        sessions_history."""
        params: dict[str, Any] = {
            "query": query,
            "includeSessions": include_sessions,
            "includeMemory": include_memory,
            "limit": limit,
        }
        if after is not None:
            params["after"] = after
        if before is not None:
            params["before"] = before
        if session is not None:
            params["sessionKey" if session.startswith("agent:") else "sessionId"] = session
        res = await link.call("memory.search", params)
        hits = res.get("hits", [])
        if not hits:
            return f"No matches for {query!r}."
        lines = [f"{len(hits)} matches, best first:"]
        for h in hits:
            if h.get("source") == "memory":
                where = f"memory note {h.get('file') or h.get('entryId')}"
            else:
                state = "archived session" if h.get("archived") else "session"
                where = (
                    f"{state} {h.get('sessionId')} (key {h.get('sessionKey')}) "
                    f"entry {h.get('entryId')}"
                )
            lines.append(
                f"- {when(h.get('timestamp'))} {h.get('role') or ''} in {where}: "
                f"{one_line(str(h.get('snippet', '')))}"
            )
        return capped(lines, "ask with a smaller limit")

    @server.tool()
    async def session_context(
        session_key: Annotated[str, Field(description="a current session's key")],
    ) -> str:
        """What the model would see for a session now: the latest compaction summary and the
        messages after it, with the token estimate."""
        res = await link.call("sessions.context", {"sessionKey": session_key})
        lines = [
            f"Session {res.get('sessionId')} (key {res.get('sessionKey')}): about "
            f"{res.get('tokens')} tokens of a {res.get('contextWindow')}-token window, "
            f"compacted {res.get('compactionCount') or 0}x."
        ]
        if res.get("summary"):
            lines.append(f"Summary of earlier messages: {res['summary']}")
        entries = res.get("entries", [])
        lines.append(f"{len(entries)} messages since, oldest first:")
        for e in entries:
            text = entry_text(e, include_tools=True)
            if text is None:
                continue
            role = (e.get("message") or {}).get("role") or e.get("type")
            lines.append(f"[{e.get('id')}] {when(e.get('timestamp'))} {role}: {one_line(text)}")
        return capped(lines, "read the session page by page with sessions_history")

    return server


def serve(
    address: str,
    token: str,
    *,
    http: tuple[str, int] | None = None,
    warn: Callable[[str], None] = lambda _m: None,
) -> None:
    """Check the token with the daemon, then serve MCP on stdio (or Streamable HTTP) until the
    client goes away. Raises ConnectError / RpcError when the daemon refuses at start."""
    with Client(address, timeout=CALL_TIMEOUT) as c:
        who = c.call("auth.hello", {"token": token})
    if who.get("role") != "agent":
        warn(
            f"the token has role {who.get('role')!r}, not 'agent': the tools see what that "
            "role may read"
        )
    host, port = http if http else ("127.0.0.1", 8000)
    server = build_server(DaemonLink(address, token), host=host, port=port)
    server.run(transport="streamable-http" if http else "stdio")
