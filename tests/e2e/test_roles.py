"""Roles end to end (SPEC 3): every method against every role, over a Unix socket and over TCP.

One daemon serves the whole matrix: agents `main` and `work`, each with a current and an archived
session. An agent token reads its own (current and archived) and gets 1002 for the other agent's
by every method; an adapter writes for its agent only; a connection without a token gets 1001;
admin gets everything.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.client import Client, RpcError
from daemon.methods import METHODS
from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params, short_workdir

TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "adapter": "adapter-token-0123456789abcdef",
    "agent": "agent-main-token-0123456789abcdef",
    "work-agent": "agent-work-token-0123456789abcdef",
}
ROLES = ("none", "admin", "adapter", "agent")  # "agent" is main's agent; "adapter" writes main
TRANSPORTS = ("unix", "tcp")
OK, ANY = "ok", "any"  # a result / any answer but 1001 and 1002 (methods of other work)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(workdir: Path, port: int, **auth: Any) -> dict[str, Any]:
    return {
        "agents": {"list": [{"id": "main", "default": True}, {"id": "work"}]},
        "session": {"dmScope": "per-channel-peer"},
        "daemon": {
            "listeners": [
                {"unix": str(workdir / "t.sock")},  # every connection needs a token
                {"tcp": f"127.0.0.1:{port}"},
                {"unix": str(workdir / "main.sock"), "role": "agent", "agents": ["main"]},
            ]
        },
        "auth": {
            "tokens": [
                {"name": "ops", "token": TOKENS["admin"], "role": "admin"},
                {"name": "tg", "token": TOKENS["adapter"], "role": "adapter", "agents": ["main"]},
                {"name": "main", "token": TOKENS["agent"], "role": "agent", "agents": ["main"]},
                {
                    "name": "work",
                    "token": TOKENS["work-agent"],
                    "role": "agent",
                    "agents": ["work"],
                },
            ],
            **auth,
        },
    }


@dataclass
class World:
    """The daemon and what was seeded: per agent, its current and archived session."""

    daemon: Daemon
    port: int
    unix: Path
    key: dict[str, str] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)
    archived: dict[str, str] = field(default_factory=dict)
    reset_key: dict[str, str] = field(default_factory=dict)

    def connect(self, transport: str, role: str) -> Client:
        address = f"tcp://127.0.0.1:{self.port}" if transport == "tcp" else str(self.unix)
        token = None if role == "none" else TOKENS[role]
        return Client(address, timeout=15, token=token)


def seed(d: Daemon) -> dict[str, dict[str, str]]:
    """A session for main and work, reset once (archived) and written to again (current)."""
    out: dict[str, dict[str, str]] = {"key": {}, "current": {}, "archived": {}, "reset_key": {}}
    with d.client() as c:
        for agent in ("main", "work"):
            first = c.call(
                "message.ingest",
                ingest_params("7", f"the {agent} secret is lighthouse-{agent}", agentId=agent),
            )
            c.call("sessions.reset", {"sessionKey": first["sessionKey"]})
            now = c.call("message.ingest", ingest_params("7", f"after {agent}", agentId=agent))
            c.call("sessions.archived", {})  # waits until archiving is done
            spare = c.call("message.ingest", ingest_params("9", "spare", agentId=agent))
            out["key"][agent] = first["sessionKey"]
            out["archived"][agent] = first["sessionId"]
            out["current"][agent] = now["sessionId"]
            out["reset_key"][agent] = spare["sessionKey"]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = short_workdir(tmp_path_factory.mktemp("roles"))
    port = free_port()
    d = Daemon(workdir, config=config(workdir, port))
    try:
        d.start()
        w = World(d, port, workdir / "t.sock", **seed(d))
        yield w
    finally:
        d.cleanup()
        print(d.output())


# ---------------------------------------------------------------------------------------------
# The matrix: (method, params for a target agent, expected per role for own / other agent)

Params = Callable[[World, str], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    params: Params
    expect: dict[str, tuple[Any, Any]]  # role -> (own agent "main", other agent "work")


def both(v: Any) -> tuple[Any, Any]:
    return (v, v)


READ = {"admin": both(OK), "adapter": both(1002), "agent": (OK, 1002)}
WRITE = {"admin": both(OK), "adapter": (OK, 1002), "agent": (OK, 1002)}
ADMIN_ONLY = {"admin": both(ANY), "adapter": both(1002), "agent": both(1002)}

CASES = [
    Case(
        "status",
        "status",
        lambda w, a: {},
        {"admin": both(OK), "adapter": both(OK), "agent": both(1002)},
    ),
    Case(
        "ingest",
        "message.ingest",
        lambda w, a: ingest_params("5", "hello", agentId=a),
        {"admin": both(OK), "adapter": (OK, 1002), "agent": both(1002)},
    ),
    Case(
        "append",
        "message.append",
        lambda w, a: {
            "sessionKey": w.key[a],
            "message": {"role": "assistant", "content": [{"type": "text", "text": "re"}]},
        },
        WRITE,
    ),
    Case("list", "sessions.list", lambda w, a: {"agentId": a}, READ),
    Case("get-key", "sessions.get", lambda w, a: {"sessionKey": w.key[a]}, READ),
    Case("get-id", "sessions.get", lambda w, a: {"sessionId": w.current[a]}, READ),
    Case("history-key", "sessions.history", lambda w, a: {"sessionKey": w.key[a]}, READ),
    Case("history-id", "sessions.history", lambda w, a: {"sessionId": w.current[a]}, READ),
    Case("history-archived", "sessions.history", lambda w, a: {"sessionId": w.archived[a]}, READ),
    Case(
        "history-previous",
        "sessions.history",
        lambda w, a: {"sessionKey": w.key[a], "previous": 1},
        READ,
    ),
    Case("archived-agent", "sessions.archived", lambda w, a: {"agentId": a}, READ),
    Case("archived-key", "sessions.archived", lambda w, a: {"sessionKey": w.key[a]}, READ),
    Case("search-agent", "memory.search", lambda w, a: {"query": "lighthouse", "agentId": a}, READ),
    Case(
        "search-session",
        "memory.search",
        lambda w, a: {"query": "lighthouse", "sessionId": w.archived[a]},
        READ,
    ),
    Case(
        "search-key",
        "memory.search",
        lambda w, a: {"query": "lighthouse", "sessionKey": w.key[a]},
        READ,
    ),
    Case(
        "context",
        "sessions.context",
        lambda w, a: {"sessionKey": w.key[a]},
        {"admin": both(ANY), "adapter": both(1002), "agent": (ANY, 1002)},
    ),
    Case("compact", "sessions.compact", lambda w, a: {"sessionKey": w.key[a]}, ADMIN_ONLY),
    Case("reset", "sessions.reset", lambda w, a: {"sessionKey": w.reset_key[a]}, ADMIN_ONLY),
    Case("reload", "config.reload", lambda w, a: {}, ADMIN_ONLY),
    Case("subscribe", "events.subscribe", lambda w, a: {}, ADMIN_ONLY),
    Case("unknown", "sessions.shred", lambda w, a: {}, ADMIN_ONLY),
    # The role check comes before validation (daemon/methods.py): a refused caller is told so,
    # not which of its params are wrong.
    Case(
        "reset-bad-params",
        "sessions.reset",
        lambda w, a: {"sessionKey": 7, "bogus": True},
        {"admin": both(-32602), "adapter": both(1002), "agent": both(1002)},
    ),
]


def test_the_matrix_covers_every_method_of_the_table() -> None:
    assert {c.method for c in CASES} | {"auth.hello"} >= set(METHODS)


def outcome(w: World, transport: str, role: str, method: str, params: dict[str, Any]) -> Any:
    """The result, or the error code."""
    with w.connect(transport, role) as c:
        try:
            return ("result", c.call(method, params))
        except RpcError as e:
            return ("error", e.code)


def check(got: Any, want: Any, what: str) -> None:
    kind, value = got
    if want == OK:
        assert kind == "result", f"{what}: expected a result, got error {value}"
    elif want == ANY:
        assert kind == "result" or value not in (1001, 1002), f"{what}: got {got}"
    else:
        assert (kind, value) == ("error", want), f"{what}: expected error {want}, got {got}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_method_against_every_role(
    world: World, transport: str, role: str, case: Case
) -> None:
    for n, agent in enumerate(("main", "work")):
        want = 1001 if role == "none" else case.expect[role][n]
        got = outcome(world, transport, role, case.method, case.params(world, agent))
        check(got, want, f"{case.method} {role} over {transport} on {agent}'s data")


# ---------------------------------------------------------------------------------------------
# What an agent sees


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_agent_reads_its_own_current_and_archived_sessions(world: World, transport: str) -> None:
    with world.connect(transport, "agent") as c:
        listed = c.call("sessions.list", {})["sessions"]
        assert {s["agentId"] for s in listed} == {"main"}
        assert world.current["main"] in {s["sessionId"] for s in listed}
        archived = c.call("sessions.archived", {})["sessions"]
        assert {a["agentId"] for a in archived} == {"main"}
        assert world.archived["main"] in {a["sessionId"] for a in archived}
        old = c.call("sessions.history", {"sessionId": world.archived["main"]})
        texts = [str(e.get("message", {}).get("content")) for e in old["entries"]]
        assert any("lighthouse-main" in t for t in texts)
        hits = c.call("memory.search", {"query": "lighthouse"})["hits"]
        assert [h["sessionId"] for h in hits] == [world.archived["main"]]
        assert all(h["agentId"] == "main" for h in hits)


def test_a_listener_with_a_default_role_needs_no_token(world: World) -> None:
    with Client(world.daemon.workdir / "main.sock", timeout=15) as c:
        assert {s["agentId"] for s in c.call("sessions.list", {})["sessions"]} == {"main"}
        with pytest.raises(RpcError) as e:
            c.call("sessions.history", {"sessionId": world.archived["work"]})
        assert e.value.code == 1002


def test_the_default_socket_is_admin_and_hello_can_lower_it(world: World) -> None:
    with world.daemon.client() as c:
        assert len({s["agentId"] for s in c.call("sessions.list", {})["sessions"]}) == 2
        assert c.call("auth.hello", {"token": TOKENS["agent"]})["role"] == "agent"
        assert {s["agentId"] for s in c.call("sessions.list", {})["sessions"]} == {"main"}


def test_a_wrong_token_is_1001_and_the_connection_stays_usable(world: World) -> None:
    with world.connect("tcp", "none") as c:
        with pytest.raises(RpcError) as e:
            c.call("auth.hello", {"token": "not-a-valid-token-at-all"})
        assert e.value.code == 1001
        assert c.call("auth.hello", {"token": TOKENS["adapter"]})["role"] == "adapter"
        assert c.call("status", {})["pid"]


def test_refusals_are_logged_without_the_token(world: World) -> None:
    with world.connect("tcp", "agent") as c, contextlib.suppress(RpcError):
        c.call("sessions.get", {"sessionKey": world.key["work"]})
    deadline = time.monotonic() + 5
    while True:
        lines = [x for x in world.daemon.logs() if x.get("event") == "request.forbidden"]
        mine = [x for x in lines if x.get("method") == "sessions.get"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine and mine[-1]["agentId"] == "work" and mine[-1]["role"] == "agent"
    out = (world.daemon.workdir / f"daemon-{world.daemon.runs}.out").read_text()
    assert all(t not in out for t in TOKENS.values())


# ---------------------------------------------------------------------------------------------
# Caps, reloads, listeners that cannot be opened


def test_agent_reads_are_capped_and_page_on(launch: Launch, tmp_path: Path) -> None:
    workdir = short_workdir(tmp_path)
    port = free_port()
    cfg = config(workdir, port, agentReads={"maxBytes": 4000, "maxBlockChars": 100})
    d = launch(cfg)
    key = None
    with d.client() as c:
        for i in range(20):
            ack = c.call("message.ingest", ingest_params("7", f"{i} " + "x" * 1000))
            key = ack["sessionKey"]
    with Client(f"tcp://127.0.0.1:{port}", token=TOKENS["agent"]) as c:
        page = c.call("sessions.history", {"sessionKey": key, "limit": 100})
        assert page["truncated"] is True
        assert 1 <= len(page["entries"]) < 20
        block = page["entries"][0]["message"]["content"][0]
        assert block["truncated"] is True and len(block["text"]) == 101
        seen = len(page["entries"])
        while page["before"] is not None:
            page = c.call("sessions.history", {"sessionKey": key, "before": page["before"]})
            seen += len(page["entries"])
        assert seen == 20
    with d.client() as admin:  # admin reads are not capped
        full = admin.call("sessions.history", {"sessionKey": key, "limit": 100})
        assert "truncated" not in full and len(full["entries"]) == 20


def test_a_token_removed_by_a_reload_stops_working_on_open_connections(
    launch: Launch, tmp_path: Path
) -> None:
    workdir = short_workdir(tmp_path)
    port = free_port()
    d = launch(config(workdir, port))
    with Client(f"tcp://127.0.0.1:{port}", token=TOKENS["agent"]) as c:
        assert c.call("sessions.list", {})["sessions"] == []
        cfg = config(workdir, port)
        cfg["auth"]["tokens"] = [t for t in cfg["auth"]["tokens"] if t["name"] != "main"]
        d.config_path.write_text(json.dumps(cfg))
        assert d.call("config.reload", {})["reloaded"] is True
        with pytest.raises(RpcError) as e:
            c.call("sessions.list", {})
        assert e.value.code == 1001


def test_a_taken_port_stops_start_up_with_a_clear_message(launch: Launch, tmp_path: Path) -> None:
    workdir = short_workdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = launch(config(workdir, port), start=False)
        proc = d.spawn()
        assert proc.wait(timeout=20) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_a_tcp_listener_beyond_loopback_is_a_config_error(launch: Launch) -> None:
    d = launch({"daemon": {"listeners": [{"tcp": "0.0.0.0:7000"}]}}, start=False)
    proc = d.spawn()
    assert proc.wait(timeout=20) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert "daemon.listeners[0].tcp: must be a loopback address" in err
