"""sessions.json's change log (daemon/store/registry_log.py): a checkpoint logs the entries that
changed instead of rewriting every entry, and whoever loads the registry sees both."""

from __future__ import annotations

from pathlib import Path

import orjson

from daemon.store.registry import (
    SESSIONS_JSON,
    AgentRegistry,
    SessionState,
    load_agent,
    plan_writes,
    read_registry,
)
from daemon.store.registry_log import CHUNK, WritePolicy, log_path, serialize

ALWAYS_LOG = WritePolicy(
    always_below=0, log_share=float("inf"), busy_share=float("inf"), max_age=1e9
)


def registry(tmp_path: Path, n: int) -> AgentRegistry:
    folder = tmp_path / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    reg = AgentRegistry("main", folder)
    for i in range(n):
        add(reg, f"agent:main:k{i}", f"s{i}")
    return reg


def add(reg: AgentRegistry, key: str, sid: str) -> SessionState:
    rel = f"agents/main/sessions/{sid}.jsonl"
    st = SessionState("main", key, sid, rel, reg.entry({"sessionId": sid, "updatedAt": 1}, key))
    reg.sessions[key] = st
    reg.changed(key)
    return st


def checkpoint(reg: AgentRegistry, policy: WritePolicy = ALWAYS_LOG, **kw: object) -> bool:
    """Plan and write one checkpoint; returns whether sessions.json was rewritten."""
    (plan,) = plan_writes([reg], [], [], policy, **kw)  # type: ignore[arg-type]
    plan[0].write(plan[1])
    return plan[1].full is not None


def on_disk(reg: AgentRegistry) -> dict[str, object]:
    return orjson.loads((reg.folder / SESSIONS_JSON).read_bytes())  # type: ignore[no-any-return]


def test_changed_entries_are_logged_and_sessions_json_stays_as_written(tmp_path: Path) -> None:
    reg = registry(tmp_path, 50)
    assert checkpoint(reg), "the first checkpoint writes sessions.json whole"
    written = (reg.folder / SESSIONS_JSON).read_bytes()
    reg.sessions["agent:main:k3"].entry.updated_at = 99  # the setter marks k3 changed
    gone = reg.sessions.pop("agent:main:k4")
    reg.changed(gone.session_key)
    add(reg, "agent:main:new", "snew")
    assert not checkpoint(reg)
    assert (reg.folder / SESSIONS_JSON).read_bytes() == written
    loaded, problem = load_agent(tmp_path, "main", reg.folder)
    assert problem is None
    assert loaded.sessions["agent:main:k3"].entry["updatedAt"] == 99
    assert "agent:main:k4" not in loaded.sessions
    assert loaded.sessions["agent:main:new"].session_id == "snew"
    assert len(loaded.sessions) == 50
    assert loaded.dirty, "logged changes are folded into sessions.json at start-up"
    doc, _ = read_registry(reg.folder / SESSIONS_JSON)
    assert doc is not None and set(doc) == set(loaded.sessions)


def test_a_later_rewrite_makes_the_old_log_stale(tmp_path: Path) -> None:
    reg = registry(tmp_path, 10)
    checkpoint(reg)
    reg.sessions["agent:main:k1"].entry.updated_at = 5
    checkpoint(reg)
    # Someone (OpenClaw, a restore) writes sessions.json: the log is not on top of it.
    (reg.folder / SESSIONS_JSON).write_bytes(orjson.dumps({"agent:main:x": {"sessionId": "x"}}))
    loaded, _ = load_agent(tmp_path, "main", reg.folder)
    assert set(loaded.sessions) == {"agent:main:x"}
    assert not loaded.dirty


def test_a_torn_last_frame_keeps_the_frames_before_it(tmp_path: Path) -> None:
    reg = registry(tmp_path, 10)
    checkpoint(reg)
    reg.sessions["agent:main:k1"].entry.updated_at = 5
    checkpoint(reg)
    reg.sessions["agent:main:k2"].entry.updated_at = 6
    checkpoint(reg)
    log = log_path(reg.folder / SESSIONS_JSON)
    log.write_bytes(log.read_bytes()[:-7])
    loaded, _ = load_agent(tmp_path, "main", reg.folder)
    assert loaded.sessions["agent:main:k1"].entry["updatedAt"] == 5
    assert loaded.sessions["agent:main:k2"].entry["updatedAt"] == 1


def test_a_log_begun_again_where_a_power_cut_lost_the_truncation_applies_no_stale_change(
    tmp_path: Path,
) -> None:
    """After sessions.json is rewritten, the log is begun again in place: truncated, a record
    naming the new sessions.json written, synced. A power cut before that sync may keep the
    record and lose the truncation: the old log's changes then follow a header that names the
    sessions.json they are not on top of. Applied, they would bring back a session the rewrite
    had removed (a closed session registered again: the power-loss simulation's seed 382835104)."""
    reg = registry(tmp_path, 10)
    checkpoint(reg)
    reg.sessions["agent:main:k3"].entry.updated_at = 5
    checkpoint(reg)  # the log: k3's entry
    log = log_path(reg.folder / SESSIONS_JSON)
    old = log.read_bytes()
    gone = reg.sessions.pop("agent:main:k3")  # closed by a reset, say
    reg.changed(gone.session_key)
    reg.changed()
    assert checkpoint(reg), "sessions.json rewritten without k3"
    reg.sessions["agent:main:k4"].entry.updated_at = 7
    checkpoint(reg)  # the log begun again on top of the new sessions.json
    data = log.read_bytes()
    length = int(data[: data.index(b"\n")].split(b"\t")[2])
    header = data[: data.index(b"\n") + 1 + length]
    assert len(header) < len(old)
    # The crash image: the new header's write survived, the truncation before it did not.
    log.write_bytes(header + old[len(header) :])
    loaded, problem = load_agent(tmp_path, "main", reg.folder)
    assert problem is None
    assert "agent:main:k3" not in loaded.sessions
    assert len(loaded.sessions) == 9


def test_the_log_is_folded_in_once_it_holds_a_share_of_the_file(tmp_path: Path) -> None:
    reg = registry(tmp_path, 40)
    policy = WritePolicy(always_below=0, log_share=0.25, max_age=1e9)
    assert checkpoint(reg, policy)
    rewrites = 0
    for i in range(40):
        reg.sessions[f"agent:main:k{i}"].entry.updated_at = 100 + i
        rewrites += checkpoint(reg, policy)
    assert 1 <= rewrites < 20
    loaded, _ = load_agent(tmp_path, "main", reg.folder)
    assert all(loaded.sessions[f"agent:main:k{i}"].entry["updatedAt"] == 100 + i for i in range(40))


def test_at_rest_or_at_the_final_checkpoint_sessions_json_catches_up(tmp_path: Path) -> None:
    reg = registry(tmp_path, 10)
    checkpoint(reg)
    reg.sessions["agent:main:k1"].entry.updated_at = 5
    assert not checkpoint(reg)
    assert plan_writes([reg], [], [], ALWAYS_LOG) == [], "nothing changed, nothing is due yet"
    assert checkpoint(reg, final=True)
    assert on_disk(reg)["agent:main:k1"] == {"sessionId": "s1", "updatedAt": 5}
    reg.sessions["agent:main:k3"].entry.updated_at = 7
    assert checkpoint(reg, final=True), "changed, with nothing logged yet: rewritten at a stop"
    assert on_disk(reg)["agent:main:k3"] == {"sessionId": "s3", "updatedAt": 7}
    reg.sessions["agent:main:k2"].entry.updated_at = 6
    assert not checkpoint(reg)
    old = WritePolicy(always_below=0, log_share=float("inf"), busy_share=float("inf"), max_age=0.0)
    assert checkpoint(reg, old), "a log older than max_age is folded in even at rest"
    assert on_disk(reg)["agent:main:k2"] == {"sessionId": "s2", "updatedAt": 6}


def test_sessions_of_unwritten_batches_are_left_out_until_they_are_durable(
    tmp_path: Path,
) -> None:
    reg = registry(tmp_path, 5)
    checkpoint(reg)
    closed = reg.sessions.pop("agent:main:k1")
    reg.changed("agent:main:k1")
    created = add(reg, "agent:main:k1", "s1b")  # a reset, in a batch not yet written
    (plan,) = plan_writes([reg], [created], [closed], ALWAYS_LOG)
    assert plan[1].changes == [("agent:main:k1", closed.entry)]
    plan[0].write(plan[1])
    assert reg.changed_keys == {"agent:main:k1"}, "written again once the batch is durable"
    (plan,) = plan_writes([reg], [], [], ALWAYS_LOG)
    plan[0].write(plan[1])
    loaded, _ = load_agent(tmp_path, "main", reg.folder)
    assert loaded.sessions["agent:main:k1"].session_id == "s1b"


def test_offline_readers_see_the_logged_changes(tmp_path: Path) -> None:
    """`backup verify`, the mirror sweep and the search index read the registry without the
    daemon: a session only the change log knows about yet is still a live session to them."""
    from daemon.maintenance import _active_sessions
    from daemon.search.sources import session_keys
    from daemon.verify import known_keys

    reg = registry(tmp_path, 10)
    checkpoint(reg)
    add(reg, "agent:main:logged", "slogged")
    assert not checkpoint(reg), "logged, sessions.json left as it was"
    assert "agent:main:logged" not in on_disk(reg)
    assert "slogged" in _active_sessions(tmp_path)
    assert known_keys(tmp_path)["slogged"] == "agent:main:logged"
    assert session_keys(reg.folder)["slogged"] == "agent:main:logged"


def test_a_rewrite_planned_on_the_loop_writes_the_sessions_as_they_were_planned(
    tmp_path: Path,
) -> None:
    """The rewrite's entries are picked in the checkpoint's thread from a copy made at the
    plan: sessions registered after it (by the next batches) are not in that write, and those
    of batches not yet durable are left out, the session a reset replaced shown instead."""
    reg = registry(tmp_path, 5)
    checkpoint(reg)
    closed = reg.sessions.pop("agent:main:k1")
    reg.changed("agent:main:k1")
    created = add(reg, "agent:main:k1", "s1b")  # a reset, in a batch not yet written
    fresh = add(reg, "agent:main:k9", "s9")  # a new session, in a batch not yet written
    always_full = WritePolicy(always_below=1 << 30)
    (plan,) = plan_writes([reg], [created, fresh], [closed], always_full)
    assert plan[1].full is not None
    add(reg, "agent:main:later", "slater")  # registered after the plan
    plan[0].write(plan[1])
    doc = on_disk(reg)
    assert sorted(doc) == [f"agent:main:k{i}" for i in range(5)]
    assert doc["agent:main:k1"] == {"sessionId": "s1", "updatedAt": 1}
    assert reg.changed_keys >= {"agent:main:k1", "agent:main:k9"}, "written once durable"


def test_sessions_json_serialised_in_chunks_is_one_object() -> None:
    for n in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7):
        items = [(f"agent:main:k{i}", {"sessionId": f"s{i}", "updatedAt": i}) for i in range(n)]
        assert serialize(items) == orjson.dumps(dict(items)), n
