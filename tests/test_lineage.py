"""Lineage rebuilt from key and time order, and walked back for `previous` (daemon/core/lineage)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.core.lineage import Ended, rebuild, walk_back


def test_rebuild_chains_by_end_time_whatever_the_input_order() -> None:
    a, b, c = Ended("a", 1, 10), Ended("b", 11, 20), Ended("c", 21, 30)
    links = rebuild([c, a, b], active="d", active_started=31)
    assert links == {"a": (None, "b"), "b": ("a", "c"), "c": ("b", "d")}


def test_rebuild_keeps_known_links_and_does_not_chain_an_older_active_session() -> None:
    a = Ended("a", 1, 10, successor="x")
    b = Ended("b", 50, 60)
    links = rebuild([a, b], active="d", active_started=40)
    assert links == {"a": (None, "x"), "b": ("a", None)}


def test_walk_back_follows_successors_then_falls_back_to_time() -> None:
    # c is newest by time but the chain from "d" names b as its predecessor.
    a = Ended("a", 1, 10, successor="b")
    b = Ended("b", 11, 20, successor="d")
    c = Ended("c", 21, 30)
    assert [e.session_id for e in walk_back("d", [a, b, c])] == ["b", "a", "c"]
    assert [e.session_id for e in walk_back(None, [a, b, c])] == ["c", "b", "a"]
    assert walk_back("d", []) == []


ENDED = st.lists(
    st.builds(
        Ended,
        st.uuids().map(str),
        st.one_of(st.none(), st.integers(0, 10**6)),
        st.integers(0, 10**6),
    ),
    max_size=12,
    unique_by=lambda e: e.session_id,
)


@given(ENDED)
def test_rebuild_without_known_links_is_one_chain_in_time_order(ended: list[Ended]) -> None:
    links = rebuild(ended)
    order = sorted(ended, key=lambda e: (e.ended_at, e.started_at or 0, e.session_id))
    ids = [e.session_id for e in order]
    assert [links[i] for i in ids] == [
        (ids[n - 1] if n else None, ids[n + 1] if n + 1 < len(ids) else None)
        for n in range(len(ids))
    ]


@given(ENDED, st.one_of(st.none(), st.uuids().map(str)))
def test_walk_back_visits_every_ended_session_once(ended: list[Ended], current: str | None) -> None:
    chained = [
        Ended(e.session_id, e.started_at, e.ended_at, successor=links[1])
        for e in ended
        for links in [rebuild(ended, current).get(e.session_id, (None, None))]
    ]
    walked = walk_back(current, chained)
    assert sorted(e.session_id for e in walked) == sorted(e.session_id for e in ended)
    # Following the rebuilt chain back from the active session is newest-to-oldest by time.
    newest_first = sorted(ended, key=lambda e: (e.ended_at, e.started_at or 0, e.session_id))
    assert [e.session_id for e in walked] == [e.session_id for e in reversed(newest_first)]
