"""The socket server (SPEC 3): JSON-RPC errors, limits, hostile ids, reads, and SIGTERM.

Every malformed request gets the right JSON-RPC error on a connection that stays usable, while
another client keeps being served; only an oversized line closes its connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.client import RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, PipelinedSender, ingest_params, message_ids, read_transcript

# ---------------------------------------------------------------------------------------------
# Protocol errors


def error_then_usable(d: Daemon, payload: bytes) -> dict[str, Any]:
    """Send `payload` on a fresh connection; return the error answer after checking that the
    same connection still answers `status` and that another client is served meanwhile."""
    other = d.client()
    other.call("status")
    conn = d.raw()
    conn.send(payload)
    answer = conn.read()
    assert "error" in answer, f"expected an error, got {answer}"
    assert "result" not in answer
    after = conn.call("status")
    assert "result" in after, f"the connection is no longer usable: {after}"
    ack = other.call("message.ingest", ingest_params("other", "still served"))
    assert ack["entryId"]
    return answer


def request(method: str, params: Any = None, rid: Any = 1) -> bytes:
    req: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        req["params"] = params
    return orjson.dumps(req) + b"\n"


def test_invalid_json_is_a_parse_error(served: Daemon) -> None:
    answer = error_then_usable(served, b'{"jsonrpc": "2.0", "id": 1, "method": \n')
    assert answer["error"]["code"] == -32700
    assert answer["id"] is None


def test_a_batch_is_an_invalid_request(served: Daemon) -> None:
    answer = error_then_usable(served, b"[]\n")
    assert answer["error"]["code"] == -32600


@pytest.mark.parametrize(
    "req",
    [
        {"id": 3, "method": "status"},
        {"jsonrpc": "1.0", "id": 3, "method": "status"},
        {"jsonrpc": "2.0", "id": 3},
        {"jsonrpc": "2.0", "id": 3, "method": 17},
        {"jsonrpc": "2.0", "id": 3, "method": "status", "params": [1, 2]},
    ],
    ids=["no-jsonrpc", "jsonrpc-1.0", "no-method", "method-not-a-string", "params-an-array"],
)
def test_a_request_object_without_jsonrpc_or_method_is_invalid(
    served: Daemon, req: dict[str, Any]
) -> None:
    answer = error_then_usable(served, orjson.dumps(req) + b"\n")
    assert answer["error"]["code"] == -32600
    assert answer["id"] == 3


def test_an_unknown_method_is_not_found_with_the_request_id(served: Daemon) -> None:
    answer = error_then_usable(served, request("sessions.explode", {}, rid="req-77"))
    assert answer["error"]["code"] == -32601
    assert answer["id"] == "req-77"


GOOD = ingest_params("42", "hi")


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("message.ingest", {**GOOD, "channel": 5}, "channel"),
        ("message.ingest", {**GOOD, "chatType": "dm"}, "chatType"),
        ("message.ingest", {**GOOD, "colour": "blue"}, "colour"),
        ("message.ingest", {**GOOD, "peer": ["42"]}, "peer"),
        ("message.ingest", {**GOOD, "text": 12}, "text"),
        ("message.ingest", {**GOOD, "metadata": "x"}, "metadata"),
        ("message.ingest", {k: v for k, v in GOOD.items() if k != "channel"}, "channel"),
        ("sessions.history", {"sessionKey": "agent:main:main", "limit": "10"}, "limit"),
        ("sessions.list", {"activeMinutes": True}, "activeMinutes"),
        ("status", {"verbose": True}, "verbose"),
    ],
    ids=[
        "channel-int",
        "chatType-dm",
        "unknown-param",
        "peer-array",
        "text-int",
        "metadata-string",
        "channel-missing",
        "limit-string",
        "activeMinutes-bool",
        "status-unknown-param",
    ],
)
def test_wrong_params_are_invalid_params_naming_the_field(
    served: Daemon, method: str, params: dict[str, Any], field: str
) -> None:
    answer = error_then_usable(served, request(method, params, rid=5))
    assert answer["error"]["code"] == -32602
    assert answer["error"]["data"]["field"] == field
    assert answer["id"] == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"channel": "telegram", "chatType": "direct", "text": "hi"}, "peer"),
        ({"channel": "telegram", "chatType": "group", "peer": "1", "text": "hi"}, "groupId"),
        (
            {"channel": "telegram", "chatType": "thread", "peer": "1", "groupId": "g", "text": "x"},
            "threadId",
        ),
    ],
    ids=["direct-without-peer", "group-without-groupId", "thread-without-threadId"],
)
def test_a_chat_type_without_its_ids_is_invalid_params(
    served: Daemon, params: dict[str, Any], field: str
) -> None:
    answer = error_then_usable(served, request("message.ingest", params))
    assert answer["error"]["code"] == -32602
    assert answer["error"]["data"]["field"] == field


@pytest.mark.parametrize(
    "payload",
    [
        b'{"jsonrpc":"2.0","id":9,"method":"status","params":{"x":"\xff\xfe"}}\n',
        b"\xff\xfe\xfd\n",
        b'{"jsonrpc":"2.0","id":9,"method":"st\xc3\x28tus"}\n',
        b'{"jsonrpc":"2.0","id":9,"method":"status","params":{"x":"\xed\xa0\x80"}}\n',
    ],
    ids=["bad-byte-in-string", "only-bad-bytes", "bad-sequence", "utf8-encoded-surrogate"],
)
def test_invalid_utf8_is_a_parse_error(served: Daemon, payload: bytes) -> None:
    answer = error_then_usable(served, payload)
    assert answer["error"]["code"] == -32700


def test_a_five_mib_line_is_too_large_and_closes_only_its_connection(served: Daemon) -> None:
    other = served.client()
    other.call("status")
    conn = served.raw(timeout=20)
    head = b'{"jsonrpc":"2.0","id":1,"method":"message.ingest","params":{"text":"'
    line = head + b"a" * (5 * 1024 * 1024) + b'"}}\n'
    started = time.monotonic()
    # The daemon answers and closes without reading the rest: our send may hit a closed socket.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.send(line)
    answer = conn.read()
    assert answer["error"]["code"] == 1006
    assert answer["id"] is None
    assert conn.is_closed_by_daemon(timeout=5)
    assert time.monotonic() - started < 10
    assert other.call("status")["storage"] == "ok"
    assert other.call("message.ingest", ingest_params("other", "still served"))["entryId"]
    with served.client() as fresh:
        assert fresh.call("status")


def test_a_line_just_under_the_limit_is_served(launch: Launch) -> None:
    d = launch({"daemon": {"maxLineBytes": 64 * 1024}})
    text = "b" * (60 * 1024)
    ack = d.call("message.ingest", ingest_params("42", text))
    assert ack["entryId"]


def test_notifications_and_blank_lines_get_no_answer(served: Daemon) -> None:
    conn = served.raw()
    conn.send(b'\n\r\n{"jsonrpc":"2.0","method":"status"}\n')
    answer = conn.call("status")
    assert "result" in answer


def test_pipelined_requests_are_answered_with_their_ids(served: Daemon) -> None:
    conn = served.raw()
    ids = [f"r{i}" for i in range(50)]
    payload = b"".join(
        request("message.ingest", ingest_params(str(i % 5), f"m{i}"), rid=rid)
        for i, rid in enumerate(ids)
    )
    conn.send(payload + request("status", {}, rid="last"))
    got = {conn.read()["id"] for _ in range(51)}
    assert got == {*ids, "last"}


# ---------------------------------------------------------------------------------------------
# Hostile ids never become paths

ESCAPE = f"sessiond-escape-{uuid.uuid4().hex[:8]}"
HOSTILE = [
    f"../../../../../../../../tmp/{ESCAPE}",
    f"../{ESCAPE}",
    "..",
    ".",
    "../",
    "/",
    f"/tmp/{ESCAPE}",
    f"a/../../{ESCAPE}",
    f"..\\..\\{ESCAPE}",
    f"%2e%2e%2f{ESCAPE}",
    f"\uff0e\uff0e\uff0f{ESCAPE}",  # fullwidth "../"
    f"\u2024\u2024/{ESCAPE}",  # one-dot leaders
    f"{ESCAPE}\u0000.jsonl",
    "\u0000",
    f"{ESCAPE}\n../x",
    "~",
    "x" * 300,
    f"sessions.json/../{ESCAPE}",
]
AGENT_ID = re.compile(r"[a-z0-9_][a-z0-9_-]{0,63}")
# File names are session ids the daemon generates (SPEC 2), never anything an adapter sent.
SESSION_FILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl")


def hostile_requests() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, bad in enumerate(HOSTILE):
        for field in ("peer", "channel", "accountId", "agentId", "messageId", "senderName"):
            out.append({**ingest_params("42", "x"), field: bad, "messageId": f"h{i}-{field}"})
            if field == "messageId":
                out[-1]["messageId"] = bad
        for kind in ("group", "channel"):
            out.append(
                {"channel": "slack", "chatType": kind, "peer": bad, "groupId": bad, "text": "x"}
            )
        out.append(
            {
                "channel": "discord",
                "chatType": "thread",
                "peer": "1",
                "groupId": bad,
                "threadId": bad,
                "text": "x",
            }
        )
        out.append(
            {
                "channel": "telegram",
                "chatType": "group",
                "peer": "1",
                "groupId": "g",
                "threadId": bad,
                "text": "x",
            }
        )
    return out


def check_layout(state: Path, top_level: set[str]) -> None:
    """Every path under the state folder is one the SPEC names; nothing leaves it.

    `top_level` is what the state folder held before any hostile request: the daemon's own files.
    """
    root = state.resolve()
    for dirpath, dirnames, filenames in os.walk(state):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            assert not p.is_symlink(), f"unexpected symlink {p}"
            assert p.resolve().is_relative_to(root), f"{p} resolves outside the state folder"
            rel = p.relative_to(state).parts
            top = rel[0]
            if top != "agents":
                # The daemon's own files: there before any hostile request, or plainly named.
                own = top in top_level or (
                    re.fullmatch(r"[a-z][a-z0-9_.-]{0,40}", top) and ESCAPE not in top
                )
                assert own, f"unexpected entry {p}"
                # The daemon's own folders (journal, idempotency, backup mirror, index): their
                # names come from normalised agent ids and generated session ids at most.
                for part in rel[1:]:
                    stem = part.lstrip(".").split(".")[0]
                    assert AGENT_ID.fullmatch(stem), f"unexpected entry {p}"
                continue
            if len(rel) >= 2:
                assert AGENT_ID.fullmatch(rel[1]), f"agent folder {rel[1]!r} is not a normal id"
            if len(rel) >= 3:
                assert rel[2] == "sessions", f"unexpected entry {p}"
            if len(rel) == 4:
                assert ESCAPE not in name, f"a hostile id became a file name: {p}"
                assert (
                    SESSION_FILE.fullmatch(name)
                    or name == "sessions.json"
                    or name.startswith(("sessions.json.", ".sessions.json."))
                    or name == "archive"
                ), f"unexpected file in a sessions folder: {name!r}"
            if len(rel) >= 5:
                assert rel[3] == "archive", f"unexpected entry {p}"


def test_ids_with_dot_dot_slash_and_nul_never_become_paths(daemon: Daemon) -> None:
    workdir_before = set(os.listdir(daemon.workdir))
    conn = daemon.raw(timeout=30)
    assert "result" in conn.call("message.ingest", ingest_params("42", "benign"))
    top_level = set(os.listdir(daemon.state_dir))
    requests = hostile_requests()
    rids = [conn.send_request("message.ingest", p) for p in requests]
    answers = {}
    for _ in rids:
        a = conn.read()
        answers[a["id"]] = a
    stored = 0
    for rid, params in zip(rids, requests, strict=True):
        a = answers[rid]
        if "error" in a:
            assert a["error"]["code"] == -32602, (params, a)
            assert a["error"]["data"]["field"] in params, (params, a)
        else:
            stored += 1
            key = a["result"]["sessionKey"]
            assert key.startswith("agent:")
            assert "\x00" not in key and "\n" not in key
    assert stored > len(requests) // 2, "most hostile ids should be stored under a safe key"
    assert conn.call("status")["result"]["storage"] == "ok"
    assert daemon.stop() == 0
    check_layout(daemon.state_dir, top_level)
    for p in (Path("/tmp") / ESCAPE, daemon.workdir / ESCAPE, daemon.state_dir.parent / ESCAPE):
        assert not p.exists(), f"{p} was created"
    created_outside = set(os.listdir(daemon.workdir)) - workdir_before
    assert created_outside <= {"daemon-1.out", "daemon-1.err"}, created_outside
    # Everything stored is readable again, entry by entry.
    for agent_dir in (daemon.state_dir / "agents").iterdir():
        for path in (agent_dir / "sessions").glob("*.jsonl"):
            read_transcript(path)


# ---------------------------------------------------------------------------------------------
# Reads: sessions.history, sessions.get, sessions.list, message.append


def texts(entries: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in entries:
        content = e["message"]["content"]
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content)
        out.append(content)
    return out


def test_history_pages_newest_first_back_to_the_start(daemon: Daemon) -> None:
    with daemon.client() as c:
        acks = [c.call("message.ingest", ingest_params("42", f"t{i}")) for i in range(25)]
        key = acks[0]["sessionKey"]
        pages = []
        before = None
        for _ in range(5):
            params: dict[str, Any] = {"sessionKey": key, "limit": 10}
            if before is not None:
                params["before"] = before
            page = c.call("sessions.history", params)
            assert page["sessionKey"] == key and page["sessionId"] == acks[0]["sessionId"]
            pages.append(page["entries"])
            before = page["before"]
            if before is None:
                break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert texts([e for p in pages for e in p]) == [f"t{i}" for i in reversed(range(25))]
    assert [e["id"] for p in pages for e in p] == [a["entryId"] for a in reversed(acks)]
    daemon.stop()
    stored = read_transcript(daemon.sessions_dir() / f"{acks[0]['sessionId']}.jsonl")[1:]
    assert [e for p in pages for e in p] == list(reversed(stored)), "entries come as stored"


def test_history_by_session_id_matches_history_by_key(daemon: Daemon) -> None:
    ack = daemon.call("message.ingest", ingest_params("42", "hello"))
    by_key = daemon.call("sessions.history", {"sessionKey": ack["sessionKey"]})
    by_id = daemon.call("sessions.history", {"sessionId": ack["sessionId"]})
    assert by_key == by_id
    assert by_key["before"] is None
    assert [e["id"] for e in by_key["entries"]] == [ack["entryId"]]


def test_sessions_get_by_key_and_by_id(daemon: Daemon) -> None:
    ack = daemon.call("message.ingest", ingest_params("42", "hello"))
    by_key = daemon.call("sessions.get", {"sessionKey": ack["sessionKey"]})
    by_id = daemon.call("sessions.get", {"sessionId": ack["sessionId"]})
    assert by_key == by_id
    assert by_key["sessionKey"] == ack["sessionKey"]
    assert by_key["sessionId"] == ack["sessionId"]
    assert isinstance(by_key["updatedAt"], int)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("sessions.get", {"sessionKey": "agent:main:telegram:direct:nobody"}),
        ("sessions.get", {"sessionId": "00000000-0000-4000-8000-000000000000"}),
        ("sessions.history", {"sessionKey": "agent:main:nobody"}),
        ("sessions.history", {"sessionId": "00000000-0000-4000-8000-000000000000"}),
        (
            "message.append",
            {"sessionKey": "agent:main:nobody", "message": {"role": "assistant", "content": "x"}},
        ),
        ("sessions.get", {"sessionKey": "not-a-key"}),
    ],
    ids=["get-key", "get-id", "history-key", "history-id", "append-key", "get-malformed-key"],
)
def test_an_unknown_session_is_not_found(
    served: Daemon, method: str, params: dict[str, Any]
) -> None:
    served.call("message.ingest", ingest_params("42", "hello"))
    with pytest.raises(RpcError) as e:
        served.call(method, params)
    assert e.value.code == 1003


def test_sessions_list_with_active_minutes_leaves_out_idle_sessions(daemon: Daemon) -> None:
    # With the default dmScope (main) a direct message goes to agent:main:main.
    dm = daemon.call("message.ingest", ingest_params("42", "hello"))
    grp = daemon.call(
        "message.ingest",
        {"channel": "telegram", "chatType": "group", "peer": "1", "groupId": "-100", "text": "x"},
    )
    assert dm["sessionKey"] == "agent:main:main" != grp["sessionKey"]
    assert daemon.stop() == 0
    # Make the group session two hours idle, as an OpenClaw state folder might hold it.
    registry_file = daemon.sessions_dir() / "sessions.json"
    doc = orjson.loads(registry_file.read_bytes())
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    for field in ("updatedAt", "lastInteractionAt"):
        doc[grp["sessionKey"]][field] = two_hours_ago
    registry_file.write_bytes(orjson.dumps(doc))
    daemon.restart()
    everything = daemon.call("sessions.list", {})["sessions"]
    assert {s["sessionKey"] for s in everything} == {dm["sessionKey"], grp["sessionKey"]}
    assert everything[0]["sessionKey"] == dm["sessionKey"], "newest first"
    active = daemon.call("sessions.list", {"activeMinutes": 60})["sessions"]
    assert [s["sessionKey"] for s in active] == [dm["sessionKey"]]
    assert {s["sessionId"] for s in everything} == {dm["sessionId"], grp["sessionId"]}
    limited = daemon.call("sessions.list", {"limit": 1})["sessions"]
    assert len(limited) == 1


def test_an_appended_assistant_message_shows_in_history(daemon: Daemon) -> None:
    ack = daemon.call("message.ingest", ingest_params("42", "question"))
    reply = {
        "role": "assistant",
        "content": [{"type": "text", "text": "answer"}],
        "usage": {"input": 10, "output": 3, "totalTokens": 13},
    }
    appended = daemon.call("message.append", {"sessionKey": ack["sessionKey"], "message": reply})
    assert re.fullmatch(r"[0-9a-f]{8}", appended["entryId"])
    history = daemon.call("sessions.history", {"sessionKey": ack["sessionKey"]})["entries"]
    assert [e["id"] for e in history] == [appended["entryId"], ack["entryId"]]
    newest = history[0]
    assert newest["parentId"] == ack["entryId"]
    assert newest["message"]["role"] == "assistant"
    assert newest["message"]["content"] == reply["content"]
    daemon.stop()
    lines = read_transcript(daemon.sessions_dir() / f"{ack['sessionId']}.jsonl")
    assert lines[-1]["id"] == appended["entryId"]


# ---------------------------------------------------------------------------------------------
# SIGTERM with requests in flight


def test_sigterm_answers_what_is_in_flight_and_loses_no_acknowledged_message(
    daemon: Daemon,
) -> None:
    senders = [PipelinedSender(daemon.socket, f"s{i}", peers=7) for i in range(3)]
    for s in senders:
        s.start()
    deadline = time.monotonic() + 10
    while sum(len(s.acked) for s in senders) < 300:
        assert time.monotonic() < deadline, "the daemon acknowledged too little"
        time.sleep(0.01)
    assert daemon.stop() == 0
    for s in senders:
        s.join(20)
        assert not s.is_alive()
        assert s.failure is None, s.failure
    stored: Counter[str] = Counter()
    for lines in daemon.transcripts().values():
        stored.update(message_ids(lines))
    for s in senders:
        for mid in s.acked:
            assert stored[mid] == 1, f"acknowledged {mid} is stored {stored[mid]} times"
        for mid, err in s.errors.items():
            assert err["code"] == 1004, err
            assert stored[mid] == 0, f"{mid} was answered 'nothing stored' but is stored"
    assert all(n == 1 for n in stored.values())
    # Draining means answering: whatever the daemon stored, it also acknowledged.
    acked = {mid for s in senders for mid in s.acked}
    unanswered = sorted(set(stored) - acked)
    assert not unanswered, f"{len(unanswered)} stored messages never got their answer"
