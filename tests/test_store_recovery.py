"""Start-up recovery: the journal brings transcripts back to every acknowledged line, exactly once.

These tests drive the store directly (no daemon) and simulate what a power cut can do to files
whose writes were not yet synced: lose their tail, keep a torn part of it, or lose the file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson
import pytest

from daemon.core.ids import next_entry_id
from daemon.store.store import Batch, Store
from daemon.store.transcript import message_line


def open_store(state: Path) -> Store:
    s = Store(state, dedup_max=10_000, dedup_window_ms=86_400_000)
    s.open()
    return s


def write_messages(store: Store, keys: list[str], per_key: int) -> dict[str, list[str]]:
    """Write `per_key` acknowledged messages to each key, one batch per round."""
    acked: dict[str, list[str]] = {k: [] for k in keys}
    for i in range(per_key):
        batch = Batch()
        for k in keys:
            reg = store.agents.get("main")
            st = None if reg is None else reg.sessions.get(k)
            if st is None:
                st, header = store.create_session("main", k, 1_000, {"chatType": "direct"})
                store.register(st)
                batch.created.append(st)
                store.add_line(batch, st, header, None)
            eid = next_entry_id(st.last_entry_id)
            line = message_line(
                eid,
                st.last_entry_id,
                "2026-01-01T00:00:00.000Z",
                {"role": "user", "content": f"{k} {i}"},
            )
            store.add_line(batch, st, line, eid)
            acked[k].append(eid)
        store.write_batch(batch)
        store.apply(batch)
    return acked


def entries(path: Path) -> list[dict[str, object]]:
    out = []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a torn line survived start-up"
    for line in data.splitlines():
        out.append(orjson.loads(line))
    return out


def check(store: Store, acked: dict[str, list[str]]) -> None:
    for key, ids in acked.items():
        st = store.agents["main"].sessions[key]
        es = entries(store.state_dir / st.rel_path)
        assert es[0]["type"] == "session" and es[0]["sessionKey"] == key
        got = [e["id"] for e in es[1:]]
        assert got == ids, key
        parents = [e["parentId"] for e in es[1:]]
        assert parents == [None, *ids[:-1]]


@pytest.mark.parametrize("damage", ["lose_tail", "torn_tail", "garbage_tail", "lose_file", "none"])
def test_replay_restores_every_acknowledged_line_exactly_once(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    store = open_store(state)
    keys = [f"agent:main:telegram:direct:{i}" for i in range(5)]
    acked = write_messages(store, keys, 20)
    store.close()  # no checkpoint: transcripts are not synced, only the journal is
    rng = random.Random(damage)
    for st in list(store.by_id.values()):
        p = state / st.rel_path
        size = p.stat().st_size
        cut = rng.randrange(0, size)
        if damage == "lose_tail":
            os.truncate(p, cut)
        elif damage == "torn_tail":
            os.truncate(p, cut)
            with open(p, "ab") as f:
                f.write(b'{"type":"message","id":"tor')
        elif damage == "garbage_tail":
            os.truncate(p, cut)
            with open(p, "ab") as f:
                f.write(b"\x00" * 100)
        elif damage == "lose_file":
            p.rename(tmp_path / f"lost-{p.name}")
    store2 = open_store(state)
    check(store2, acked)
    # Replay is idempotent: a second start changes nothing.
    before = {st.rel_path: (state / st.rel_path).read_bytes() for st in store2.by_id.values()}
    store2.close()
    store3 = open_store(state)
    after = {st.rel_path: (state / st.rel_path).read_bytes() for st in store3.by_id.values()}
    assert before == after
    store3.close()


def test_replaced_bytes_are_kept_in_a_side_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_store(state)
    acked = write_messages(store, ["agent:main:main"], 3)
    store.close()
    st = store.agents["main"].sessions["agent:main:main"]
    p = state / st.rel_path
    data = p.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    p.write_bytes(data[:last_start] + b"GARBAGE-THAT-WAS-NEVER-ACKED\n")
    store2 = open_store(state)
    check(store2, acked)
    sides = list(p.parent.glob(p.name + ".torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == b"GARBAGE-THAT-WAS-NEVER-ACKED\n"
    store2.close()


def test_registry_is_rebuilt_from_transcript_headers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_store(state)
    write_messages(store, ["agent:main:a", "agent:main:b"], 2)
    store.close()
    store = open_store(state)  # checkpoints at start-up: sessions.json now exists
    ids = {k: st.session_id for k, st in store.agents["main"].sessions.items()}
    store.close()
    reg = state / "agents/main/sessions/sessions.json"
    reg.write_bytes(b"\x00garbage")
    store2 = open_store(state)
    assert {k: st.session_id for k, st in store2.agents["main"].sessions.items()} == ids
    assert list(reg.parent.glob("sessions.json.corrupt-*"))
    doc = orjson.loads(reg.read_bytes())
    assert set(doc) == set(ids)
    assert oct(reg.stat().st_mode & 0o777) == "0o600"
    store2.close()


def test_start_up_writes_the_journal_ahead_and_replay_still_restores_everything(
    tmp_path: Path,
) -> None:
    """Opening a store writes both journal files ahead (START_AHEAD), so a cold start's first
    batches overwrite zeros instead of growing the file; what they journal replays as before."""
    from daemon.store.journal import START_AHEAD

    state = tmp_path / "state"
    store = open_store(state)
    paths = store.journal.paths
    assert [p.stat().st_size for p in paths] == [START_AHEAD, START_AHEAD]
    keys = [f"agent:main:telegram:direct:{i}" for i in range(5)]
    acked = write_messages(store, keys, 20)
    assert [p.stat().st_size for p in paths] == [START_AHEAD, START_AHEAD]
    store.close()  # no checkpoint: only the journal holds the lines durably
    for st in list(store.by_id.values()):
        os.truncate(state / st.rel_path, 0)  # a power cut lost every transcript's data
    store2 = open_store(state)
    check(store2, acked)
    store2.close()
