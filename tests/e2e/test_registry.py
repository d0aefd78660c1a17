"""sessions.json is derived data (SPEC 2): a missing or unreadable one is rebuilt from the
transcripts."""

from __future__ import annotations

from pathlib import Path

from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params, mode

GARBAGE = b"\x00\xff{ not json at all \x89PNG\r\n\x1a\n" * 20


def fill(d: Daemon) -> set[tuple[str, str]]:
    """Five sessions of a few messages each; returns their (key, id) pairs as listed."""
    with d.client() as c:
        for i in range(15):
            c.call("message.ingest", ingest_params(f"{i % 5}", f"m{i}", messageId=f"r{i}"))
        c.call(
            "message.ingest",
            {"channel": "slack", "chatType": "channel", "peer": "U1", "groupId": "C9", "text": "x"},
        )
    return listed(d)


def listed(d: Daemon) -> set[tuple[str, str]]:
    return {(s["sessionKey"], s["sessionId"]) for s in d.call("sessions.list", {})["sessions"]}


def test_a_missing_registry_is_rebuilt_from_the_transcripts(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-peer"}})
    before = fill(d)
    assert len(before) == 6
    assert d.stop() == 0
    registry = d.sessions_dir() / "sessions.json"
    kept = d.workdir / "moved-away"
    kept.mkdir()
    registry.rename(kept / "sessions.json")
    d.restart()
    assert listed(d) == before
    # The rebuilt registry serves the sessions as before: new messages land in the same files.
    ack = d.call("message.ingest", ingest_params("0", "after the rebuild", messageId="r0"))
    assert ack["duplicate"] is True
    ack = d.call("message.ingest", ingest_params("0", "after the rebuild"))
    assert (ack["sessionKey"], ack["sessionId"]) in before
    assert d.stop() == 0
    assert set(d.registry()) == {k for k, _ in before}
    assert mode(registry) == 0o600


def test_a_corrupt_registry_is_kept_aside_and_rebuilt(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-peer"}})
    before = fill(d)
    assert d.stop() == 0
    registry = d.sessions_dir() / "sessions.json"
    registry.write_bytes(GARBAGE)
    d.restart()
    assert listed(d) == before
    aside = sorted(d.sessions_dir().glob("sessions.json.corrupt-*"))
    assert len(aside) == 1, sorted(p.name for p in d.sessions_dir().iterdir())
    assert aside[0].read_bytes() == GARBAGE
    assert d.stop() == 0
    entries = d.registry()
    assert {(k, e["sessionId"]) for k, e in entries.items()} == before
    for e in entries.values():
        assert Path(e["sessionFile"]).parent == d.sessions_dir()
        assert isinstance(e["updatedAt"], int)


def test_a_registry_that_is_json_but_not_an_object_is_rebuilt(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-peer"}})
    before = fill(d)
    assert d.stop() == 0
    (d.sessions_dir() / "sessions.json").write_bytes(b"[1, 2, 3]\n")
    d.restart()
    assert listed(d) == before


def test_a_registry_entry_whose_transcript_was_moved_away_does_not_stop_the_daemon(
    launch: Launch,
) -> None:
    d = launch({"session": {"dmScope": "per-peer"}})
    before = fill(d)
    assert d.stop() == 0
    key, sid = sorted(before)[0]
    kept = d.workdir / "moved-away"
    kept.mkdir()
    (d.sessions_dir() / f"{sid}.jsonl").rename(kept / f"{sid}.jsonl")
    d.restart()
    others = before - {(key, sid)}
    assert others <= listed(d)
    for k, _ in others:
        assert d.call("sessions.history", {"sessionKey": k})["entries"]
