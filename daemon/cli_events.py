"""`sessiond events --follow`: the daemon's notifications (events.subscribe), printed as they
arrive.

The daemon keeps no history of them (they are sent to whoever is subscribed at the moment), so
the command only follows; what happened before is in the daemon's log. Each line for people is
the local time it arrived, the event and its fields; with --json, one object per line:
{"event": NAME, "params": {...}}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import orjson

from daemon import cli_output
from daemon.client import Client, ConnectError


def add_parser(sub: Any, common: Callable[..., None]) -> None:
    """Add `events` to the `sessiond` parser."""
    p = sub.add_parser(
        "events",
        help="print the daemon's events as they happen (--follow)",
        description="Subscribe to the daemon's events (events.subscribe: session.created, "
        "session.reset, compaction.done, memory.flushed, job.run) and print each as it "
        "arrives, until Ctrl-C or the daemon stops. The daemon keeps no history of events, so "
        "--follow is required; past events are in its log (journalctl -u sessiond). With "
        '--json, one object per line: {"event": NAME, "params": {...}}.',
    )
    common(p, json_flag=True)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument(
        "--filter",
        action="append",
        metavar="PATTERN",
        help="only events whose name matches this glob (session.*, job.run); repeatable",
    )


def follow(args: argparse.Namespace, connect: Callable[[], Client]) -> int:
    """Subscribe and print until Ctrl-C (exit 0) or until the daemon goes away (ConnectError,
    exit 1). A --filter that matches none of the daemon's events is bad usage."""
    from daemon.cli_common import EXIT_OK, UsageError

    if not args.follow:
        raise UsageError(
            "the daemon keeps no history of events: `sessiond events --follow` prints them as "
            "they happen (past ones are in its log: journalctl -u sessiond)"
        )
    patterns: list[str] = args.filter or ["*"]
    with connect() as c:
        known = [str(e) for e in c.call("events.subscribe", {}).get("subscribed", [])]
        for p in patterns:
            if not any(fnmatchcase(e, p) for e in known):
                raise UsageError(f"--filter {p!r} matches no event; events: {', '.join(known)}")
        # On stderr, also with --json: a script can wait for it to know it is subscribed.
        shown = "" if patterns == ["*"] else " " + " ".join(patterns)
        print(f"# following events{shown}; Ctrl-C ends", file=sys.stderr, flush=True)
        try:
            for note in c.notifications():
                event = str(note.get("method"))
                if any(fnmatchcase(event, p) for p in patterns):
                    print(_line(event, note.get("params") or {}, json=args.json), flush=True)
        except KeyboardInterrupt:
            return EXIT_OK
        except ConnectError:
            raise ConnectError("the daemon closed the connection (it stopped)") from None
    return EXIT_OK


def _line(event: str, params: dict[str, Any], *, json: bool) -> str:
    if json:
        return orjson.dumps({"event": event, "params": params}).decode()
    return cli_output.event_line(event, params)
