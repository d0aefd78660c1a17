"""Session lifecycle end to end: resets keep the triggering message, archives keep every byte,
and an OpenClaw folder's own archives become readable history."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from e2e.conftest import Launch
from e2e.harness import ingest_params, read_transcript

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "openclaw-2026.6"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_reset_trigger_keeps_the_message_in_the_new_session(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-channel-peer"}})
    c = d.client()
    first = c.call("message.ingest", ingest_params("7", "remember the number 4711"))
    reset = c.call("message.ingest", ingest_params("7", "/new what did I say?"))
    assert reset["created"] and reset["reset"]["reason"] == "new"
    assert reset["reset"]["previousSessionId"] == first["sessionId"]
    assert "New session" in reset["command"]["reply"]
    hist = c.call("sessions.history", {"sessionKey": first["sessionKey"]})
    texts = [
        e["message"]["content"][0]["text"] for e in hist["entries"] if e.get("type") == "message"
    ]
    assert texts == ["/new what did I say?"]
    prev = c.call("sessions.history", {"sessionKey": first["sessionKey"], "previous": 1})
    assert prev["sessionId"] == first["sessionId"]
    assert "remember the number 4711" in [
        e["message"]["content"][0]["text"] for e in prev["entries"] if e.get("type") == "message"
    ]
    archived = c.call("sessions.archived", {"sessionKey": first["sessionKey"]})["sessions"]
    assert [a["sessionId"] for a in archived] == [first["sessionId"]]
    rec = archived[0]
    assert rec["reason"] == "new" and rec["successor"] == reset["sessionId"]
    assert d.stop() == 0
    moved = d.sessions_dir() / "archive" / f"{first['sessionId']}.jsonl"
    assert moved.exists() and not (d.sessions_dir() / moved.name).exists()
    assert sha(moved) == rec["sha256"]
    last = read_transcript(moved)[-1]
    assert (
        last["customType"] == "sessiond.closed" and last["data"]["successor"] == reset["sessionId"]
    )


def test_an_idle_reset_keeps_the_triggering_message(launch: Launch) -> None:
    d = launch(
        {"session": {"dmScope": "per-channel-peer", "reset": {"mode": "idle", "idleMinutes": 5}}}
    )
    c = d.client()
    first = c.call("message.ingest", ingest_params("8", "before the pause"))
    assert d.stop() == 0
    # Make the session look 10 minutes quiet, as a clock would.
    reg_path = d.sessions_dir() / "sessions.json"
    reg = json.loads(reg_path.read_text())
    for entry in reg.values():
        entry["lastInteractionAt"] -= 10 * 60_000
        entry["sessionStartedAt"] -= 10 * 60_000
    reg_path.write_text(json.dumps(reg))
    d.start()
    # The scheduler may archive it first (no message lost either way); then a new one begins.
    second = d.client().call("message.ingest", ingest_params("8", "after the pause"))
    assert second["sessionId"] != first["sessionId"]
    hist = d.client().call("sessions.history", {"sessionKey": second["sessionKey"]})
    texts = [
        e["message"]["content"][0]["text"] for e in hist["entries"] if e.get("type") == "message"
    ]
    assert texts == ["after the pause"]
    archived = d.client().call("sessions.archived", {})["sessions"]
    assert archived[0]["sessionId"] == first["sessionId"] and archived[0]["reason"] == "idle"


def test_sessions_reset_method_starts_a_new_session(launch: Launch) -> None:
    d = launch()
    c = d.client()
    first = c.call("message.ingest", ingest_params("9", "hi"))
    res = c.call("sessions.reset", {"sessionKey": first["sessionKey"]})
    assert res["previousSessionId"] == first["sessionId"] and res["sessionId"]
    got = c.call("sessions.get", {"sessionKey": first["sessionKey"]})
    assert got["sessionId"] == res["sessionId"]
    with pytest.raises(Exception, match="1003"):
        c.call("sessions.reset", {"sessionKey": "agent:main:nope"})


def test_events_subscribe_streams_resets(launch: Launch) -> None:
    d = launch()
    sub = d.raw()
    sub.send_request("events.subscribe", {"events": ["session.created", "session.reset"]})
    assert sub.read()["result"]["subscribed"] == ["session.created", "session.reset"]
    c = d.client()
    c.call("message.ingest", ingest_params("5", "hello"))
    c.call("message.ingest", ingest_params("5", "/reset"))
    seen = [sub.read()["method"] for _ in range(3)]
    assert seen == ["session.created", "session.created", "session.reset"]


def openclaw_config() -> dict[str, Any]:
    src = json.loads((FIXTURE / "openclaw.json").read_text())
    return {
        "agents": {"list": src["agents"]["list"]},
        "bindings": src["bindings"],
        "session": {"dmScope": "per-channel-peer", "reset": {"mode": "none"}},
    }


def test_an_openclaw_folder_works_in_place_and_its_archives_are_adopted(
    launch: Launch, tmp_path: Path
) -> None:
    state = tmp_path / "oc"
    shutil.copytree(FIXTURE, state)
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    d = launch(openclaw_config(), state_dir=state)
    c = d.client()
    archived = c.call("sessions.archived", {"limit": 100})["sessions"]
    expected = [s for s in manifest["sessions"] if s["status"] == "archived"]
    assert sorted(a["sessionId"] for a in archived) == sorted(s["sessionId"] for s in expected)
    for s in expected:
        a = next(a for a in archived if a["sessionId"] == s["sessionId"])
        assert a["reason"] == s["archiveReason"]
        assert a["sha256"] == s["sha256"], "archives are moved byte for byte"
        assert a["messages"] == s["messageCount"]
        moved = state / "agents" / s["agentId"] / "sessions" / "archive" / a["file"]
        assert sha(moved) == s["sha256"]
        assert not (state / s["file"]).exists()
    resets = {a["sessionId"]: a for a in archived if a["reason"] == "reset"}
    assert resets["fccd19f9-c7f3-4884-bccc-0b75fac2dc1f"]["sessionKey"] == "agent:main:main"
    # previous=1 reads the session a reset replaced, adopted from OpenClaw's own file.
    key = "agent:main:telegram:direct:123456789"
    prev = c.call("sessions.history", {"sessionKey": key, "previous": 1, "limit": 1000})
    assert prev["sessionId"] == "6120f99d-1354-4381-bf8d-f995d25a32b4"
    msgs = [e for e in prev["entries"] if e.get("type") == "message"]
    assert len(msgs) == 16
    # Active sessions continue in place, chained to OpenClaw's last entry.
    before = read_transcript(
        state / "agents/main/sessions/70de30ac-307c-4f24-8026-fe134613daac.jsonl"
    )
    ack = c.call("message.ingest", ingest_params("123456789", "back again", messageId="oc-1"))
    assert ack["sessionId"] == "70de30ac-307c-4f24-8026-fe134613daac" and not ack["created"]
    assert d.stop() == 0
    after = read_transcript(
        state / "agents/main/sessions/70de30ac-307c-4f24-8026-fe134613daac.jsonl"
    )
    assert after[: len(before)] == before
    assert after[-1]["parentId"] == before[-1]["id"]
    assert after[-1]["message"]["content"] == [{"type": "text", "text": "back again"}]
    reg = orjson.loads((state / "agents/main/sessions/sessions.json").read_bytes())
    assert "skillsSnapshot" in reg[key], "fields sessiond does not know are kept"


def test_chat_commands_reply_and_session_switching(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-channel-peer"}})
    c = d.client()
    a = c.call("message.ingest", ingest_params("11", "hello from a"))
    b = c.call("message.ingest", ingest_params("12", "hello from b"))
    status = c.call("message.ingest", ingest_params("11", "/status"))["command"]
    assert status["name"] == "status"
    assert a["sessionKey"] in status["reply"] and "next reset" in status["reply"]
    listing = c.call("message.ingest", ingest_params("11", "/sessions"))["command"]["reply"]
    assert a["sessionKey"] in listing and b["sessionKey"] in listing
    # /session <key>: this chat now writes to b's session, until /session alone.
    switched = c.call("message.ingest", ingest_params("11", f"/session {b['sessionKey']}"))
    assert "now writes to" in switched["command"]["reply"]
    routed = c.call("message.ingest", ingest_params("11", "this goes to b"))
    assert routed["sessionKey"] == b["sessionKey"]
    back = c.call("message.ingest", ingest_params("11", "/session"))
    assert "back on its own session" in back["command"]["reply"]
    home = c.call("message.ingest", ingest_params("11", "home again"))
    assert home["sessionKey"] == a["sessionKey"]
    model = c.call("message.ingest", ingest_params("11", "/new openai/gpt-4o"))
    assert model["reset"]["reason"] == "new"
    entry = c.call("sessions.get", {"sessionKey": a["sessionKey"]})
    assert (entry["providerOverride"], entry["modelOverride"]) == ("openai", "gpt-4o")
