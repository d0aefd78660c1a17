"""memory.search in plain language: what a person or a model types never fails and finds answers.

The pure part (daemon/search/plain.py) is tested with plain data and hypothesis; the ranking
against a real SQLite FTS5 index built from real transcript files.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import T0, Folder, folder, index

from daemon.core.protocol import parse_search
from daemon.search import query as query_module
from daemon.search.index import SearchIndex
from daemon.search.plain import MAX_TERMS, fts_or, plain_terms

__all__ = ["folder", "index"]  # fixtures shared with test_search.py

# ---------------------------------------------------------------------------------------------
# Terms (pure)


def test_punctuation_percent_and_question_marks_separate_words() -> None:
    assert plain_terms("what did we decide about the tip, 15%?") == [
        ("what",),
        ("did",),
        ("we",),
        ("decide",),
        ("about",),
        ("the",),
        ("tip",),
        ("15",),
    ]


def test_a_decimal_or_a_hyphenated_word_stays_one_phrase() -> None:
    assert plain_terms("84.50 e-mail don't") == [("84", "50"), ("e", "mail"), ("don", "t")]


def test_quoted_phrases_stay_phrases_and_words_repeat_once() -> None:
    assert plain_terms('"zebra crossing" Zebra zebra') == [("zebra", "crossing"), ("zebra",)]


def test_cjk_and_accented_words_are_words_and_emoji_are_not() -> None:
    assert plain_terms("東京 café 🎉 !!!") == [("東京",), ("café",)]
    assert plain_terms("🎉 ?! ... %") == []


def test_terms_are_capped() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    assert len(plain_terms(words)) == MAX_TERMS


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_an_fts5_query_that_sqlite_accepts(text: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t VALUES ('hello world 15 84 50')")
    terms = plain_terms(text.replace("\x00", ""))
    if terms:
        conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (fts_or(terms),)).fetchall()


# ---------------------------------------------------------------------------------------------
# Against a real index


def search(idx: SearchIndex, query: str, **kw: Any) -> list[dict[str, Any]]:
    return idx.search(parse_search({"query": query, **kw}))


@pytest.fixture
def chat(folder: Folder, index: SearchIndex) -> dict[str, str]:
    s = folder.transcript("s1", "agent:main:main")
    ids = {
        "q": folder.say(s, "hi! what is 15% of 84.50?", at=T0 + 1000),
        "a": folder.say(s, "15% of 84.50 is 12.68", role="assistant", at=T0 + 2000),
        "tip": folder.say(s, "we decided to leave a 15% tip at the diner", at=T0 + 3000),
        "other": folder.say(s, "what is the weather in the city", at=T0 + 4000),
    }
    index.sync()
    return ids


@pytest.mark.parametrize(
    "query",
    [
        "15%",
        "84.50",
        "what did we decide about the tip, 15%?",
        '"unterminated',
        "a AND",
        "x:foo",
        "NEAR(",
        "tip*",
        "*",
        "what's up?",
        "🎉 tip 🎉",
        "(tip) [15] {diner}",
    ],
)
def test_queries_with_punctuation_never_fail(
    index: SearchIndex, chat: dict[str, str], query: str
) -> None:
    search(index, query)  # no InvalidParams


def test_a_question_finds_the_answer(index: SearchIndex, chat: dict[str, str]) -> None:
    got = [h["entryId"] for h in search(index, "what did we decide about the tip, 15%?")]
    assert got[0] == chat["tip"]
    assert [h["entryId"] for h in search(index, "84.50")][:2] in (
        [chat["q"], chat["a"]],
        [chat["a"], chat["q"]],
    )


def test_only_symbols_give_no_hits(index: SearchIndex, chat: dict[str, str]) -> None:
    assert search(index, "?!% 🎉") == []


def test_newer_hits_rank_higher_unless_recency_is_off(folder: Folder, index: SearchIndex) -> None:
    s = folder.transcript("s2", "agent:main:main")
    old = folder.say(s, "margarine report", at=T0)
    new = folder.say(s, "margarine report", at=T0 + 400 * 86_400_000)
    index.sync()
    assert [h["entryId"] for h in search(index, "margarine")] == [new, old]
    scores = [h["score"] for h in search(index, "margarine", recency=False)]
    assert scores[0] == scores[1]


def test_common_words_are_left_out_when_rarer_ones_are_asked(
    folder: Folder, index: SearchIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of 5 rows, "the" (in 8 entries) is too common to rank by; "zebra" is not."""
    monkeypatch.setattr(query_module, "SCORE_BUDGET", 5)
    s = folder.transcript("s3", "agent:main:main")
    for i in range(8):
        folder.say(s, f"the day number {i}", at=T0 + i)
    zebra = folder.say(s, "a zebra", at=T0 + 100)
    index.sync()
    got = search(index, "the zebra")
    assert [h["entryId"] for h in got] == [zebra]
    assert "«zebra»" in got[0]["snippet"]


def test_when_every_word_is_common_the_newest_entries_are_ranked(
    folder: Folder, index: SearchIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_module, "SCORE_BUDGET", 4)
    monkeypatch.setattr(query_module, "WINDOWS_MAX", 2)
    s = folder.transcript("s4", "agent:main:main")
    said = [folder.say(s, f"the day number {i}", at=T0 + i) for i in range(20)]
    index.sync()
    got = [h["entryId"] for h in search(index, "the", limit=20)]
    # two windows of four rows: the eight newest entries, newest window first
    assert set(got[:4]) == set(said[-4:])
    assert set(got) == set(said[-8:])
    assert search(index, "the", limit=3, syntax="fts5", recency=False)  # fts5: no windows
