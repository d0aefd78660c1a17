"""OpenClaw's chat commands on a real daemon: /stop (a custom entry and a `session.stop` event, no
message stored) and /context list vs /context detail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from e2e.conftest import Launch
from e2e.harness import ingest_params

KEY = "agent:main:telegram:direct:1"
CONFIG = {"session": {"dmScope": "per-channel-peer"}}


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_stop_is_recorded_published_and_never_stored_as_a_message(launch: Launch) -> None:
    d = launch(CONFIG)
    sub = d.raw()
    sub.send_request("events.subscribe", {"events": ["session.stop"]})
    assert sub.read()["result"]["subscribed"] == ["session.stop"]
    c = d.client()
    first = c.call("message.ingest", ingest_params("1", "write me a long essay"))
    ack = c.call("message.ingest", ingest_params("1", "/stop", messageId="tg-9"))
    assert ack["sessionId"] == first["sessionId"] and ack["created"] is False
    assert ack["command"]["name"] == "stop" and "abort" in ack["command"]["reply"]
    note = sub.read()
    assert note["method"] == "session.stop"
    assert note["params"] == {
        "agentId": "main",
        "sessionKey": KEY,
        "sessionId": first["sessionId"],
        "entryId": ack["entryId"],
        "channel": "telegram",
        "messageId": "tg-9",
    }
    path = Path(c.call("sessions.get", {"sessionKey": KEY})["sessionFile"])
    stored = lines(path)
    stop = stored[-1]
    assert stop["type"] == "custom" and stop["customType"] == "sessiond.stop"
    assert stop["id"] == ack["entryId"] and stop["origin"]["messageId"] == "tg-9"
    texts = [e["message"]["content"] for e in stored if e.get("type") == "message"]
    assert texts == [[{"type": "text", "text": "write me a long essay"}]]
    history = c.call("sessions.history", {"sessionKey": KEY, "includeTools": False})
    assert [e["type"] for e in history["entries"]] == ["custom", "message"]
    # The adapter's retry after a crash is still recognised: the /stop's id is in its origin.
    d.kill()
    d.start()
    again = d.client().call("message.ingest", ingest_params("1", "/stop", messageId="tg-9"))
    assert again["duplicate"] is True and again["entryId"] == ack["entryId"]
    assert len(lines(path)) == len(stored)


def test_context_list_and_detail(launch: Launch) -> None:
    d = launch(CONFIG)
    c = d.client()
    c.call("message.ingest", ingest_params("1", "a" * 400))
    c.call(
        "message.append",
        {"sessionKey": KEY, "message": {"role": "assistant", "content": "b" * 200}},
    )
    listed = c.call("message.ingest", ingest_params("1", "/context list"))["command"]["reply"]
    assert f"Context of {KEY}" in listed and "/context detail" in listed
    detail = c.call("message.ingest", ingest_params("1", "/context detail"))["command"]["reply"]
    rows = detail.splitlines()
    assert rows[0].startswith(f"Context of {KEY}")
    assert "100" in rows[1] and "user" in rows[1]  # 400 characters: 100 tokens
    assert "50" in rows[2] and "assistant" in rows[2]
    assert "/context list" in rows[3] and "/context detail" in rows[4]
    total = sum(int(r.split()[0]) for r in rows[1:])
    assert f"about {total} tokens in 4 entries" in rows[0]
