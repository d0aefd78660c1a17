"""The commands that work on files rather than through the daemon: `config check`,
`import-openclaw` and `reindex`. They never start the daemon (nothing here imports daemon.app);
import and reindex refuse while a daemon holds the state folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli_common import (
    EXIT_FAIL,
    EXIT_OK,
    UsageError,
    common,
    config_of,
    print_json,
)
from daemon.config import Config
from daemon.config_load import agent_ids, resolve_state_dir, workspace_of
from daemon.errors import os_reason

if TYPE_CHECKING:
    from daemon.backfill import Filled


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    q = csub.add_parser(
        "check",
        help="validate a config file",
        description="Validate the config file that `run` would use (or --config PATH). Exit 0 "
        "when valid, 1 with one line per problem (file, line:column or key path) when not.",
    )
    common(q, json_flag=True)

    p = sub.add_parser(
        "import-openclaw",
        help="import an OpenClaw state folder (JSONL or SQLite era)",
        description="Copy the sessions, archives and memory files of an OpenClaw state folder "
        "(e.g. ~/.openclaw) into the state folder, verified by sha256 or entry count. The "
        "source is only read. Re-running skips what is already there. Refuses while a daemon "
        "holds the state folder. Exit 0 when everything was imported, 1 when anything could "
        "not be (the rest is imported and the report says why), 2 for bad usage.",
    )
    common(p, json_flag=True)
    p.add_argument("src", metavar="SRC", help="the OpenClaw state folder to import from")
    p.add_argument(
        "--agent",
        metavar="ID",
        help="import only this source agent (its id and session keys are kept as they are)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="read and verify everything, write nothing"
    )


def add_reindex_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reindex",
        help="rebuild the search index from the files",
        description="Build <stateDir>/index/ from scratch out of the transcripts, archives and "
        "memory files, into a new file that replaces the old one when complete. Works on the "
        "folder itself: refuses while a daemon holds it (stop the daemon, or delete the index "
        "folder and restart the daemon, which rebuilds it too). Progress on a terminal.",
    )
    common(p, json_flag=True)


def cmd_config_check(args: argparse.Namespace) -> int:
    from daemon.openclaw_config import check_report

    cfg, path = config_of(args)
    report = check_report(path, cfg)
    if args.json:
        print_json({"ok": True, **report})
        return EXIT_OK
    print(f"ok: {report['config']}")
    oc = report.get("openclaw")
    if oc is not None:
        print(f"read from OpenClaw's {oc['file']}: {', '.join(oc['taken']) or 'nothing'}")
        print(f"ignored ({len(oc['ignored'])} gateway keys): {', '.join(oc['ignored']) or '-'}")
        for note in oc["notes"]:
            print(f"note: {note}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    if oc is not None:
        print("effective config:")
        print_json(report["effective"])
    return EXIT_OK


def cmd_import_openclaw(args: argparse.Namespace) -> int:
    from daemon.importers import SourceError, import_openclaw

    cfg, _ = config_of(args)
    state_dir = resolve_state_dir(args.state_dir, cfg)
    try:
        report = import_openclaw(
            Path(args.src).expanduser(),
            state_dir,
            lambda agent: Path(workspace_of(cfg, state_dir, agent)),
            agent=args.agent,
            dry_run=args.dry_run,
        )
    except SourceError as e:
        raise UsageError(str(e)) from None
    filled, fill_error = _fill_mirror(cfg, state_dir) if not args.dry_run else (None, None)
    if args.json:
        doc = report.to_json()
        if filled is not None or fill_error is not None:
            doc["mirror"] = (
                {"error": fill_error}
                if fill_error
                else {"sessions": filled.sessions, "records": filled.records}
                if filled
                else None
            )
        print_json(doc)
    else:
        print(report.render())
        if fill_error:
            print(f"backup mirror not filled: {fill_error} (`sessiond doctor --repair` fills it)")
        elif filled is not None:
            print(f"backup mirror: {filled.records} record(s) for {filled.sessions} session(s)")
    return EXIT_OK if report.ok and fill_error is None else EXIT_FAIL


def _fill_mirror(cfg: Config, state_dir: Path) -> tuple[Filled | None, str | None]:
    """After an import: the mirror holds what the imported transcripts hold, as the daemon
    would have mirrored it (`doctor` then finds no session behind)."""
    from daemon.backfill import fill_mirror

    try:
        return fill_mirror(cfg, state_dir), None
    except OSError as e:
        return None, os_reason(e)


# ---------------------------------------------------------------------------------------------
# search and reindex


def cmd_reindex(args: argparse.Namespace) -> int:
    import time

    from daemon.lock import StateLock
    from daemon.search import rebuild

    cfg, _ = config_of(args)
    state_dir = resolve_state_dir(args.state_dir, cfg)
    if not state_dir.is_dir():
        raise UsageError(f"no state folder at {state_dir}")
    lock = StateLock(state_dir)
    lock.acquire()
    started = time.monotonic()
    shown = [0.0]

    def progress(done: int, total: int, entries: int) -> None:
        now = time.monotonic()
        if now - shown[0] < 0.2 and done < total:
            return
        shown[0] = now
        rate = entries / max(now - started, 1e-6)
        sys.stderr.write(
            f"\rindexing: {done:,}/{total:,} files, {entries:,} entries ({rate:,.0f}/s)   "
        )
        sys.stderr.flush()

    tty = sys.stderr.isatty() and not args.json
    try:
        stats = rebuild(
            state_dir,
            lambda agent: Path(workspace_of(cfg, state_dir, agent)),
            agent_ids(cfg),
            progress if tty else None,
        )
    finally:
        lock.release()
        if tty:
            sys.stderr.write("\n")
    if args.json:
        print_json(stats.to_json())
    else:
        print(
            f"indexed {stats.docs:,} entries from {stats.files:,} files in "
            f"{stats.seconds:.1f} s ({stats.docs / max(stats.seconds, 1e-6):,.0f} entries/s)"
        )
    return EXIT_OK
