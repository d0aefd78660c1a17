"""message.ingest end to end: OpenClaw v3 transcripts, the registry, file modes, idempotency."""

from __future__ import annotations

import stat
import time
from collections import Counter
from pathlib import Path

import pytest

from e2e.conftest import Launch
from e2e.harness import Daemon, check_v3, ingest_params, message_ids, mode, read_transcript

PER_CHANNEL_PEER = "{session: {dmScope: 'per-channel-peer'}}"
CHANNELS = ("telegram", "whatsapp")


def send_pipelined(d: Daemon, requests: list[dict]) -> list[dict]:
    """Send every message.ingest at once on one connection; return the answers by request."""
    conn = d.raw(timeout=30)
    ids = [conn.send_request("message.ingest", p) for p in requests]
    answers = {}
    for _ in ids:
        a = conn.read()
        answers[a["id"]] = a
    return [answers[i] for i in ids]


def fifty_peers_thousand_messages() -> list[dict]:
    return [
        ingest_params(
            f"{100_000 + i % 50}",
            f"message {i}",
            channel=CHANNELS[i % 2],
            messageId=f"m{i}",
        )
        for i in range(1000)
    ]


@pytest.mark.slow
def test_thousand_messages_for_fifty_peers_give_fifty_v3_transcripts(launch: Launch) -> None:
    d = launch(PER_CHANNEL_PEER)
    requests = fifty_peers_thousand_messages()
    answers = send_pipelined(d, requests)
    assert all("result" in a for a in answers), [a for a in answers if "result" not in a][:3]
    assert mode(d.socket) == 0o660 and stat.S_ISSOCK(Path(d.socket).lstat().st_mode)
    assert d.stop() == 0

    expected_keys = {f"agent:main:{CHANNELS[p % 2]}:direct:{100_000 + p}" for p in range(50)}
    transcripts = d.transcripts()
    assert len(transcripts) == 50
    by_key = {}
    for path, lines in transcripts.items():
        check_v3(path, lines)
        assert all(e["type"] == "message" for e in lines[1:])
        by_key[lines[0]["sessionKey"]] = (path, lines)
    assert set(by_key) == expected_keys
    for i, req in enumerate(requests):
        ack = answers[i]["result"]
        path, lines = by_key[f"agent:main:{req['channel']}:direct:{req['peer']}"]
        assert ack["sessionKey"] == lines[0]["sessionKey"]
        assert ack["sessionId"] == path.stem
    for _path, lines in by_key.values():
        assert len(lines) == 1 + 20
        # Entries are stored in the order they were sent on the connection.
        nums = [int(m[1:]) for m in message_ids(lines)]
        assert nums == sorted(nums)

    registry = d.registry()
    assert set(registry) == expected_keys
    for key, entry in registry.items():
        path, lines = by_key[key]
        assert entry["sessionId"] == path.stem
        assert Path(entry["sessionFile"]).name == path.name
        for field in ("updatedAt", "sessionStartedAt", "lastInteractionAt"):
            v = entry[field]
            assert isinstance(v, int) and not isinstance(v, bool), (field, v)
            assert 1_600_000_000_000 < v < 4_000_000_000_000, (field, v)
        assert entry["sessionStartedAt"] <= entry["lastInteractionAt"] <= entry["updatedAt"]
        assert entry["chatType"] == "direct"
        assert isinstance(entry["origin"], dict)

    for p in d.state_dir.rglob("*"):
        if p.is_dir():
            assert mode(p) == 0o700, f"{p} has mode {oct(mode(p))}"
        elif p.is_file():
            assert mode(p) == 0o600, f"{p} has mode {oct(mode(p))}"
    assert mode(d.state_dir) == 0o700


def test_registry_is_written_within_the_checkpoint_interval(launch: Launch) -> None:
    d = launch({"daemon": {"checkpointIntervalMs": 200}})
    ack = d.call("message.ingest", ingest_params("42", "hello"))
    registry_file = d.sessions_dir() / "sessions.json"
    deadline = time.monotonic() + 5
    while not (registry_file.exists() and ack["sessionKey"] in d.registry()):
        assert time.monotonic() < deadline, "sessions.json was not written while running"
        time.sleep(0.05)
    entry = d.registry()[ack["sessionKey"]]
    assert entry["sessionId"] == ack["sessionId"]
    assert mode(registry_file) == 0o600


def test_ingested_text_is_stored_as_text_content_blocks(daemon: Daemon) -> None:
    """SPEC 2: message entries carry content as [{"type": "text", "text": ...}] blocks."""
    ack = daemon.call("message.ingest", ingest_params("42", "hello there"))
    daemon.stop()
    lines = read_transcript(daemon.sessions_dir() / f"{ack['sessionId']}.jsonl")
    msg = lines[-1]["message"]
    assert msg["role"] == "user"
    assert msg["content"] == [{"type": "text", "text": "hello there"}]


def test_origin_carries_channel_sender_and_message_id(daemon: Daemon) -> None:
    params = ingest_params("42", "hi", messageId="abc-1", senderName="Ada")
    ack = daemon.call("message.ingest", params)
    daemon.stop()
    entry = read_transcript(daemon.sessions_dir() / f"{ack['sessionId']}.jsonl")[-1]
    assert entry["id"] == ack["entryId"]
    origin = entry["origin"]
    assert origin["channel"] == "telegram"
    assert origin["messageId"] == "abc-1"
    assert origin["peer"] == "42"


# ---------------------------------------------------------------------------------------------
# Idempotency


def assert_stored_once(d: Daemon, session_id: str, message_id: str) -> None:
    lines = read_transcript(d.sessions_dir() / f"{session_id}.jsonl")
    counts = Counter(message_ids(lines))
    assert counts[message_id] == 1, f"{message_id} is stored {counts[message_id]} times"


def test_a_repeated_message_id_is_a_duplicate_with_the_first_answer(daemon: Daemon) -> None:
    params = ingest_params("42", "hello", messageId="tg-1001")
    with daemon.client() as c:
        first = c.call("message.ingest", params)
        second = c.call("message.ingest", params)
        other = c.call("message.ingest", {**params, "messageId": "tg-1002"})
    assert first["duplicate"] is False
    assert second["duplicate"] is True
    assert (second["sessionKey"], second["sessionId"], second["entryId"]) == (
        first["sessionKey"],
        first["sessionId"],
        first["entryId"],
    )
    assert other["duplicate"] is False and other["entryId"] != first["entryId"]
    daemon.stop()
    assert_stored_once(daemon, first["sessionId"], "tg-1001")


def test_the_same_message_id_on_another_channel_is_not_a_duplicate(daemon: Daemon) -> None:
    a = daemon.call("message.ingest", ingest_params("42", "x", messageId="7"))
    b = daemon.call("message.ingest", ingest_params("42", "x", channel="discord", messageId="7"))
    assert a["duplicate"] is False and b["duplicate"] is False


def test_pipelined_copies_of_one_message_are_stored_once(daemon: Daemon) -> None:
    params = ingest_params("42", "hello", messageId="burst")
    answers = send_pipelined(daemon, [params] * 20)
    results = [a["result"] for a in answers]
    assert sum(not r["duplicate"] for r in results) == 1
    assert len({r["entryId"] for r in results}) == 1
    daemon.stop()
    assert_stored_once(daemon, results[0]["sessionId"], "burst")


@pytest.mark.parametrize("ending", ["sigterm", "sigkill"])
def test_a_repeated_message_id_is_a_duplicate_after_a_restart(launch: Launch, ending: str) -> None:
    # A long checkpoint interval: after SIGKILL the id is known only through the journal.
    d = launch({"daemon": {"checkpointIntervalMs": 60_000}})
    params = ingest_params("42", "hello", messageId="tg-2001")
    first = d.call("message.ingest", params)
    if ending == "sigterm":
        assert d.stop() == 0
    else:
        d.kill()
    d.restart()
    again = d.call("message.ingest", params)
    assert again["duplicate"] is True
    assert again["entryId"] == first["entryId"]
    assert again["sessionId"] == first["sessionId"]
    assert d.stop() == 0
    assert_stored_once(d, first["sessionId"], "tg-2001")
