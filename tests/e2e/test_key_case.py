"""Signal group keys keep their case, and sessions stored under the lowercased keys an earlier
sessiond wrote are renamed, not orphaned (daemon/keymigrate.py)."""

from __future__ import annotations

import json

from e2e.conftest import Launch
from e2e.harness import ingest_params

GROUP = "VWATodkf2hc8zdOS76q9Tb0+5Bi522E03qLdaQ/9ypg="


def group_message(group: str, text: str, message_id: str) -> dict[str, object]:
    return ingest_params(
        "+15550001", text, channel="signal", chatType="group", groupId=group, messageId=message_id
    )


def test_a_lowercased_signal_group_key_is_renamed_and_its_session_continues(
    launch: Launch,
) -> None:
    d = launch({"session": {"dmScope": "per-channel-peer"}})
    c = d.client()
    first = c.call("message.ingest", group_message(GROUP, "hello group", "m1"))
    assert first["sessionKey"] == f"agent:main:signal:group:{GROUP}"
    other = c.call("message.ingest", group_message(GROUP.lower(), "another group", "m2"))
    assert other["sessionId"] != first["sessionId"], "two groups, two sessions"
    assert d.stop() == 0
    # What an earlier sessiond wrote for the first group: its session under the lowercased key
    # (the all-lowercase group did not exist then).
    path = d.sessions_dir() / "sessions.json"
    reg = json.loads(path.read_text())
    folded = f"agent:main:signal:group:{GROUP.lower()}"
    assert set(reg) == {first["sessionKey"], folded}
    reg[folded] = reg.pop(first["sessionKey"])
    path.write_text(json.dumps(reg))
    d.start()
    (restored,) = [e for e in d.logs() if e["event"] == "keys.case_restored"]
    assert restored["keys"] == {folded: first["sessionKey"]}
    on_disk = json.loads(path.read_text())
    assert set(on_disk) == {first["sessionKey"]}
    assert on_disk[first["sessionKey"]]["sessionId"] == first["sessionId"]
    again = d.client().call("message.ingest", group_message(GROUP, "still here", "m3"))
    assert (again["sessionId"], again["created"]) == (first["sessionId"], False)
    # A restart renames nothing more.
    assert d.stop() == 0
    d.start()
    assert not [e for e in d.logs() if e["event"] == "keys.case_restored"]
    assert d.stop() == 0


def test_a_lowercased_key_without_proof_of_case_is_kept(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-channel-peer"}})
    first = d.client().call("message.ingest", group_message(GROUP, "hello", "m1"))
    assert d.stop() == 0
    path = d.sessions_dir() / "sessions.json"
    reg = json.loads(path.read_text())
    entry = reg.pop(first["sessionKey"])
    for field in ("groupId", "lastTo", "deliveryContext", "origin"):
        entry.pop(field, None)
    folded = f"agent:main:signal:group:{GROUP.lower()}"
    reg[folded] = entry
    path.write_text(json.dumps(reg))
    d.start()
    assert not [e for e in d.logs() if e["event"] == "keys.case_restored"]
    listed = d.client().call("sessions.list", {})["sessions"]
    assert [s["sessionKey"] for s in listed] == [folded], "kept, listed, readable"
    assert d.stop() == 0
