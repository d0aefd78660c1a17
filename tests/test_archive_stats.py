"""Archive statistics read by first bytes (daemon/store/archive.py transcript_stats): the same
counts and times as parsing every line, for every shape of transcript."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.store.archive import _stats, transcript_stats

TS = st.integers(0, 59).map(lambda s: f"2026-01-01T00:00:{s:02d}.000Z")


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    lines = []
    header = {"type": "session", "version": 3, "id": "s1", "sessionKey": "agent:main:main"}
    if draw(st.booleans()):
        header["timestamp"] = draw(TS)
    lines.append(orjson.dumps(header))
    for i in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["message", "message", "custom", "compaction", "garbage"]))
        if kind == "garbage":
            lines.append(b"not json at all")
            continue
        entry: dict[str, object] = {"type": kind, "id": f"{i:08x}"}
        if draw(st.booleans()):
            entry["timestamp"] = draw(TS)
        if kind == "message":
            entry["message"] = {"role": "user", "content": "hi"}
        if draw(st.integers(0, 4)) == 0:  # another writer's key order: type not first
            entry = {"id": entry.pop("id"), **entry}
        lines.append(orjson.dumps(entry))
    data = b"\n".join(lines) + b"\n"
    if draw(st.booleans()):  # a torn last write
        data += orjson.dumps({"type": "message", "id": "ffffffff", "timestamp": draw(TS)})[:-9]
    return data


@settings(max_examples=300, deadline=None)
@given(entries())
def test_reading_by_first_bytes_gives_what_parsing_every_line_gives(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s1.jsonl"
        path.write_bytes(data)
        assert transcript_stats(path) == _stats(path, fast=False)


def test_a_torn_last_message_is_not_counted_and_the_one_before_gives_the_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s1.jsonl"
    head = b'{"type":"session","version":3,"id":"s1","timestamp":"2026-01-01T00:00:00.000Z"}\n'
    msg = b'{"type":"message","id":"%s","timestamp":"2026-01-01T00:00:0%d.000Z","message":{}}\n'
    path.write_bytes(head + msg % (b"00000001", 1) + msg % (b"00000002", 2) + b'{"type":"mess')
    stats = transcript_stats(path)
    assert stats.messages == 2
    assert stats.ended_at == stats.started_at + 2000


def test_an_index_record_as_json_holds_every_field_as_it_is() -> None:
    from dataclasses import asdict

    from daemon.store.archive import ArchiveRecord

    rec = ArchiveRecord(
        "s1", "agent:main:main", "main", "idle", 1, 2, 3, 4, 5, "ab", "s0", None, "s1.jsonl"
    )
    plain = rec.to_json()
    assert plain == {k: v for k, v in asdict(rec).items() if k != "registry"}
    kept = ArchiveRecord(**{**asdict(rec), "registry": {"origin": {"from": "x"}}}).to_json()
    assert kept == asdict(ArchiveRecord(**{**asdict(rec), "registry": {"origin": {"from": "x"}}}))
    assert orjson.loads(orjson.dumps(kept)) == kept


def test_archiving_a_group_gives_each_session_the_time_of_the_batch_that_closed_it(
    tmp_path: Path,
) -> None:
    from daemon.store.archive import ToArchive, archive_transcripts, read_index

    folder = tmp_path / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    items = []
    for i, closed_at in enumerate([1000, 1000, 2000]):
        path = folder / f"s{i}.jsonl"
        header = {"type": "session", "version": 3, "id": f"s{i}", "sessionKey": f"k{i}"}
        path.write_bytes(orjson.dumps(header) + b"\n")
        items.append(ToArchive(path, "main", "idle", f"s{i}", f"k{i}", None, None, closed_at))
    recs = archive_transcripts(items)
    assert [getattr(r, "archivedAt", r) for r in recs] == [1000, 1000, 2000]
    assert [(r.sessionId, r.archivedAt) for r in read_index(folder)] == [
        ("s0", 1000),
        ("s1", 1000),
        ("s2", 2000),
    ]
    assert sorted(p.name for p in (folder / "archive").iterdir()) == [
        "index.jsonl",
        "s0.jsonl",
        "s1.jsonl",
        "s2.jsonl",
    ]


def test_a_group_moved_where_names_are_taken_gets_numbered_names_and_replaces_nothing(
    tmp_path: Path,
) -> None:
    # Two folders in one group, each archive/ made once; a name taken in archive/ (by a file or
    # a dangling link) gets the next free number, and what held it is left as it was.
    from daemon.store.archive import ToArchive, archive_transcripts, read_index

    items = []
    for agent in ("main", "work"):
        folder = tmp_path / "agents" / agent / "sessions"
        folder.mkdir(parents=True)
        for sid in ("s0", "s1"):
            path = folder / f"{sid}.jsonl"
            header = {"type": "session", "version": 3, "id": sid, "sessionKey": f"k-{sid}"}
            path.write_bytes(orjson.dumps(header) + b"\n")
            items.append(ToArchive(path, agent, "idle", sid, f"k-{sid}", None, None, 1000))
    taken = tmp_path / "agents" / "main" / "sessions" / "archive"
    taken.mkdir()
    (taken / "s0.jsonl").write_bytes(b"older\n")
    (taken / "s0.jsonl.1").symlink_to(tmp_path / "nowhere")
    recs = archive_transcripts(items)
    assert [getattr(r, "file", r) for r in recs] == [
        "s0.jsonl.2",
        "s1.jsonl",
        "s0.jsonl",
        "s1.jsonl",
    ]
    assert (taken / "s0.jsonl").read_bytes() == b"older\n"
    assert (taken / "s0.jsonl.1").is_symlink()
    assert b'"id":"s0"' in (taken / "s0.jsonl.2").read_bytes()
    for agent in ("main", "work"):
        folder = tmp_path / "agents" / agent / "sessions"
        assert not list(folder.glob("*.jsonl"))  # each moved, none copied
        assert sorted(r.sessionId for r in read_index(folder)) == ["s0", "s1"]
