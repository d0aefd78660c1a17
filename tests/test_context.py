"""A session's context read from its transcript's end (daemon/store/context.py): the latest
compaction, what it kept, what came after, and the crash recount of the registry's numbers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson

from daemon.store.context import apply_recount, read_context, recount
from daemon.store.entry import SessionEntry

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "openclaw-2026.6"
COMPACTED = FIXTURE / "agents/main/sessions/70de30ac-307c-4f24-8026-fe134613daac.jsonl"


def write(path: Path, lines: list[dict[str, Any]], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines) + tail)
    return path


def msg(eid: str, role: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "id": eid,
        "message": {"role": role, "content": [{"type": "text", "text": text}], **extra},
    }


HEADER = {"type": "session", "version": 3, "id": "s", "sessionKey": "agent:main:main"}


def test_openclaw_s_compaction_keeps_entries_from_the_middle_of_the_file() -> None:
    view = read_context(COMPACTED)
    assert view.compaction is not None and view.compaction["firstKeptEntryId"] == "b8e7132b"
    assert view.kept[0]["id"] == "b8e7132b"
    assert view.kept[-1]["id"] == "c55402b3"  # the entry just before the compaction
    assert view.after[0]["id"] == "3181c6c8"
    assert view.summary is not None and view.summary.startswith("## Decisions")
    # The newest assistant usage after the compaction, plus what followed it.
    last_usage = [e for e in view.after if e["type"] == "message" and e["message"].get("usage")][-1]
    assert view.tokens >= last_usage["message"]["usage"]["totalTokens"]
    assert all(e["type"] == "message" for e in view.messages())


def test_no_compaction_means_the_whole_file(tmp_path: Path) -> None:
    p = write(tmp_path / "a.jsonl", [HEADER, msg("1", "user", "a" * 40), msg("2", "user", "b")])
    view = read_context(p)
    assert view.compaction is None and view.kept == []
    assert [e["id"] for e in view.after] == ["1", "2"]
    assert view.tokens == 11
    assert view.last_entry_id == "2"


def test_a_torn_last_line_is_not_part_of_the_context(tmp_path: Path) -> None:
    p = write(tmp_path / "a.jsonl", [HEADER, msg("1", "user", "abcd")], b'{"type":"mess')
    view = read_context(p)
    assert [e["id"] for e in view.after] == ["1"]
    assert view.end == p.stat().st_size


def test_a_kept_entry_that_is_not_in_the_file_keeps_nothing(tmp_path: Path) -> None:
    compaction = {"type": "compaction", "id": "9", "summary": "S" * 8, "firstKeptEntryId": "x"}
    p = write(tmp_path / "a.jsonl", [HEADER, msg("1", "user", "a" * 400), compaction])
    view = read_context(p)
    assert view.kept == [] and view.after == [] and view.tokens == 2


def test_recount_follows_the_latest_compaction_and_flush(tmp_path: Path) -> None:
    lines = [
        HEADER,
        msg("1", "user", "a" * 400),
        msg("2", "assistant", "ok", usage={"totalTokens": 150_000}),
        {"type": "custom", "customType": "sessiond.memoryFlush", "data": {"compactionCount": 2}},
        {
            "type": "compaction",
            "id": "3",
            "summary": "s" * 40,
            "firstKeptEntryId": "2",
            "tokensBefore": 150_000,
            "details": {"compactionCount": 3, "memoryFlushCompactionCount": 2},
        },
        msg("4", "user", "b" * 8),
    ]
    r = recount(write(tmp_path / "a.jsonl", lines))
    assert r is not None
    # The usage of entry 2 is from before the compaction: stale, so estimates count.
    assert r.total_tokens == 10 + 1 + 2
    assert (r.compaction_count, r.flush_count) == (3, 2)
    changes: list[int] = []
    entry = SessionEntry({"compactionCount": 1, "totalTokens": 99}, lambda key: changes.append(1))
    apply_recount(entry, r)
    assert entry == {"compactionCount": 3, "totalTokens": 13, "memoryFlushCompactionCount": 2}
    assert changes  # the registry is written at the next checkpoint
    # Counters never move back.
    entry = SessionEntry({"compactionCount": 5, "memoryFlushCompactionCount": 5}, lambda key: None)
    apply_recount(entry, r)
    assert entry["compactionCount"] == 5 and entry["memoryFlushCompactionCount"] == 5


def test_recount_of_a_missing_file_keeps_the_registry(tmp_path: Path) -> None:
    assert recount(tmp_path / "gone.jsonl") is None


def test_an_archived_transcript_is_found_where_it_moved(tmp_path: Path) -> None:
    from daemon.store.context import find_transcript

    src = tmp_path / "s.jsonl"
    (tmp_path / "archive").mkdir()
    shutil.copy(COMPACTED, tmp_path / "archive" / "s.jsonl")
    assert find_transcript(src) == tmp_path / "archive" / "s.jsonl"
