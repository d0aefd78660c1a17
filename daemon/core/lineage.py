"""Lineage: which session of a key came before which. Pure: ids and times in, links out.

sessiond names both ends of every reset it makes (the index line's `successor`, the new header's
`predecessor`). Archives adopted from OpenClaw carry no such names (a `*.jsonl.reset.<ts>` file
says only when it ended), so their chain is rebuilt from the key and the time order: within one
key, each ended session is followed by the next one to end, and the newest by the key's active
session when that one began after it. Links already known (from the registry's usage families,
or written by sessiond) are kept; only the missing ones are filled in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ended:
    """An ended session of one key, as the chain sees it."""

    session_id: str
    started_at: int | None
    ended_at: int  # when it ended (archive time)
    predecessor: str | None = None
    successor: str | None = None


def _time_order(e: Ended) -> tuple[int, int, str]:
    """End time, then start time, then id: a total order, whatever order the input came in."""
    return (e.ended_at, e.started_at or 0, e.session_id)


def rebuild(
    ended: Iterable[Ended], active: str | None = None, active_started: int | None = None
) -> dict[str, tuple[str | None, str | None]]:
    """session id -> (predecessor, successor) for the ended sessions of one key, oldest first by
    end time (then start time, then id, so the result does not depend on the input's order).

    `active` is the key's current session: it succeeds the newest ended one unless that one began
    after it (then the two are not one chain and nothing is guessed)."""
    items = sorted(ended, key=_time_order)
    out: dict[str, tuple[str | None, str | None]] = {}
    for n, e in enumerate(items):
        before = items[n - 1].session_id if n > 0 else None
        if n + 1 < len(items):
            after: str | None = items[n + 1].session_id
        elif active is not None and (
            active_started is None or e.started_at is None or active_started >= e.started_at
        ):
            after = active
        else:
            after = None
        out[e.session_id] = (e.predecessor or before, e.successor or after)
    return out


def walk_back(current: str | None, ended: Sequence[Ended]) -> list[Ended]:
    """The ended sessions of one key, newest first, following the chain from `current` (the
    key's active session, or None): each step takes the session whose successor is the one
    reached last; where no session names it, the newest one not yet taken, by end time."""
    by_successor = {e.successor: e for e in ended if e.successor is not None}
    left = sorted(ended, key=_time_order, reverse=True)
    taken: set[str] = set()
    out: list[Ended] = []
    at = current
    while len(out) < len(ended):
        e = by_successor.get(at) if at is not None else None
        if e is None or e.session_id in taken:
            e = next(x for x in left if x.session_id not in taken)
        taken.add(e.session_id)
        out.append(e)
        at = e.session_id
    return out
