"""OpenClaw's spellings of our params, rewritten to ours before a request is admitted. Pure.

Rewriting before the role check (daemon/core/roles.py; the order is daemon/methods.py's)
matters: an agent that names another agent's session as `key` is refused exactly as with
`sessionKey`, because the role rules only ever see our spelling.

    sessions.*      key                  -> sessionKey   (OpenClaw's gateway param)
    memory.search   include_sessions     -> includeSessions
                    session              -> sessionKey (has ":"), else sessionId
    memory.search,  after / before as a date "YYYY-MM-DD": the start of that day in
    sessions.archived                       `daemon.timezone`, in epoch milliseconds

Giving both spellings with different values is an error naming the alias; the same value twice
is accepted.
"""

from __future__ import annotations

import re
from datetime import date, datetime, tzinfo
from typing import Any

from daemon.errors import InvalidParams

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATED = ("memory.search", "sessions.archived")


def canonical(method: str, params: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    """`params` with OpenClaw's spellings replaced by ours (the same object when none is used)."""
    out = params
    if method.startswith("sessions.") and "key" in params:
        out = _rename(out, "key", "sessionKey")
    if method == "memory.search":
        if "include_sessions" in params:
            out = _rename(out, "include_sessions", "includeSessions")
        if "session" in params:
            v = params["session"]
            ours = "sessionKey" if isinstance(v, str) and ":" in v else "sessionId"
            out = _rename(out, "session", ours)
    if method in _DATED:
        for field in ("after", "before"):
            v = out.get(field)
            if isinstance(v, str) and _DATE.fullmatch(v):
                out = {**out, field: day_start_ms(field, v, tz)}
    return out


def _rename(params: dict[str, Any], alias: str, ours: str) -> dict[str, Any]:
    out = dict(params)
    v = out.pop(alias)
    if ours in out and out[ours] != v:
        raise InvalidParams(alias, f"is OpenClaw's spelling of {ours}; give one of them, not both")
    out[ours] = v
    return out


def day_start_ms(field: str, text: str, tz: tzinfo) -> int:
    """Midnight at the start of a calendar day in `tz` (the first instant of the day when a DST
    change skips midnight), as epoch ms."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidParams(field, f"is not a calendar date: {text!r}") from None
    local = datetime(day.year, day.month, day.day, tzinfo=tz)
    # A midnight that DST skips is read with the offset before the change (fold=0), which puts
    # it at the instant of the change: the day's first instant.
    return int(local.timestamp() * 1000)
