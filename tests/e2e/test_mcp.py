"""`sessiond mcp` end to end: the `mcp` SDK's own stdio client starts the real MCP server, which
talks to a real daemon with an agent token (issue: agents reach their history themselves).

The agent `main` learns a fact, resets with /new, and must find the fact again through its tools;
the agent `work`'s sessions stay out of reach by id and by key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params

MAIN_TOKEN = "agent-main-token-0123456789abcdef"
WORK_TOKEN = "agent-work-token-0123456789abcdef"
TOOLS = {
    "sessions_list",
    "sessions_list_archived",
    "sessions_history",
    "memory_search",
    "session_context",
}


def config() -> dict[str, Any]:
    return {
        "agents": {"list": [{"id": "main", "default": True}, {"id": "work"}]},
        "session": {"dmScope": "per-channel-peer"},
        "auth": {
            "tokens": [
                {"name": "main", "token": MAIN_TOKEN, "role": "agent", "agents": ["main"]},
                {"name": "work", "token": WORK_TOKEN, "role": "agent", "agents": ["work"]},
            ]
        },
    }


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def run_client(d: Daemon, token_file: Path, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    """Start `sessiond mcp` through the SDK's stdio client; list the tools, make the calls."""

    argv = ["-m", "daemon", "mcp", "--socket", str(d.socket), "--token-file", str(token_file)]

    async def main(errlog: TextIO) -> tuple[set[str], list[CallToolResult]]:
        params = StdioServerParameters(
            command=sys.executable, args=argv, env={**os.environ, "SESSIOND_TOKEN": ""}
        )
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            results = [await session.call_tool(name, args) for name, args in calls]
            return tools, results

    with open(os.devnull, "w") as errlog:
        return anyio.run(main, errlog)


@pytest.fixture
def world(launch: Launch, tmp_path: Path) -> dict[str, Any]:
    d = launch(config=config())
    with d.client() as c:
        first = c.call(
            "message.ingest", ingest_params("7", "the wifi password is marmalade-42, keep it safe")
        )
        c.call("message.ingest", ingest_params("7", "/new", messageId="n1"))
        c.call("message.ingest", ingest_params("7", "what was that password again?", messageId="q"))
        work = c.call("message.ingest", ingest_params("9", "work secret: zeppelin", agentId="work"))
        c.call("sessions.archived", {})  # waits until archiving is done
    main_file = tmp_path / "main.token"
    main_file.write_text(MAIN_TOKEN + "\n")
    return {"daemon": d, "token_file": main_file, "first": first, "work": work}


def test_an_agent_finds_what_was_said_before_a_reset(world: dict[str, Any]) -> None:
    key = world["first"]["sessionKey"]
    tools, results = run_client(
        world["daemon"],
        world["token_file"],
        [
            ("memory_search", {"query": "what's the wifi password?"}),
            ("sessions_history", {"session_key": key, "previous": 1}),
            ("sessions_list", {}),
            ("sessions_list_archived", {"session_key": key}),
            ("session_context", {"session_key": key}),
        ],
    )
    assert tools == TOOLS
    search, previous, listed, archived, context = results
    assert not any(r.isError for r in results), [text_of(r) for r in results]
    assert "marmalade" in text_of(search)
    assert world["first"]["sessionId"] in text_of(search)
    assert "marmalade-42" in text_of(previous)
    assert world["first"]["sessionId"] in text_of(previous)
    assert key in text_of(listed) and "agent:work" not in text_of(listed)
    assert world["first"]["sessionId"] in text_of(archived)
    assert "what was that password again?" in text_of(context)


def test_another_agents_session_is_a_tool_error_never_data(world: dict[str, Any]) -> None:
    work = world["work"]
    _tools, results = run_client(
        world["daemon"],
        world["token_file"],
        [
            ("sessions_history", {"session_id": work["sessionId"]}),
            ("sessions_history", {"session_key": work["sessionKey"]}),
            ("session_context", {"session_key": work["sessionKey"]}),
            ("memory_search", {"query": "zeppelin", "session": work["sessionId"]}),
            ("memory_search", {"query": "work secret zeppelin"}),
        ],
    )
    for r in results[:4]:
        assert r.isError, text_of(r)
        assert "zeppelin" not in text_of(r)
        assert "another agent" in text_of(r) or "Not found" in text_of(r)
    assert not results[4].isError and text_of(results[4]).startswith("No matches")


def test_mcp_without_a_token_explains_what_it_needs(daemon: Daemon) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "daemon", "mcp", "--socket", str(daemon.socket)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SESSIOND_TOKEN"},
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert "--token-file" in out.stderr and "SESSIOND_TOKEN" in out.stderr


def test_streamable_http_on_loopback_serves_the_same_tools(world: dict[str, Any]) -> None:
    import socket
    import subprocess
    import time

    from mcp.client.streamable_http import streamable_http_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = world["daemon"]
    argv = [sys.executable, "-m", "daemon", "mcp", "--socket", str(d.socket)]
    argv += ["--token-file", str(world["token_file"]), "--http", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until it listens (a condition, not a fixed sleep)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)

        async def main() -> tuple[set[str], str]:
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                tools = {t.name for t in (await session.list_tools()).tools}
                found = await session.call_tool("memory_search", {"query": "wifi password"})
                return tools, text_of(found)

        tools, found = anyio.run(main)
        assert tools == TOOLS
        assert "marmalade" in found
    finally:
        proc.terminate()
        proc.wait(timeout=30)
