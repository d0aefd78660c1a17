"""Lineage rebuilt from key and time order, and walked back for `previous` (daemon/core/lineage)."""

from __future__ import annotations

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
