"""memory.search end to end (SPEC 3): what was said before a reset is found afterwards, filters
narrow it, memory files are searched too, and the index is derived data that can be deleted and
rebuilt (at start-up or with `sessiond reindex`) with identical answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from ops_harness import wait_for

from daemon.client import RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env, ingest_params

PER_PEER = {"session": {"dmScope": "per-channel-peer"}}
# Recency off: the boost depends on the time of the call, and these answers are compared.
QUERIES: list[dict[str, Any]] = [
    {"query": "zeppelin", "recency": False},
    {"query": "zeppelin OR harbour", "limit": 50, "syntax": "fts5", "recency": False},
    {"query": "harb*", "syntax": "fts5", "recency": False},
    {"query": '"the harbour"', "syntax": "fts5", "recency": False},
    {"query": "oolong", "includeSessions": False, "recency": False},
    {"query": "where do zeppelins dock? the harbour, 100%", "limit": 50, "recency": False},
]


def search(d: Daemon, **params: Any) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = d.call("memory.search", params)["hits"]
    return hits


def sessiond(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args, "--state-dir", str(d.state_dir),
         "--config", str(d.config_path)],
        capture_output=True, text=True, env=daemon_env(), timeout=60, check=False,
    )  # fmt: skip


def test_a_word_said_before_a_reset_is_found_afterwards_in_the_archived_session(
    launch: Launch,
) -> None:
    d = launch(PER_PEER)
    c = d.client()
    first = c.call("message.ingest", ingest_params("7", "my zeppelin is called Hindenburg II"))
    reset = c.call("message.ingest", ingest_params("7", "/new let us talk about boats"))
    assert reset["reset"]["previousSessionId"] == first["sessionId"]
    later = c.call("message.ingest", ingest_params("7", "a zeppelin again, after the reset"))

    # The move into archive/ runs in an archive worker after the reset's answer; a search waits
    # for it a bounded while (test_a_search_right_after_a_reset_shows_the_closed_session_archived),
    # which a loaded machine may outlast: asked until the move is indexed.
    def moved_and_indexed() -> list[dict[str, Any]] | None:
        hits = search(d, query="zeppelin")
        old = [h for h in hits if h["sessionId"] == first["sessionId"]]
        return hits if old and old[0]["archived"] else None

    hits = wait_for("the reset session indexed as archived", moved_and_indexed, 60)
    by_session = {h["sessionId"]: h for h in hits}
    assert set(by_session) == {first["sessionId"], later["sessionId"]}
    old = by_session[first["sessionId"]]
    assert old["archived"] is True and old["entryId"] == first["entryId"]
    assert old["sessionKey"] == first["sessionKey"] and old["role"] == "user"
    assert "«zeppelin»" in old["snippet"]
    assert by_session[later["sessionId"]]["archived"] is False
    only_old = search(d, query="zeppelin", sessionId=first["sessionId"])
    assert [h["entryId"] for h in only_old] == [first["entryId"]]


def test_after_and_before_narrow_the_hits(launch: Launch) -> None:
    d = launch(PER_PEER)
    c = d.client()
    acks = []
    for i in range(3):
        acks.append(c.call("message.ingest", ingest_params("7", f"harbour visit number {i}")))
        time.sleep(0.05)
    stamps = {h["entryId"]: h["timestamp"] for h in search(d, query="harbour")}
    t = [stamps[a["entryId"]] for a in acks]
    assert t == sorted(t) and len(set(t)) == 3

    def ids(**kw: Any) -> list[str]:
        return sorted(h["entryId"] for h in search(d, query="harbour", **kw))

    e = [a["entryId"] for a in acks]
    assert ids(after=t[1]) == sorted(e[1:])
    assert ids(before=t[1]) == [e[0]]
    assert ids(after=t[1], before=t[2]) == [e[1]]
    assert ids(after=t[2], sessionId=acks[0]["sessionId"]) == [e[2]]
    assert ids(sessionId="no-such-session") == []


def test_a_search_right_after_the_answer_finds_the_message(launch: Launch) -> None:
    d = launch()
    c = d.client()
    for i in range(20):
        word = f"marker{i}x"
        c.call("message.ingest", ingest_params("7", f"fresh {word}"))
        assert len(c.call("memory.search", {"query": word})["hits"]) == 1, word


def test_a_search_right_after_a_reset_shows_the_closed_session_archived(launch: Launch) -> None:
    # The move into archive/ runs in an archive worker after the reset's answer: the search
    # waits for the moves under way and for the pass that sees them, as it waits for the
    # batches acknowledged before it.
    d = launch(PER_PEER)
    c = d.client()
    for i in range(5):
        word = f"dirigible{i}x"
        first = c.call("message.ingest", ingest_params(f"8{i}", f"my {word} is ready"))
        c.call("message.ingest", ingest_params(f"8{i}", "/new let us talk about boats"))
        hits = c.call("memory.search", {"query": word})["hits"]
        assert [(h["sessionId"], h["archived"]) for h in hits] == [(first["sessionId"], True)]


def test_memory_files_are_searched(launch: Launch) -> None:
    # The periodic sweep finds them (about a second on an idle machine: a figure, not a bound).
    d = launch()
    memory = d.state_dir / "workspace" / "memory"
    memory.mkdir(parents=True)
    (memory / "2026-11-20.md").write_text("# 2026-11-20\n\n- the user drinks oolong tea\n")
    deadline = time.monotonic() + 60
    hits: list[dict[str, Any]] = []
    while not hits and time.monotonic() < deadline:
        time.sleep(0.1)
        hits = search(d, query="oolong")
    assert hits, "the memory file was not indexed within 60 s"
    [hit] = hits
    assert hit["source"] == "memory" and hit["agentId"] == "main"
    assert hit["entryId"] == "2026-11-20.md:3" and "«oolong»" in hit["snippet"]
    assert search(d, query="oolong", includeMemory=False) == []


def test_a_malformed_fts5_query_is_invalid_params_not_a_crash(launch: Launch) -> None:
    d = launch()
    d.call("message.ingest", ingest_params("7", "hello"))
    for bad in ["what's up?", '"open', "a AND", "x:y"]:
        with pytest.raises(RpcError) as e:
            d.call("memory.search", {"query": bad, "syntax": "fts5"})
        assert e.value.code == -32602 and e.value.data == {"field": "query"}
        assert "quoted phrases" in e.value.message
    assert len(search(d, query="hello")) == 1


def test_plain_queries_with_punctuation_numbers_and_percent_signs_find_hits(
    launch: Launch,
) -> None:
    d = launch()
    d.call("message.ingest", ingest_params("7", "hi! what is 15% of 84.50?"))
    d.call("message.ingest", ingest_params("7", "we decided to leave a 15% tip", messageId="t"))
    for query in ["15%", "84.50", "what did we decide about the tip, 15%?", "what's up?", '"open']:
        got = search(d, query=query)
        assert got or query in ("what's up?", '"open'), query
    assert search(d, query="what did we decide about the tip, 15%?")[0]["snippet"].count("«") >= 2


def populate(d: Daemon) -> None:
    c = d.client()
    first = c.call("message.ingest", ingest_params("7", "the zeppelin docks at the harbour"))
    c.call("message.append", {
        "sessionKey": first["sessionKey"],
        "message": {"role": "assistant", "content": [{"type": "text", "text": "which harbour?"}]},
    })  # fmt: skip
    c.call("sessions.reset", {"sessionKey": first["sessionKey"]})
    for i in range(5):
        c.call("message.ingest", ingest_params(str(i), f"harbour {i}: zeppelin sightings {i}"))
    memory = d.state_dir / "workspace" / "memory"
    memory.mkdir(parents=True, exist_ok=True)
    (memory / "2026-11-21.md").write_text("- prefers oolong\n- harbour walks on sundays\n")


def answers(d: Daemon) -> list[list[dict[str, Any]]]:
    return [search(d, **q) for q in QUERIES]


def settled_answers(d: Daemon) -> list[list[dict[str, Any]]]:
    """Answers once the index has caught up with the files (memory files: about a second)."""
    deadline = time.monotonic() + 60  # generous: the worker runs niced on a loaded machine
    last = answers(d)
    while time.monotonic() < deadline:
        time.sleep(1.2)
        now = answers(d)
        if now == last and all(now):
            return now
        last = now
    return last


def test_the_index_can_be_deleted_and_is_rebuilt_with_identical_answers(launch: Launch) -> None:
    d = launch(PER_PEER)
    populate(d)
    before = settled_answers(d)
    assert all(before)
    assert d.stop() == 0
    shutil.rmtree(d.state_dir / "index")
    d.start()
    assert settled_answers(d) == before
    assert d.stop() == 0


def test_reindex_rebuilds_the_index_and_refuses_while_the_daemon_runs(launch: Launch) -> None:
    d = launch(PER_PEER)
    populate(d)
    before = settled_answers(d)
    busy = sessiond(d, "reindex")
    assert busy.returncode == 1 and "holds the lock" in busy.stderr
    assert d.stop() == 0
    done = sessiond(d, "reindex", "--json")
    assert done.returncode == 0, done.stderr
    stats = orjson.loads(done.stdout)
    assert stats["docs"] >= 9  # and whatever memory flushes wrote
    assert not list((d.state_dir / "index").glob("*.rebuild-*"))
    d.start()
    assert answers(d) == before


def test_the_search_command(launch: Launch) -> None:
    d = launch(PER_PEER)
    populate(d)
    settled_answers(d)
    out = sessiond(d, "search", "zeppelin", "--limit", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("«zeppelin»") == 3
    as_json = sessiond(d, "search", "oolong", "--only", "memory", "--json")
    hits = orjson.loads(as_json.stdout)["hits"]
    assert [h["entryId"] for h in hits] == ["2026-11-21.md:1"]
    bad = sessiond(d, "search", "--fts", "what's")
    assert bad.returncode == 1 and "-32602" in bad.stderr
    plain = sessiond(d, "search", "what's the zeppelin?")
    assert plain.returncode == 0 and "«zeppelin»" in plain.stdout


def test_index_files_are_private(launch: Launch) -> None:
    d = launch()
    d.call("message.ingest", ingest_params("7", "secret"))
    assert search(d, query="secret")
    folder: Path = d.state_dir / "index"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "search.sqlite3").stat().st_mode & 0o777 == 0o600
