"""/context detail (daemon/store/context.py detail_reply): each entry's share of the tokens."""

from __future__ import annotations

import math
import re
from typing import Any

from daemon.store.context import DETAIL_LINES, ContextView, detail_reply


def msg(eid: str, role: str, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": eid,
        "message": {"role": role, "content": [{"type": "text", "text": text}]},
    }


def shares(reply: str) -> list[tuple[int, float, str]]:
    rows = []
    for line in reply.splitlines()[1:]:
        m = re.match(r"\s*(\d+)\s+([\d.]+)%  (.*)$", line)
        assert m, line
        rows.append((int(m.group(1)), float(m.group(2)), m.group(3)))
    return rows


def test_each_entry_and_the_summary_get_their_share() -> None:
    view = ContextView(
        compaction={"type": "compaction", "id": "c0ffee00", "summary": "s" * 400},
        kept=[msg("aaaa0001", "user", "x" * 100)],
        after=[msg("aaaa0002", "assistant", "y" * 300), {"type": "custom", "id": "z"}],
    )
    reply = detail_reply("agent:main:main", "0123456789abcdef", view)
    assert reply.splitlines()[0].startswith("Context of agent:main:main (session 01234567)")
    rows = shares(reply)
    assert [n for n, _, _ in rows] == [100, 25, 75]
    assert [p for _, p, _ in rows] == [50.0, 12.5, 37.5]
    assert "summary (compaction c0ffee00)" in rows[0][2]
    assert rows[1][2].startswith("aaaa0001 user") and "xxxx" in rows[1][2]
    assert "about 200 tokens in 3 entries" in reply


def test_a_long_context_shows_the_newest_entries_and_adds_up_the_rest() -> None:
    n = DETAIL_LINES + 15
    view = ContextView(after=[msg(f"{i:08x}", "user", "w" * 8) for i in range(n)])
    rows = shares(detail_reply("k", "s" * 16, view))
    assert len(rows) == DETAIL_LINES + 1
    assert rows[0] == (15 * 2, round(100 * 15 / n, 1), "... 15 older entries")
    assert rows[-1][2].startswith(f"{n - 1:08x}")
    assert sum(t for t, _, _ in rows) == 2 * n  # every token is in some line
    assert math.isclose(sum(p for _, p, _ in rows), 100, abs_tol=0.05 * len(rows))


def test_an_empty_context_says_so() -> None:
    assert "(nothing yet)" in detail_reply("k", "s" * 16, ContextView())
