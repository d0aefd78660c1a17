"""The maintenance commands: `doctor`, `backup verify|restore`, `retention` (SPEC 7).

They work on the state folder itself, not through the daemon's socket, and refuse to change it
while a daemon holds its lock (exit 1, naming the holder's pid); the checks that only read
(`doctor` without --repair, `backup verify`, `retention --dry-run`) also run beside a daemon.
Long work shows progress on a terminal (stderr), never in --json output.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.core.bucket import is_remote
from daemon.core.ids import now_ms
from daemon.errors import ConfigError

COMMANDS = ("doctor", "backup", "retention")

AddCommon = Callable[..., None]


def add_parsers(sub: Any, common: AddCommon) -> None:
    """Add the maintenance commands to the `sessiond` parser."""
    p = sub.add_parser(
        "doctor",
        help="check a state folder; --repair fixes what it can without losing anything",
        description="Check the config, the lock, permissions (0600 files, 0700 folders), torn "
        "last lines, the registry against the transcripts, orphan transcripts, half-done "
        "archive moves, FTS5 and the backup mirror's lag. Prints what it finds and what "
        "--repair would do. --repair (refused while a daemon runs) only moves, adopts and "
        "appends; nothing is ever deleted. Exit 0 when nothing is wrong (or everything was "
        "repaired), 1 otherwise.",
    )
    common(p, json_flag=True)
    p.add_argument("--repair", action="store_true", help="repair what was found")

    p = sub.add_parser("backup", help="verify the backup mirror, or restore from it")
    bsub = p.add_subparsers(dest="backup_command", metavar="SUBCOMMAND", required=True)
    q = bsub.add_parser(
        "verify",
        help="prove that the backup mirror and the transcripts agree",
        description="Compare, per session, the transcripts' entries with the mirror's by entry "
        "id: entries missing from the mirror, only in the mirror, mirrored twice, or different. "
        "Exit 0 when they agree, 1 on any difference.",
    )
    common(q, json_flag=True)
    q.add_argument(
        "--from",
        dest="source",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="the mirror, a folder or a bucket (default sessions.backup.path)",
    )
    q = bsub.add_parser(
        "restore",
        help="rebuild a lost state folder from the backup mirror",
        description="Rebuild transcripts (v3, headers with sessionKey), sessions.json, the "
        "archive index and recent message ids from the mirror alone, into --state-dir, which "
        "must hold no sessions. Check the result with `sessiond backup verify --from DIR`.",
    )
    common(q, json_flag=True)
    q.add_argument(
        "--from",
        dest="source",
        metavar="DIR|s3://BUCKET/PREFIX",
        required=True,
        help="the mirror, a folder or a bucket (downloaded into NEW's sessions.backup.path)",
    )

    p = sub.add_parser(
        "retention",
        help="compress old archives and finished backups (never deletes)",
        description="Compress archived transcripts older than retention.compressAfterDays to "
        ".gz, and mirrors of ended sessions unchanged for sessions.backup.retention_days into "
        "<backup>/archive/: each written, synced, decompressed and compared before the "
        "original goes. The daemon runs the same sweep every hour.",
    )
    common(p, json_flag=True)
    p.add_argument("--dry-run", action="store_true", help="only say what would be compressed")


class Progress:
    """`label done/total` on one terminal line of stderr; silent when stderr is not a tty."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        sys.stderr.write(f"\r{self.label} {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "retention":
        return cmd_retention(args)
    if args.backup_command == "verify":
        return cmd_verify(args)
    return cmd_restore(args)


def _setup(args: argparse.Namespace) -> tuple[Any, Path | None, Path]:
    from daemon.cli_common import config_of
    from daemon.config_load import resolve_state_dir

    cfg, path = config_of(args)
    return cfg, path, resolve_state_dir(args.state_dir, cfg)


def cmd_doctor(args: argparse.Namespace) -> int:
    from daemon.cli_common import EXIT_FAIL, EXIT_OK, print_json
    from daemon.config import Config
    from daemon.config_load import find_config, load_config, resolve_state_dir
    from daemon.doctor import run_doctor
    from daemon.lock import StateLock
    from daemon.openclaw_config import detect

    path = find_config(args.config) or detect(resolve_state_dir(args.state_dir, Config()))
    try:
        cfg = load_config(path)
    except ConfigError:
        cfg = Config()  # doctor reports the config's problems itself
    state_dir = resolve_state_dir(args.state_dir, cfg)
    if not state_dir.is_dir():
        return _no_folder(state_dir)
    lock = None
    if args.repair:
        lock = StateLock(state_dir)
        lock.acquire()  # StateLocked: exit 1 naming the daemon's pid
    try:
        report = run_doctor(state_dir, path, repair=args.repair)
    finally:
        if lock is not None:
            lock.release()
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_verify(args: argparse.Namespace) -> int:
    from daemon.backup import backup_root
    from daemon.cli_common import EXIT_FAIL, EXIT_OK, UsageError, print_json
    from daemon.core.exclusions import excluded
    from daemon.doctor import lock_holder
    from daemon.verify import verify

    cfg, _path, state_dir = _setup(args)
    patterns = cfg.sessions.backup.exclude_patterns
    if args.source and is_remote(args.source):
        # A copy without the marker: ours to remove once compared (a bucket's copy lags a
        # running daemon by its open segments, so no second look either).
        tmp = Path(tempfile.mkdtemp(prefix="sessiond-verify-"))
        try:
            root = _download(args.source, tmp, marker=False)
            report = verify(
                state_dir,
                root,
                excluded=lambda key: excluded(key, patterns),
                daemon_running=False,
                progress=Progress("verifying sessions"),
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        root = Path(args.source).expanduser() if args.source else backup_root(cfg, state_dir)
        if not root.is_dir():
            raise UsageError(f"no backup mirror at {root}")
        report = verify(
            state_dir,
            root,
            excluded=lambda key: excluded(key, patterns),
            daemon_running=lock_holder(state_dir) is not None,
            progress=Progress("verifying sessions"),
        )
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_restore(args: argparse.Namespace) -> int:
    from daemon.cli_common import EXIT_FAIL, EXIT_OK, UsageError, print_json
    from daemon.config_load import workspace_of
    from daemon.lock import StateLock
    from daemon.restore import RestoreError, restore
    from daemon.store.fsutil import ensure_dir

    cfg, _path, state_dir = _setup(args)
    if not args.state_dir:
        raise UsageError("give the new state folder with --state-dir NEW")
    if is_remote(args.source):
        from daemon.backup import backup_root
        from daemon.restore import has_sessions

        if state_dir.is_dir() and has_sessions(state_dir):
            raise UsageError(f"{state_dir} already holds sessions: a restore never merges")
        # Into NEW's own mirror folder: a daemon on NEW goes on with it (and with the bucket).
        root = backup_root(cfg, state_dir)
        if root.exists() and any(root.iterdir()):
            raise UsageError(
                f"{root} (NEW's sessions.backup.path) is not empty: restore from that folder "
                "with --from, or point sessions.backup.path elsewhere"
            )
        _download(args.source, root, marker=True)
    else:
        root = Path(args.source).expanduser()
    if not root.is_dir():
        raise UsageError(f"no backup mirror at {root}")
    ensure_dir(state_dir)
    lock = StateLock(state_dir)
    lock.acquire()
    try:
        report = restore(
            root,
            state_dir,
            workspace=lambda agent: workspace_of(cfg, state_dir, agent),
            dedup_max=cfg.daemon.dedupMaxPerAgent,
            dedup_window_ms=cfg.daemon.dedupWindowHours * 3_600_000,
            now_ms=now_ms(),
            progress=Progress("restoring sessions"),
        )
    except RestoreError as e:
        print(f"sessiond: {e}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        lock.release()
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return EXIT_OK


def _download(url: str, dest: Path, *, marker: bool) -> Path:
    """The bucket's mirror, checked and written into `dest` in the folder layout."""
    from daemon.cli_common import UsageError
    from daemon.core.bucket import parse_target
    from daemon.remote import RemoteError, download

    try:
        target = parse_target(url)
    except ValueError as e:
        raise UsageError(f"--from {url}: {e}") from e
    try:
        got = download(target, dest, marker=marker, progress=Progress("downloading the mirror"))
    except RemoteError as e:
        # The bucket is unreachable or holds something that does not check out: a failure
        # (exit 1), not a wrong command line.
        print(f"sessiond: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    print(
        f"downloaded {got.sessions} session(s), {got.objects} object(s), {got.bytes} bytes "
        f"from {url}",
        file=sys.stderr,
    )
    return dest


def cmd_retention(args: argparse.Namespace) -> int:
    from daemon.backup import backup_root
    from daemon.cli_common import EXIT_FAIL, EXIT_OK, print_json
    from daemon.lock import StateLock
    from daemon.retention import execute, plan

    cfg, _path, state_dir = _setup(args)
    if not state_dir.is_dir():
        return _no_folder(state_dir)
    lock = None
    if not args.dry_run:
        lock = StateLock(state_dir)
        lock.acquire()  # StateLocked: exit 1 naming the daemon's pid
    try:
        root = backup_root(cfg, state_dir)
        active = _active_sessions(state_dir)
        p = plan(
            state_dir,
            root,
            compress_after_days=cfg.retention.compressAfterDays,
            retention_days=cfg.sessions.backup.retention_days,
            now_ms=now_ms(),
            active=active,
        )
        if args.dry_run:
            if args.json:
                print_json({"dryRun": True, **p.to_json()})
            else:
                for a in p.archives:
                    verb = "finish compressing" if a.finish else "compress"
                    print(f"would {verb} {a.plain.relative_to(state_dir)} ({a.bytes} bytes)")
                for b in p.backups:
                    print(f"would compress the backup of {b.session_id} ({b.bytes} bytes)")
                print(
                    f"dry run: {len(p.archives)} archive(s) and {len(p.backups)} backup(s) to "
                    "compress; nothing was changed"
                )
            return EXIT_OK
        result = execute(p, root, Progress("compressing"))
    finally:
        if lock is not None:
            lock.release()
    if args.json:
        print_json(result.to_json())
    else:
        for f in result.failed:
            print(f"failed: {f}")
        print(
            f"compressed {result.archives} archive(s) and {result.backups} backup(s): "
            f"{result.bytes_before} -> {result.bytes_after} bytes; nothing was deleted"
        )
    return EXIT_FAIL if result.failed else EXIT_OK


def _no_folder(state_dir: Path) -> int:
    print(f"sessiond: there is no state folder at {state_dir}", file=sys.stderr)
    return 1


def _active_sessions(state_dir: Path) -> set[str]:
    """Session ids the registries name (their mirrors may still grow)."""
    import os

    from daemon.store.registry import SESSIONS_JSON, read_registry

    out: set[str] = set()
    agents = state_dir / "agents"
    for agent in os.scandir(agents) if agents.is_dir() else []:
        # With its change log applied (daemon/store/registry_log.py): the file alone may lag.
        doc = read_registry(Path(agent.path) / "sessions" / SESSIONS_JSON)[0]
        for entry in doc.values() if doc is not None else []:
            if isinstance(entry, dict) and isinstance(entry.get("sessionId"), str):
                out.add(entry["sessionId"])
    return out
