"""The search index (SPEC 2 `index/`, SPEC 3 `memory.search`): built from the files by byte offset,
following resets into archive/, and giving the same answers however often it is rebuilt."""

from __future__ import annotations

import gzip
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.core.protocol import SearchParams, parse_search
from daemon.errors import InvalidParams
from daemon.search import (
    Halted,
    SearchIndex,
    index_path,
    is_archived_name,
    message_text,
    rebuild,
    transcript_docs,
)
from daemon.search import index as search_mod
from daemon.search.writes import PassWrites
from daemon.store.transcript import custom_line, header_line, iso_ms, message_line

T0 = 1_795_000_000_000  # 2026-11-18, epoch ms


# ---------------------------------------------------------------------------------------------
# A state folder written the way the store writes it


class Folder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def sessions(self, agent: str = "main") -> Path:
        d = self.root / "agents" / agent / "sessions"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def transcript(
        self, sid: str, key: str | None, agent: str = "main", *, header: bool = True
    ) -> Path:
        path = self.sessions(agent) / f"{sid}.jsonl"
        if header:
            line = orjson.loads(header_line(sid, key or "", T0, "/w"))
            if key is None:
                del line["sessionKey"]
            path.write_bytes(orjson.dumps(line) + b"\n")
        else:
            path.write_bytes(b"")
        return path

    def say(self, path: Path, text: str, *, role: str = "user", at: int | None = None) -> str:
        self.n += 1
        eid = f"{self.n:08x}"
        ts = T0 + self.n * 1000 if at is None else at
        msg: dict[str, Any] = {"role": role, "content": [{"type": "text", "text": text}]}
        with open(path, "ab") as f:
            f.write(message_line(eid, None, iso_ms(ts), msg) + b"\n")
        return eid

    def archive(self, path: Path) -> Path:
        dest = path.parent / "archive" / path.name
        dest.parent.mkdir(exist_ok=True)
        os.rename(path, dest)
        return dest

    def memory(self, name: str, text: str, agent: str | None = None) -> Path:
        ws = self.root / ("workspace" if agent is None else f"workspace-{agent}") / "memory"
        ws.mkdir(parents=True, exist_ok=True)
        path = ws / name
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return path


def workspace_of(root: Path) -> Any:
    return lambda agent: root / ("workspace" if agent == "main" else f"workspace-{agent}")


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path / "state")


@pytest.fixture
def index(folder: Folder) -> Iterator[SearchIndex]:
    folder.root.mkdir(parents=True, exist_ok=True)
    idx = SearchIndex(index_path(folder.root), folder.root, workspace_of(folder.root))
    idx.open()
    yield idx
    idx.close()


def q(query: str, **kw: Any) -> SearchParams:
    return parse_search({"query": query, **kw})


def hits(idx: SearchIndex, query: str, **kw: Any) -> list[dict[str, Any]]:
    return idx.search(q(query, **kw))


# ---------------------------------------------------------------------------------------------
# What is indexed


def test_message_text_is_the_text_blocks_without_tools_images_or_thinking() -> None:
    content = [
        {"type": "thinking", "thinking": "secret plan"},
        {"type": "text", "text": "first"},
        {"type": "toolCall", "name": "grep", "arguments": {"q": "x"}},
        {"type": "image", "data": "AAAA"},
        {"type": "text", "text": "second"},
    ]
    assert message_text(content) == "first\nsecond"
    assert message_text("plain") == "plain"
    assert message_text(None) == ""


def test_tool_results_and_custom_entries_are_not_indexed_but_compaction_summaries_are() -> None:
    lines = [
        header_line("s", "agent:main:main", T0, "/w"),
        message_line("00000001", None, iso_ms(T0), {"role": "toolResult", "content": "ls out"}),
        custom_line("00000002", None, iso_ms(T0), "sessiond.reset", {"reason": "new"}),
        orjson.dumps({"type": "compaction", "id": "00000003", "summary": "we spoke of tea"}),
        message_line("00000004", None, iso_ms(T0), {"role": "assistant", "content": "hello"}),
    ]
    docs, header = transcript_docs(
        7, [(i * 100, line) for i, line in enumerate(lines)], lambda v: 1
    )
    assert header is not None and header["id"] == "s"
    assert [(d[2], d[3], d[5]) for d in docs] == [
        ("00000003", "compaction", "we spoke of tea"),
        ("00000004", "assistant", "hello"),
    ]


@pytest.mark.parametrize(
    ("name", "indexed"),
    [
        ("abc.jsonl", True),
        ("abc.jsonl.gz", True),
        ("abc.jsonl.1", True),
        ("abc.jsonl.reset.2026-11-17T07-45-00.013Z", True),
        ("index.jsonl", False),
        ("abc.jsonl.torn-2026-11-17T07-45-00.013Z", False),
        (".abc.jsonl", False),
        ("abc.jsonl.gz.tmp", False),
        ("notes.txt", False),
    ],
)
def test_which_files_in_archive_are_transcripts(name: str, indexed: bool) -> None:
    assert is_archived_name(name) is indexed


# ---------------------------------------------------------------------------------------------
# Incremental passes


def test_a_pass_reads_only_what_was_appended(folder: Folder, index: SearchIndex) -> None:
    t = folder.transcript("s1", "agent:main:main")
    folder.say(t, "the wifi password is hunter2")
    first = index.sync()
    assert (first.read, first.docs) == (1, 1)
    assert index.sync().read == 0  # nothing changed: the file is only stat'ed
    folder.say(t, "and the door code is 4711")
    second = index.sync()
    assert (second.read, second.docs) == (1, 1)
    [hit] = hits(index, "hunter2")
    assert hit["sessionId"] == "s1" and hit["sessionKey"] == "agent:main:main"
    assert hit["snippet"] == "the wifi password is «hunter2»"
    assert hit["archived"] is False and hit["role"] == "user"


def test_a_pass_told_what_was_written_looks_at_those_transcripts_only(
    folder: Folder, index: SearchIndex
) -> None:
    a = folder.transcript("sa", "agent:main:a")
    b = folder.transcript("sb", "agent:main:b")
    folder.say(a, "first apricot")
    index.sync()
    folder.say(a, "second apricot")
    folder.say(b, "a blueberry")
    c = folder.transcript("sc", "agent:main:c")
    folder.say(c, "a cranberry")
    stats = index.sync(touched=["agents/main/sessions/sb.jsonl", "agents/main/sessions/sc.jsonl"])
    assert (stats.files, stats.read) == (2, 2), "only the transcripts named were looked at"
    assert (
        len(hits(index, "apricot")) == 1 and hits(index, "blueberry") and hits(index, "cranberry")
    )
    assert index.sync().docs == 1, "a pass that lists the folders finds what was left"
    assert len(hits(index, "apricot")) == 2


def test_a_periodic_listing_pass_reads_what_was_written_and_a_file_replaced_under_a_name(
    folder: Folder, index: SearchIndex
) -> None:
    """Every FULL_STAT_SECONDS a pass lists the folders. Told what the daemon wrote since the
    last pass, it reads those and any file that is no longer the one read (another inode
    under its name); the others, read to their end, are left as they are."""
    a = folder.transcript("sa", "agent:main:a")
    b = folder.transcript("sb", "agent:main:b")
    c = folder.transcript("sc", "agent:main:c")
    for t, word in ((a, "apricot"), (b, "blueberry"), (c, "cranberry")):
        folder.say(t, f"one {word}")
    index.sync()
    folder.say(a, "two apricot")
    replaced = c.with_name(".sc.new")
    replaced.write_bytes(c.read_bytes())
    os.replace(replaced, c)  # same bytes, another file
    index._last_full = 0.0  # the periodic listing is due
    stats = index.sync(touched=["agents/main/sessions/sa.jsonl"])
    assert stats.read == 2 and stats.restarted == 1, stats
    assert len(hits(index, "apricot")) == 2
    assert len(hits(index, "blueberry")) == len(hits(index, "cranberry")) == 1
    b.unlink()
    index._last_full = 0.0
    assert index.sync(touched=[]).removed == 1, "a listing pass still finds what is gone"
    assert hits(index, "blueberry") == []


def test_a_pass_told_what_was_written_still_follows_resets_and_memory(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    eid = folder.say(t, "remember the word zeppelin")
    gone = folder.memory("2026-11-18.md", "a note about quinces\n")
    index.sync()
    with open(t, "ab") as f:
        f.write(custom_line("ffffffff", eid, iso_ms(T0), "sessiond.closed", {}) + b"\n")
    folder.archive(t)
    gone.unlink()
    stats = index.sync(touched=["agents/main/sessions/s1.jsonl"])
    assert (stats.moved, stats.removed) == (1, 1)
    [hit] = hits(index, "zeppelin")
    assert hit["archived"] is True
    assert hits(index, "quinces") == []


def appended(path: Path, before: int) -> dict[str, tuple[int, bytes]]:
    """What the daemon hands a pass for `path`: the bytes from `before` on, at that offset."""
    key = f"agents/main/sessions/{path.name}"
    return {key: (before, path.read_bytes()[before:])}


def test_appended_bytes_handed_over_are_indexed_without_reading_the_transcript(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    folder.say(t, "first apricot")
    index.sync()
    before = t.stat().st_size
    folder.say(t, "second apricot")
    handed = appended(t, before)
    key, (offset, data) = next(iter(handed.items()))
    # The file says apricot; the bytes handed over say another word of the same length: what
    # gets indexed shows where the pass took its text from.
    handed[key] = (offset, data.replace(b"apricot", b"damsons"))
    stats = index.sync(touched=[key], appended=handed)
    assert (stats.handed, stats.read, stats.docs) == (1, 0, 1)
    assert len(hits(index, "damsons")) == 1 and len(hits(index, "apricot")) == 1
    # The next read from the file checks the bytes before its offset against those handed over
    # (the anchor): here they differ, so the file is read again from the start.
    folder.say(t, "third apricot")
    assert index.sync(touched=[key]).restarted == 1
    assert hits(index, "damsons") == [] and len(hits(index, "apricot")) == 3


def test_a_new_transcript_handed_over_whole_is_indexed_with_its_key(
    folder: Folder, index: SearchIndex
) -> None:
    index.sync()
    t = folder.transcript("s2", "agent:main:fresh")
    folder.say(t, "a brand new quokka")
    handed = appended(t, 0)
    stats = index.sync(touched=list(handed), appended=handed)
    assert (stats.handed, stats.read, stats.docs) == (1, 0, 1)
    [hit] = hits(index, "quokka")
    assert hit["sessionId"] == "s2" and hit["sessionKey"] == "agent:main:fresh"


def test_handed_bytes_after_a_gap_leave_the_pass_to_read_the_file_from_its_offset(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    index.sync()
    folder.say(t, "a lost kumquat")  # handed to a pass that failed: the next never sees it
    before = t.stat().st_size
    folder.say(t, "a later kumquat")
    handed = appended(t, before)
    stats = index.sync(touched=list(handed), appended=handed)
    assert (stats.handed, stats.read, stats.docs) == (0, 1, 2)
    got = hits(index, "kumquat")
    assert len(got) == 2 and len({h["entryId"] for h in got}) == 2


def test_handed_bytes_already_read_from_the_file_are_not_indexed_twice(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    index.sync()
    before = t.stat().st_size
    folder.say(t, "one persimmon")
    folder.say(t, "two persimmon")
    handed = appended(t, before)
    index.sync()  # a listing pass read them from the file before they were handed over
    folder.say(t, "three persimmon")
    grown = {
        k: (off, data + t.read_bytes()[off + len(data) :]) for k, (off, data) in handed.items()
    }
    stats = index.sync(touched=list(grown), appended=grown)
    assert (stats.handed, stats.read, stats.docs) == (1, 0, 1)
    got = hits(index, "persimmon")
    assert len(got) == 3 and len({h["entryId"] for h in got}) == 3


def test_handed_bytes_that_do_not_match_what_was_read_are_not_trusted(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    index.sync()
    before = t.stat().st_size
    folder.say(t, "a genuine medlar, and a line long enough to hold the whole anchor")
    index.sync()
    (key, (off, data)) = next(iter(appended(t, before).items()))
    stale = {key: (off, data.replace(b"genuine", b"forged!"))}  # not what the file holds
    stats = index.sync(touched=[key], appended=stale)
    assert (stats.handed, stats.docs) == (0, 0)  # the file, from the offset read: nothing new
    assert hits(index, "forged") == [] and len(hits(index, "medlar")) == 1


def test_a_file_that_grew_past_the_handed_bytes_is_read_on_from_the_file(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    index.sync()
    before = t.stat().st_size
    folder.say(t, "the first loquat")
    handed = appended(t, before)
    folder.say(t, "a loquat the daemon wrote after the pass was asked for")
    stats = index.sync(touched=list(handed), appended=handed)
    assert (stats.handed, stats.read, stats.docs) == (1, 1, 2)
    got = hits(index, "loquat")
    assert len(got) == 2 and len({h["entryId"] for h in got}) == 2


def test_a_line_still_being_written_waits_for_its_newline(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    line = message_line("0000000a", None, iso_ms(T0), {"role": "user", "content": "tangerine"})
    with open(t, "ab") as f:
        f.write(line[:30])
    index.sync()
    assert hits(index, "tangerine") == []
    with open(t, "ab") as f:
        f.write(line[30:] + b"\n")
    assert index.sync().docs == 1
    assert [h["entryId"] for h in hits(index, "tangerine")] == ["0000000a"]


def test_a_reset_moves_the_transcript_and_its_entries_follow_it(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    eid = folder.say(t, "remember the word zeppelin")
    index.sync()
    with open(t, "ab") as f:
        f.write(custom_line("ffffffff", eid, iso_ms(T0), "sessiond.closed", {}) + b"\n")
    folder.archive(t)
    stats = index.sync()
    assert (stats.moved, stats.docs, stats.removed) == (1, 0, 0)  # nothing read again
    [hit] = hits(index, "zeppelin")
    assert hit["sessionId"] == "s1" and hit["archived"] is True


def test_compressed_archives_are_read_and_a_plain_copy_wins_while_both_exist(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    folder.say(t, "kumquat season")
    plain = folder.archive(t)
    gz = plain.with_name(plain.name + ".gz")
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    index.sync()
    assert len(hits(index, "kumquat")) == 1  # not twice
    plain.unlink()  # compression verified: the plain copy goes
    stats = index.sync()
    assert stats.removed == 1 and stats.docs == 1
    [hit] = hits(index, "kumquat")
    assert hit["archived"] is True and hit["sessionKey"] == "agent:main:main"


def test_a_file_that_is_gone_takes_its_entries_along(folder: Folder, index: SearchIndex) -> None:
    t = folder.transcript("s1", "agent:main:main")
    folder.say(t, "ephemeral pomegranate")
    index.sync()
    t.unlink()
    assert index.sync().removed == 1
    assert hits(index, "pomegranate") == []


def test_a_transcript_cut_back_and_rewritten_is_read_again(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("s1", "agent:main:main")
    folder.say(t, "original apricot")
    index.sync()
    data = t.read_bytes()
    header = data.split(b"\n")[0] + b"\n"
    t.write_bytes(header)  # crash recovery cut the tail (kept aside), then other lines came
    folder.say(t, "replacement nectarine, with a longer line than before")
    assert index.sync().restarted == 1
    assert hits(index, "apricot") == []
    assert len(hits(index, "nectarine")) == 1


def test_openclaw_transcripts_take_their_key_from_the_registry(
    folder: Folder, index: SearchIndex
) -> None:
    t = folder.transcript("oc1", None)
    folder.say(t, "legacy quince")
    (t.parent / "sessions.json").write_bytes(
        orjson.dumps({"agent:main:telegram:direct:42": {"sessionId": "oc1"}})
    )
    index.sync()
    [hit] = hits(index, "quince")
    assert hit["sessionKey"] == "agent:main:telegram:direct:42"


def test_memory_files_are_indexed_line_by_line_with_the_day_of_their_name(
    folder: Folder, index: SearchIndex
) -> None:
    folder.memory("2026-11-20.md", "# Notes\n\n- user prefers oolong tea\n- unfinished")
    index.sync()
    [hit] = hits(index, "oolong")
    assert hit["source"] == "memory" and hit["agentId"] == "main"
    assert hit["entryId"] == "2026-11-20.md:3"
    assert hit["timestamp"] == "2026-11-20T00:00:00.000Z"
    assert hit["sessionId"] is None and hit["file"] == "workspace/memory/2026-11-20.md"
    assert len(hits(index, "unfinished")) == 1  # the last line, before its newline
    folder.memory("2026-11-20.md", " thought about sencha\n")
    index.sync()
    assert hits(index, "unfinished") and hits(index, "sencha")
    [again] = hits(index, "unfinished")
    assert again["entryId"] == "2026-11-20.md:4"  # indexed once, complete now


def test_an_edited_memory_file_is_read_again_from_the_start(
    folder: Folder, index: SearchIndex
) -> None:
    path = folder.memory("2026-11-20.md", "- likes hiking\n- likes chess\n")
    index.sync()
    path.write_text("- likes sailing\n- likes chess, and more\n")
    stats = index.sync()
    assert stats.restarted == 1
    assert hits(index, "hiking") == [] and len(hits(index, "sailing")) == 1


def test_memory_of_other_agents_is_theirs(folder: Folder, index: SearchIndex) -> None:
    folder.memory("2026-11-20.md", "- work note about margarine\n", agent="work")
    index.sync()
    assert [h["agentId"] for h in hits(index, "margarine")] == ["work"]
    assert hits(index, "margarine", agentId="main") == []


# ---------------------------------------------------------------------------------------------
# Queries


@pytest.fixture
def corpus(folder: Folder, index: SearchIndex) -> dict[str, Any]:
    a = folder.transcript("sa", "agent:main:main")
    b = folder.transcript("sb", "agent:main:telegram:direct:7")
    w = folder.transcript("sw", "agent:work:main", agent="work")
    ids = {
        "a1": folder.say(a, "alpha zebra", at=T0 + 1000),
        "a2": folder.say(a, "zebra crossing zebra", role="assistant", at=T0 + 2000),
        "b1": folder.say(b, "a zebra in telegram", at=T0 + 3000),
        "w1": folder.say(w, "work zebra", at=T0 + 4000),
    }
    folder.memory("2026-11-17.md", "- zebra facts\n")
    index.sync()
    return ids


def test_filters_narrow_the_hits(index: SearchIndex, corpus: dict[str, Any]) -> None:
    def ids(**kw: Any) -> set[str]:
        return {h["entryId"] for h in hits(index, "zebra", **kw)}

    everything = ids()
    assert everything == {*corpus.values(), "2026-11-17.md:1"}
    assert ids(agentId="work") == {corpus["w1"]}
    assert ids(sessionId="sb") == {corpus["b1"]}
    assert ids(sessionKey="agent:main:main") == {corpus["a1"], corpus["a2"]}
    assert ids(after=T0 + 2000) == {corpus["a2"], corpus["b1"], corpus["w1"]}
    assert ids(before=T0 + 2000) == {corpus["a1"], "2026-11-17.md:1"}
    assert ids(after=iso_ms(T0 + 2000), before=iso_ms(T0 + 4000)) == {corpus["a2"], corpus["b1"]}
    assert ids(includeSessions=False) == {"2026-11-17.md:1"}
    assert ids(includeMemory=False) == set(corpus.values())
    assert len(hits(index, "zebra", limit=2)) == 2


def test_hits_are_ranked_and_ties_go_to_the_newer(
    index: SearchIndex, corpus: dict[str, Any]
) -> None:
    got = [h["entryId"] for h in hits(index, "zebra", includeMemory=False)]
    scores = [h["score"] for h in hits(index, "zebra", includeMemory=False)]
    assert scores == sorted(scores, reverse=True)
    assert got[0] == corpus["a2"]  # two zebras in three words
    # "work zebra" and "alpha zebra" score exactly alike: the newer comes first
    assert got.index(corpus["w1"]) == got.index(corpus["a1"]) - 1


@pytest.mark.parametrize(
    "query", ["what's up", "hello?", '"unterminated', "a AND", "x:foo", "foo-bar", "NEAR("]
)
def test_a_malformed_query_is_invalid_params_with_an_explanation(
    index: SearchIndex, corpus: dict[str, Any], query: str
) -> None:
    with pytest.raises(InvalidParams) as e:
        hits(index, query, syntax="fts5")
    assert e.value.field == "query"
    assert "quoted phrases" in e.value.message


@pytest.mark.parametrize("query", ["*", "z*", "ze*", '"ze"*', "alpha OR ze*"])
def test_a_prefix_needs_three_characters(
    index: SearchIndex, corpus: dict[str, Any], query: str
) -> None:
    with pytest.raises(InvalidParams) as e:
        hits(index, query, syntax="fts5")
    assert "at least 3 characters" in e.value.message


def test_query_syntax_works(index: SearchIndex, corpus: dict[str, Any]) -> None:
    def fts(query: str) -> list[dict[str, Any]]:
        return hits(index, query, syntax="fts5")

    assert len(fts('"zebra crossing"')) == 1
    assert len(fts("zeb*")) == len(fts('"zeb"*')) == 5
    assert {h["entryId"] for h in fts("zebra NOT alpha NOT work")} >= {corpus["b1"]}
    assert len(fts("alpha OR telegram")) == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "query"),
        ({"query": "  "}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 201}, "limit"),
        ({"query": "x", "includeSessions": False, "includeMemory": False}, "includeSessions"),
        ({"query": "x", "after": "yesterday"}, "after"),
        ({"query": "x", "colour": "red"}, "colour"),
        ({"query": "x", "syntax": "regex"}, "syntax"),
        ({"query": "x", "recency": "yes"}, "recency"),
    ],
)
def test_search_params_are_checked(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as e:
        parse_search(params)
    assert e.value.field == field


# ---------------------------------------------------------------------------------------------
# Derived data: deleted, rebuilt, interrupted


QUERIES = ["zebra", "alpha OR telegram", "zeb*", '"zebra crossing"', "facts"]


def answers(idx: SearchIndex) -> list[list[dict[str, Any]]]:
    return [hits(idx, query, syntax="fts5", recency=False) for query in QUERIES]


def test_a_rebuild_gives_the_same_answers_as_the_incremental_index(
    folder: Folder, index: SearchIndex, corpus: dict[str, Any]
) -> None:
    t = folder.sessions() / "sa.jsonl"
    folder.say(t, "one more zebra, said later")
    index.sync()
    folder.archive(t)
    index.sync()
    before = answers(index)
    rebuild(folder.root, workspace_of(folder.root))
    fresh = SearchIndex(index_path(folder.root), folder.root, workspace_of(folder.root))
    fresh.open()
    try:
        assert answers(fresh) == before
        assert fresh.sync().docs == 0  # the rebuilt index is up to date
    finally:
        fresh.close()


def test_a_deleted_index_is_built_again_with_the_same_answers(
    folder: Folder, index: SearchIndex, corpus: dict[str, Any]
) -> None:
    before = answers(index)
    shutil.rmtree(folder.root / "index")
    stats = index.sync()
    assert stats.docs == 5
    assert answers(index) == before


def test_an_unreadable_index_is_replaced(folder: Folder, corpus: dict[str, Any]) -> None:
    path = index_path(folder.root)
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    idx = SearchIndex(path, folder.root, workspace_of(folder.root))
    idx.open()
    try:
        assert idx.sync().docs == 5
        assert len(hits(idx, "zebra")) == 5
    finally:
        idx.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_halted_pass_keeps_what_it_committed_and_the_next_goes_on_without_doubles(
    folder: Folder, index: SearchIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_mod, "COMMIT_DOCS", 10)
    monkeypatch.setattr(search_mod, "READ_CHUNK", 512)
    for n in range(4):
        t = folder.transcript(f"s{n}", f"agent:main:k{n}")
        for i in range(30):
            folder.say(t, f"entry {i} of session {n} mentions walrus")
    halt = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int, docs: int) -> None:
        seen.append(docs)
        if done == 2:
            halt.set()

    with pytest.raises(Halted):
        index.sync(halt=halt, progress=progress)
    kept = len(hits(index, "walrus", limit=200))
    assert 0 < kept < 120
    index.sync()
    got = hits(index, "walrus", limit=200)
    assert len(got) == 120
    assert len({(h["sessionId"], h["entryId"]) for h in got}) == 120


def test_a_long_file_is_committed_in_parts_and_continues_where_it_stopped(
    folder: Folder, index: SearchIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_mod, "COMMIT_DOCS", 7)
    monkeypatch.setattr(search_mod, "READ_CHUNK", 300)
    t = folder.transcript("s", "agent:main:main")
    for i in range(50):
        folder.say(t, f"line {i} about capybara")
    halt = threading.Event()
    original = PassWrites.flush

    def flush_then_halt(self: PassWrites) -> int:
        n = original(self)
        if self.written >= 20:
            halt.set()
        return n

    monkeypatch.setattr(PassWrites, "flush", flush_then_halt)
    with pytest.raises(Halted):
        index.sync(halt=halt)
    monkeypatch.setattr(PassWrites, "flush", original)
    partial = len(hits(index, "capybara", limit=200))
    assert 0 < partial < 50
    index.sync()
    got = hits(index, "capybara", limit=200)
    assert len(got) == 50 and len({h["entryId"] for h in got}) == 50
