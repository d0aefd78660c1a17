"""What the command line prints for people: tables, the status, times in the operator's zone.

The formatting of single values (`when`, `ago`, `size`, `duration`) is pure and tested as such;
the printers build `rich` tables and text. `rich` is imported inside the printers only, so that
commands printing JSON (adapters' scripts, `--json`) start without it. `--json` output is never
made here: it is the daemon's answer as it came.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.core import ids

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

NO_TIME = "-"


def ago(seconds: float) -> str:
    """A relative age for a duration in the past ("3 min ago"); negative means the future."""
    future = seconds < 0
    s = abs(seconds)
    if s < 45:
        return "just now" if not future else "in a moment"
    if s < 3600:
        text = f"{max(1, round(s / 60))} min"
    elif s < 86_400:
        text = f"{round(s / 3600)} h"
    elif s < 2 * 86_400:
        text = "1 day"
    else:
        text = f"{round(s / 86_400)} days"
    return f"in {text}" if future else f"{text} ago"


def when(ms: Any, now_ms: float | None = None) -> str:
    """Epoch milliseconds as local time with its relative age, e.g. "2026-12-06 05:01:22
    (3 min ago)"; "-" for a missing time."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return NO_TIME
    now = ids.now_ms() if now_ms is None else now_ms
    local = datetime.fromtimestamp(ms / 1000).astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S} ({ago((now - ms) / 1000)})"


def local_time(iso: Any) -> str:
    """An ISO-8601 time from a transcript (UTC, "2026-12-06T04:00:00.000Z") in the local zone,
    to the second; the text itself when it is not one, "-" when missing."""
    if not isinstance(iso, str) or not iso:
        return NO_TIME
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso[:19]
    if t.tzinfo is None:  # a date-only or naive time: shown as written
        return f"{t:%Y-%m-%d %H:%M:%S}"
    return f"{t.astimezone():%Y-%m-%d %H:%M:%S}"


def clock(ms: float | None = None) -> str:
    """The local time of day, for lines that arrive as they happen (`sessiond events`)."""
    t = time.time() if ms is None else ms / 1000
    return f"{datetime.fromtimestamp(t).astimezone():%H:%M:%S}"


def size(n: Any) -> str:
    """Bytes for people: 0 B, 812 B, 4.2 KiB, 1.5 MiB."""
    if not isinstance(n, int):
        return str(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: Any) -> str:
    """A span for people: 4.8 s, 12 min 5 s, 3 h 2 min, 2 days 1 h."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return str(seconds)
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min"
    d, h = divmod(h, 24)
    return f"{d} day{'s' if d != 1 else ''} {h} h"


def value(key: str, v: Any, now_ms: float | None = None) -> str:
    """One status value, readable: times, sizes and durations by their key's name, lists and
    nested values as plain text, never a Python repr."""
    if v is None:
        return NO_TIME
    if isinstance(v, bool):
        return "yes" if v else "no"
    # Containers first: a list under a key named for a unit (`seconds: [None, 4]`) is formatted
    # element by element, so no element reaches `str()` as a Python repr.
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {value(str(k), x, now_ms)}" for k, x in v.items()) or "none"
    if isinstance(v, list | tuple):
        return ", ".join(value(key, x, now_ms) for x in v) or "none"
    if key.endswith("At") and isinstance(v, int | float):
        return when(v, now_ms)
    if key.endswith("Bytes") or key == "bytes":
        return size(v)
    if key.endswith("Seconds") or key == "seconds":
        return duration(v)
    return str(v)


LABELS = {
    "version": "version",
    "pid": "pid",
    "startedAt": "started",
    "uptimeSeconds": "uptime",
    "stateDir": "state folder",
    "socket": "socket",
    "storage": "storage",
    "agents": "sessions per agent",
    "sessions": "sessions",
    "connections": "connections",
    "ingested": "messages ingested",
    "appended": "entries appended",
    "duplicates": "duplicates",
    "resets": "resets",
    "rejected": "rejected",
    "batches": "batches",
    "checkpoints": "checkpoints",
    "lastCheckpointAt": "last checkpoint",
    "journalBytes": "journal",
    "lagSessions": "sessions behind",
    "lagBytes": "bytes behind",
    "lagSeconds": "behind by",
    "lastSyncAt": "last sync",
    "workerPid": "worker pid",
    "workerStarts": "worker starts",
}


def label(key: str) -> str:
    """A status key for people: known keys by name, others split at their capitals."""
    if key in LABELS:
        return LABELS[key]
    words = "".join(f" {c.lower()}" if c.isupper() else c for c in key)
    return words.strip()


def status_lines(status: Mapping[str, Any], now_ms: float | None = None) -> list[str]:
    """The `status` answer as aligned "label  value" lines; sections (backup, search, ...)
    follow under their own heading, so keys the daemon adds later show up too."""
    flat = [(k, v) for k, v in status.items() if not _is_section(k, v)]
    sections = [(k, v) for k, v in status.items() if _is_section(k, v)]
    width = max([len(label(k)) for k, _ in flat] + [0])
    lines = [f"{label(k):<{width}}  {value(k, v, now_ms)}" for k, v in flat]
    for name, section in sections:
        lines.append("")
        lines.append(f"{name}:")
        inner = list(section.items())
        w = max([len(label(k)) for k, _ in inner] + [0])
        lines += [f"  {label(k):<{w}}  {value(k, v, now_ms)}" for k, v in inner]
    return lines


def _is_section(key: str, v: Any) -> bool:
    # `agents` is a small map of counts that reads well on one line.
    return isinstance(v, Mapping) and key != "agents"


def console() -> Console:
    """A console on stdout; when stdout is not a terminal, wide enough that no row is wrapped
    or cut (a pipe to grep wants whole session ids), and without colour."""
    import sys

    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(width=None if tty else 10_000, no_color=not tty, highlight=False)


def print_table(t: Table) -> None:
    """Print a table on stdout without the padding rich leaves at the ends of lines."""
    out = console()
    with out.capture() as captured:
        out.print(t)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


def table(columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    """A table with a header row and plain columns (no cell is wrapped)."""
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in rows:
        t.add_row(*r)
    return t


def sessions_table(sessions: list[dict[str, Any]], now_ms: float | None = None) -> Table:
    """`sessions list`: one row per session, most recently updated first (the daemon's order)."""
    return table(
        ("UPDATED", "SESSION KEY", "SESSION ID", "CHANNEL", "TOKENS", "COMPACTIONS"),
        (
            (
                when(s.get("updatedAt"), now_ms),
                str(s.get("sessionKey") or NO_TIME),
                str(s.get("sessionId") or NO_TIME),
                str(s.get("lastChannel") or s.get("channel") or NO_TIME),
                value("totalTokens", s.get("totalTokens")),
                value("compactionCount", s.get("compactionCount")),
            )
            for s in sessions
        ),
    )


def archived_table(archived: list[dict[str, Any]], now_ms: float | None = None) -> Table:
    """`sessions archived`: why and when each session ended, newest first."""
    return table(
        ("ARCHIVED", "REASON", "MESSAGES", "SESSION KEY", "SESSION ID", "SUCCESSOR"),
        (
            (
                when(a.get("archivedAt"), now_ms),
                str(a.get("reason") or NO_TIME),
                value("messages", a.get("messages")),
                str(a.get("sessionKey") or NO_TIME),
                str(a.get("sessionId") or NO_TIME),
                str(a.get("successor") or NO_TIME),
            )
            for a in archived
        ),
    )


def print_entry(res: dict[str, Any]) -> None:
    """`sessions show`: one registry entry, times in the local zone."""
    for k in ("sessionKey", "agentId", "sessionId", "chatType", "channel", "lastChannel"):
        if k in res:
            print(f"{k:18} {res[k]}")
    for k in ("sessionStartedAt", "updatedAt", "lastInteractionAt"):
        if k in res:
            print(f"{k:18} {when(res[k])}")
    for k in ("totalTokens", "compactionCount", "sessionFile"):
        if k in res:
            print(f"{k:18} {res[k]}")


def render_entry(e: dict[str, Any]) -> str:
    """`sessions history`: one transcript entry on one line."""
    ts = local_time(e.get("timestamp"))
    msg = e.get("message")
    if isinstance(msg, dict):
        role = msg.get("role", "?")
        content = msg.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for b in content:
                if isinstance(b, dict):
                    if b.get("type") == "text":
                        parts.append(str(b.get("text", "")))
                    else:
                        parts.append(f"[{b.get('type')}]")
            text = " ".join(parts)
        else:
            text = ""
        return f"{ts}  {role:10} {text}"
    return f"{ts}  [{e.get('type')}]"


def event_line(event: str, params: Mapping[str, Any], now_ms: float | None = None) -> str:
    """One `sessiond events` line: the local time it arrived, the event, its fields."""
    fields = "  ".join(f"{k}={value(k, v, now_ms)}" for k, v in params.items())
    return f"{clock(now_ms)}  {event:16} {fields}".rstrip()
