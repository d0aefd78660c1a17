"""The `sessiond` command line.

Commands that serve data talk to the running daemon through `daemon.client` (a Unix socket,
`tcp://HOST:PORT`, or `tls://HOST:PORT` with `--tls-*` files; a token from `--token-file` or
`$SESSIOND_TOKEN`); `run` starts the daemon; `config check` validates a config file. The global
flags (`--config`, `--state-dir`, `--socket`, `--token-file`, `--tls-*`, `--json`) may stand
before or after the command. What is printed for people is made in `daemon.cli_output`;
`--json` prints the daemon's answer as it came. Exit codes: 0 success, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from daemon import __version__, cli_events, cli_output, guard, maintenance
from daemon.client import Client, ConnectError, RpcError
from daemon.config import Config
from daemon.config_load import find_config, load_config, resolve_socket_path, resolve_state_dir
from daemon.errors import UNAUTHENTICATED, ConfigError, ListenFailed, StateLocked

if TYPE_CHECKING:
    from daemon.backfill import Filled

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit 2)."""


def _global_flags(p: argparse.ArgumentParser, *, json_flag: bool, top: bool) -> None:
    """The flags every command takes, before or after its name. On a command's own parser they
    default to SUPPRESS, so that a value given before the command is not reset by it."""

    def default(v: Any) -> Any:
        return v if top else argparse.SUPPRESS

    p.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="config file (JSON5); default: see `run --help`",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=default(None),
        help="state folder (overrides daemon.stateDir)",
    )
    p.add_argument(
        "--socket",
        metavar="ADDRESS",
        default=default(None),
        help="the daemon's socket path, tcp://HOST:PORT for a TCP listener, or tls://HOST:PORT "
        "for a TLS listener (default daemon.socket, else <stateDir>/sessiond.sock)",
    )
    for flag, what in (
        (
            "--tls-ca",
            "PEM file of the CA that signed the daemon's certificate (default: the system's CAs)",
        ),
        ("--tls-cert", "PEM file of this client's certificate, for TLS listeners with clientCa"),
        ("--tls-key", "PEM file of the --tls-cert's private key (when not in that file)"),
    ):
        p.add_argument(flag, metavar="FILE", default=default(None), help=f"tls:// only: {what}")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help="file holding the token to present to the daemon (auth.hello); default "
        "$SESSIOND_TOKEN; needed on TCP and on listeners without a default role",
    )
    if json_flag:
        p.add_argument(
            "--json",
            action="store_true",
            default=default(False),
            help="print machine-readable JSON (the daemon's answer as it came)",
        )


def _common(p: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    _global_flags(p, json_flag=json_flag, top=False)
    p.set_defaults(json_ok=json_flag)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="sessiond keeps chat-agent sessions: durable, append-only transcripts in "
        "OpenClaw's format, served over a Unix socket (JSON-RPC 2.0, one object per line).",
    )
    parser.add_argument("--version", action="version", version=f"sessiond {__version__}")
    _global_flags(parser, json_flag=True, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground until SIGTERM or Ctrl-C. Config is read "
        "from --config, else $SESSIOND_CONFIG, else ~/.config/sessiond/config.json5, else "
        "/etc/sessiond/config.json5, else built-in defaults. State goes to --state-dir, else "
        "daemon.stateDir, else $STATE_DIRECTORY, else ~/.local/state/sessiond.",
    )
    _common(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "json", "console"])

    p = sub.add_parser(
        "send",
        help="ingest one message, as a channel adapter would",
        description="Send one inbound message through the daemon's pipeline and print the "
        "acknowledgement (sent only once the message is durably stored).",
    )
    _common(p, json_flag=True)
    p.add_argument("text", help="message text")
    p.add_argument("--channel", default="cli", help="channel name (default: cli)")
    p.add_argument(
        "--chat-type", default="direct", choices=["direct", "group", "channel", "thread"]
    )
    p.add_argument("--peer", help="the other party (direct) or the sender (default: $USER)")
    p.add_argument("--group", dest="group_id", help="group or channel id (group/channel/thread)")
    p.add_argument("--thread", dest="thread_id", help="thread or topic id")
    p.add_argument("--account", dest="account_id", help="channel account id")
    p.add_argument("--agent", dest="agent_id", help="route to this agent instead of bindings")
    p.add_argument("--message-id", help="adapter message id (makes retries idempotent)")
    p.add_argument("--sender-name", help="display name of the sender")

    p = sub.add_parser("sessions", help="list, show and read sessions")
    ssub = p.add_subparsers(dest="sessions_command", metavar="SUBCOMMAND", required=True)
    q = ssub.add_parser("list", help="list sessions, most recently updated first")
    _common(q, json_flag=True)
    q.add_argument("--agent", dest="agent_id", help="only this agent's sessions")
    q.add_argument(
        "--active",
        dest="active_minutes",
        type=int,
        metavar="MINUTES",
        help="only sessions updated in the last MINUTES",
    )
    q.add_argument("--limit", type=int, default=1000)
    q = ssub.add_parser("show", help="show one session's registry entry")
    _common(q, json_flag=True)
    q.add_argument("key", nargs="?", help="session key, e.g. agent:main:main")
    q.add_argument("--id", dest="session_id", help="session id instead of a key")
    q = ssub.add_parser("history", help="read a session's transcript, newest first")
    _common(q, json_flag=True)
    q.add_argument("key", nargs="?", help="session key")
    q.add_argument("--id", dest="session_id", help="session id instead of a key")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--before", type=int, help="cursor from a previous page")
    q.add_argument("--previous", type=int, help="1 = the session before the current one")
    q.add_argument("--no-tools", action="store_true", help="leave out tool calls and results")
    q = ssub.add_parser(
        "archived",
        help="list archived sessions (resets, expiries, adopted OpenClaw archives)",
        description="Archived sessions, newest first, with why they ended and their lineage. "
        "Read one with `sessions history --id SESSION_ID`.",
    )
    _common(q, json_flag=True)
    q.add_argument("--agent", dest="agent_id", help="only this agent's archives")
    q.add_argument("--key", dest="session_key", help="only this session key's archives")
    q.add_argument("--after", help="archived at or after (epoch ms or ISO-8601)")
    q.add_argument("--before", help="archived before (epoch ms or ISO-8601)")
    q.add_argument("--limit", type=int, default=100)

    p = sub.add_parser(
        "reset",
        help="end a session now and start a new one",
        description="Archive the session's transcript (never deleted) and begin a new session "
        "for the key, as the /reset chat command would.",
    )
    _common(p, json_flag=True)
    p.add_argument("key", help="session key, e.g. agent:main:main")
    p.add_argument("--reason", default="reset", choices=["reset", "new", "daily", "idle"])

    p = sub.add_parser(
        "compact",
        help="compact a session's context now",
        description="Save the cycle's memory notes, then append a summary of the older entries "
        "(the transcript keeps every entry), as the /compact chat command would; waits for it.",
    )
    _common(p, json_flag=True)
    p.add_argument("key", help="session key, e.g. agent:main:main")
    p.add_argument("--instructions", help="what the summary should focus on")

    p = sub.add_parser("status", help="show the daemon's status")
    _common(p, json_flag=True)

    cli_events.add_parser(sub, _common)

    p = sub.add_parser(
        "call",
        help="call any protocol method",
        description="Call a JSON-RPC method and print its result as JSON.",
    )
    _common(p, json_flag=True)
    p.add_argument("method", help="e.g. sessions.list")
    p.add_argument("--params", default="{}", help="params as a JSON object")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    q = csub.add_parser(
        "check",
        help="validate a config file",
        description="Validate the config file that `run` would use (or --config PATH). Exit 0 "
        "when valid, 1 with one line per problem (file, line:column or key path) when not.",
    )
    _common(q, json_flag=True)

    p = sub.add_parser(
        "import-openclaw",
        help="import an OpenClaw state folder (JSONL or SQLite era)",
        description="Copy the sessions, archives and memory files of an OpenClaw state folder "
        "(e.g. ~/.openclaw) into the state folder, verified by sha256 or entry count. The "
        "source is only read. Re-running skips what is already there. Refuses while a daemon "
        "holds the state folder. Exit 0 when everything was imported, 1 when anything could "
        "not be (the rest is imported and the report says why), 2 for bad usage.",
    )
    _common(p, json_flag=True)
    p.add_argument("src", metavar="SRC", help="the OpenClaw state folder to import from")
    p.add_argument(
        "--agent",
        metavar="ID",
        help="import only this source agent (its id and session keys are kept as they are)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="read and verify everything, write nothing"
    )
    _search_parsers(sub)
    _mcp_parser(sub)
    maintenance.add_parsers(sub, _common)  # doctor, backup verify|restore, retention
    return parser


def main(argv: list[str] | None = None) -> int:
    guard.install_from_env()  # tests: refuse (and report) any removal of user data
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.json and not getattr(args, "json_ok", True):
            raise UsageError(f"{args.command} has no --json output")
        return dispatch(args)
    except UsageError as e:
        print(f"sessiond: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"sessiond: invalid config:\n{e}", file=sys.stderr)
        return EXIT_FAIL
    except (StateLocked, ListenFailed) as e:
        print(f"sessiond: {e}", file=sys.stderr)
        return EXIT_FAIL
    except ConnectError as e:
        print(f"sessiond: {e}", file=sys.stderr)
        return EXIT_FAIL
    except RpcError as e:
        print(f"sessiond: error {e.code}: {e.message}", file=sys.stderr)
        if e.code == UNAUTHENTICATED:
            print(
                "sessiond: give a token with --token-file FILE or $SESSIOND_TOKEN", file=sys.stderr
            )
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:
        # The reader went away (`sessiond sessions list | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL


def _config(args: argparse.Namespace) -> tuple[Config, Path | None]:
    from daemon.openclaw_config import detect

    path = find_config(args.config)
    if path is None:  # no sessiond config: an OpenClaw state folder's own openclaw.json
        path = detect(resolve_state_dir(args.state_dir, Config()))
    return load_config(path), path


def _address(args: argparse.Namespace) -> str | Path:
    """Where the daemon listens: `--socket` as given (a `tcp://` or `tls://` address is not a
    path), else the socket the config names. The config is read only when it is needed."""
    if args.socket:
        if args.socket.startswith(("tcp://", "tls://")):
            return str(args.socket)
        return Path(args.socket).expanduser()
    cfg, _ = _config(args)
    return resolve_socket_path(cfg, resolve_state_dir(args.state_dir, cfg))


def _token(args: argparse.Namespace) -> str | None:
    """The token to present: the contents of `--token-file` (surrounding whitespace ignored),
    else $SESSIOND_TOKEN, else none. Never printed, also not in errors."""
    if args.token_file:
        path = Path(args.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "not readable as text"
            raise UsageError(f"--token-file {path}: {why}") from None
        if not token:
            raise UsageError(f"--token-file {path}: the file is empty")
        return token
    return os.environ.get("SESSIOND_TOKEN") or None


def _tls_files(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """`--tls-ca/--tls-cert/--tls-key` as Client's ca, cert, key; they need a tls:// address."""
    ca, cert, key = (
        Path(v).expanduser() if v else None for v in (args.tls_ca, args.tls_cert, args.tls_key)
    )
    if (ca or cert or key) and not str(args.socket or "").startswith("tls://"):
        raise UsageError("--tls-ca, --tls-cert and --tls-key go with --socket tls://HOST:PORT")
    if key and not cert:
        raise UsageError("--tls-key needs --tls-cert (the certificate the key belongs to)")
    return ca, cert, key


def _connect(args: argparse.Namespace) -> Client:
    ca, cert, key = _tls_files(args)
    return Client(_address(args), token=_token(args), ca=ca, cert=cert, key=key)


def _call(args: argparse.Namespace, method: str, params: dict[str, Any]) -> Any:
    with _connect(args) as c:
        return c.call(method, params)


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "run":
        return cmd_run(args)
    if cmd == "send":
        return cmd_send(args)
    if cmd == "sessions":
        return cmd_sessions(args)
    if cmd == "reset":
        res = _call(args, "sessions.reset", {"sessionKey": args.key, "reason": args.reason})
        if args.json:
            _print_json(res)
        else:
            print(
                f"archived {res['previousSessionId']}; {res['sessionKey']} is now "
                f"{res['sessionId']}"
            )
        return EXIT_OK
    if cmd == "compact":
        params = {"sessionKey": args.key}
        if args.instructions:
            params["instructions"] = args.instructions
        res = _call(args, "sessions.compact", params)
        if args.json:
            _print_json(res)
        elif res.get("compacted"):
            print(
                f"compacted {res['sessionKey']}: {res['summarizedEntries']} entries summarised, "
                f"{res['tokensBefore']} -> {res['tokensAfter']} tokens "
                f"(compaction {res['compactionCount']})"
            )
        else:
            print(f"not compacted: {res.get('reason')}")
            # A failed summarizer is a failure (retried in the background); nothing to do is not.
            return EXIT_FAIL if "retryInSeconds" in res else EXIT_OK
        return EXIT_OK
    if cmd == "status":
        st = _call(args, "status", {})
        if args.json:
            _print_json(st)
        else:
            print("\n".join(cli_output.status_lines(st)))
        return EXIT_OK
    if cmd == "events":
        return cli_events.follow(args, lambda: _connect(args))
    if cmd == "mcp":
        return cmd_mcp(args)
    if cmd == "call":
        try:
            params = orjson.loads(args.params)
        except orjson.JSONDecodeError as e:
            raise UsageError(f"--params is not valid JSON: {e}") from None
        if not isinstance(params, dict):
            raise UsageError("--params must be a JSON object")
        _print_json(_call(args, args.method, params))
        return EXIT_OK
    if cmd == "config":
        return cmd_config_check(args)
    if cmd == "import-openclaw":
        return cmd_import_openclaw(args)
    if cmd == "search":
        return cmd_search(args)
    if cmd == "reindex":
        return cmd_reindex(args)
    if cmd in maintenance.COMMANDS:
        return maintenance.dispatch(args)
    raise UsageError(f"unknown command {cmd}")


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from daemon import app, logs

    if args.socket and args.socket.startswith(("tcp://", "tls://")):
        raise UsageError("run --socket takes a path; TCP listeners are daemon.listeners")
    if args.tls_ca or args.tls_cert or args.tls_key:
        raise UsageError("--tls-* are for commands that talk to a running daemon")
    if args.token_file:
        raise UsageError("--token-file is for commands that talk to a running daemon")
    cfg, path = _config(args)
    logs.configure(args.log_level or cfg.daemon.logLevel, args.log_format or cfg.daemon.logFormat)
    state_dir = resolve_state_dir(args.state_dir, cfg)
    if args.socket:
        cfg = cfg.model_copy(
            update={"daemon": cfg.daemon.model_copy(update={"socket": args.socket})}
        )
    # Keys the command line set win over the file, also when it is reloaded.
    given = {
        "stateDir": args.state_dir,
        "socket": args.socket,
        "logLevel": args.log_level,
        "logFormat": args.log_format,
    }
    overrides = frozenset(f"daemon.{k}" for k, v in given.items() if v)
    opts = app.RunOptions(config=cfg, config_path=path, state_dir=state_dir, overrides=overrides)
    try:
        return anyio.run(app.run, opts)
    except StateLocked as e:
        import structlog

        structlog.get_logger("daemon").error("daemon.lock_failed", error=str(e))
        raise


def cmd_send(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        "channel": args.channel,
        "chatType": args.chat_type,
        "text": args.text,
    }
    peer = args.peer or os.environ.get("USER") or getpass.getuser()
    params["peer"] = peer
    for name, key in (
        ("group_id", "groupId"),
        ("thread_id", "threadId"),
        ("account_id", "accountId"),
        ("agent_id", "agentId"),
        ("message_id", "messageId"),
        ("sender_name", "senderName"),
    ):
        v = getattr(args, name)
        if v is not None:
            params[key] = v
    res = _call(args, "message.ingest", params)
    if args.json:
        _print_json(res)
    else:
        dup = " (duplicate)" if res.get("duplicate") else ""
        new = " (new session)" if res.get("created") else ""
        print(f"stored {res['entryId']} in {res['sessionKey']} [{res['sessionId']}]{new}{dup}")
        command = res.get("command")
        if isinstance(command, dict) and command.get("reply"):
            # What the chat command answers the sender (/status, /reset, ...).
            print(f"/{command.get('name')}:")
            print(command["reply"])
    return EXIT_OK


def _ref(args: argparse.Namespace) -> dict[str, Any]:
    if args.session_id:
        return {"sessionId": args.session_id}
    if args.key:
        return {"sessionKey": args.key}
    raise UsageError("give a session key or --id SESSION_ID")


def cmd_sessions(args: argparse.Namespace) -> int:
    sc = args.sessions_command
    if sc == "list":
        params: dict[str, Any] = {"limit": args.limit}
        if args.agent_id:
            params["agentId"] = args.agent_id
        if args.active_minutes:
            params["activeMinutes"] = args.active_minutes
        res = _call(args, "sessions.list", params)
        if args.json:
            from daemon.api import openclaw_list

            state_dir = resolve_state_dir(args.state_dir, _config(args)[0])
            _print_json(
                openclaw_list(res["sessions"], state_dir, args.agent_id, args.active_minutes)
            )
        elif res["sessions"]:
            cli_output.print_table(cli_output.sessions_table(res["sessions"]))
        else:
            print("no sessions", file=sys.stderr)
        return EXIT_OK
    if sc == "archived":
        params = {"limit": args.limit}
        for name, key in (("agent_id", "agentId"), ("session_key", "sessionKey")):
            if getattr(args, name):
                params[key] = getattr(args, name)
        for name in ("after", "before"):
            v = getattr(args, name)
            if v is not None:
                params[name] = int(v) if v.isdigit() else v
        res = _call(args, "sessions.archived", params)
        if args.json:
            _print_json(res)
        elif res["sessions"]:
            cli_output.print_table(cli_output.archived_table(res["sessions"]))
        else:
            print("no archived sessions", file=sys.stderr)
        return EXIT_OK
    if sc == "show":
        res = _call(args, "sessions.get", _ref(args))
        _print_json(res) if args.json else cli_output.print_entry(res)
        return EXIT_OK
    params = _ref(args)
    params["limit"] = args.limit
    if args.before is not None:
        params["before"] = args.before
    if args.previous is not None:
        params["previous"] = args.previous
    if args.no_tools:
        params["includeTools"] = False
    res = _call(args, "sessions.history", params)
    if args.json:
        _print_json(res)
        return EXIT_OK
    print(f"# {res['sessionKey']} [{res['sessionId']}], newest first")
    for e in res["entries"]:
        print(cli_output.render_entry(e))
    if res.get("before") is not None:
        print(f"# older entries: --before {res['before']}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from daemon.openclaw_config import check_report

    cfg, path = _config(args)
    report = check_report(path, cfg)
    if args.json:
        _print_json({"ok": True, **report})
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
        _print_json(report["effective"])
    return EXIT_OK


def cmd_import_openclaw(args: argparse.Namespace) -> int:
    from daemon.app import workspace_of
    from daemon.importers import SourceError, import_openclaw

    cfg, _ = _config(args)
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
        _print_json(doc)
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
        return None, str(e.strerror or e)


# ---------------------------------------------------------------------------------------------
# search and reindex


def _search_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search transcripts (active and archived) and memory files",
        description="Full-text search through the daemon (memory.search). QUERY is plain "
        'language ("what did we decide about the tip, 15%?"): any punctuation is fine, '
        "messages sharing the question's rarer words rank first, newer ones a little higher. "
        'With --fts, QUERY is FTS5 syntax: words (all must occur), "quoted phrases", OR, NOT, '
        "NEAR(a b), prefix*. Hits are ranked by bm25; the match is marked «like this».",
    )
    _common(p, json_flag=True)
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--agent", dest="agent_id", help="only this agent")
    p.add_argument("--session-key", help="only sessions with this key (current and archived)")
    p.add_argument("--session-id", help="only this session")
    p.add_argument("--after", help="at or after (epoch ms or ISO-8601)")
    p.add_argument("--before", help="before (epoch ms or ISO-8601)")
    p.add_argument("--only", choices=["sessions", "memory"], help="only one kind of source")
    p.add_argument("--limit", type=int, default=20, help="most hits (default 20, at most 200)")
    p.add_argument("--fts", action="store_true", help="QUERY is FTS5 syntax, not plain language")
    p.add_argument(
        "--no-recency", action="store_true", help="rank by relevance alone, not newer first"
    )

    p = sub.add_parser(
        "reindex",
        help="rebuild the search index from the files",
        description="Build <stateDir>/index/ from scratch out of the transcripts, archives and "
        "memory files, into a new file that replaces the old one when complete. Works on the "
        "folder itself: refuses while a daemon holds it (stop the daemon, or delete the index "
        "folder and restart the daemon, which rebuilds it too). Progress on a terminal.",
    )
    _common(p, json_flag=True)


def _mcp_parser(sub: Any) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve an agent's history as MCP tools (stdio)",
        description="An MCP server (Model Context Protocol, over stdio) for agent runtimes: "
        "tools sessions_list, sessions_list_archived, sessions_history, memory_search and "
        "session_context. It talks to the running daemon with an agent token (--token-file, "
        "else $SESSIOND_TOKEN), so the agent sees exactly its own sessions, archives and memory. "
        "Start it from the runtime's MCP config; see the README, 'Give your agents their history'.",
    )
    _common(p)
    p.add_argument(
        "--http",
        metavar="127.0.0.1:PORT",
        help="serve Streamable HTTP on this loopback address (path /mcp) instead of stdio",
    )


def cmd_mcp(args: argparse.Namespace) -> int:
    from daemon import agenttools

    token = _token(args)
    if any(_tls_files(args)):
        raise UsageError("sessiond mcp takes no --tls-* files (it trusts the system's CAs)")
    if token is None:
        raise UsageError(
            "an agent token is needed: pass --token-file FILE or set $SESSIOND_TOKEN "
            "(a token of role agent from auth.tokens, so the agent sees only its own data)"
        )
    http: tuple[str, int] | None = None
    if args.http:
        host, _, port = args.http.rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]") or not port.isdigit():
            raise UsageError(
                f"--http must be a loopback address as 127.0.0.1:PORT, got {args.http}"
            )
        http = (host.strip("[]"), int(port))
    address = str(_address(args))
    agenttools.serve(
        address, token, http=http, warn=lambda m: print(f"sessiond mcp: {m}", file=sys.stderr)
    )
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"query": args.query, "limit": args.limit}
    for name, key in (
        ("agent_id", "agentId"),
        ("session_key", "sessionKey"),
        ("session_id", "sessionId"),
    ):
        if getattr(args, name):
            params[key] = getattr(args, name)
    for name in ("after", "before"):
        v = getattr(args, name)
        if v is not None:
            params[name] = int(v) if v.isdigit() else v
    if args.only:
        params["includeSessions"] = args.only == "sessions"
        params["includeMemory"] = args.only == "memory"
    if args.fts:
        params["syntax"] = "fts5"
    if args.no_recency:
        params["recency"] = False
    res = _call(args, "memory.search", params)
    if args.json:
        _print_json(res)
        return EXIT_OK
    for h in res["hits"]:
        when = cli_output.local_time(h.get("timestamp"))
        if h.get("source") == "memory":
            where = f"{h.get('agentId')} memory {h.get('file') or h.get('entryId')}"
        else:
            archived = " (archived)" if h.get("archived") else ""
            where = f"{h.get('sessionKey') or '?'} [{h.get('sessionId')}] {h.get('entryId')}"
            where += archived
        print(f"{h.get('score', 0):7.2f}  {when}  {h.get('role') or '-':9}  {where}")
        print(f"         {h.get('snippet', '')}")
    if not res["hits"]:
        print("no hits", file=sys.stderr)
    return EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    import time

    from daemon.app import agent_ids, workspace_of
    from daemon.lock import StateLock
    from daemon.search import rebuild

    cfg, _ = _config(args)
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
        _print_json(stats.to_json())
    else:
        print(
            f"indexed {stats.docs:,} entries from {stats.files:,} files in "
            f"{stats.seconds:.1f} s ({stats.docs / max(stats.seconds, 1e-6):,.0f} entries/s)"
        )
    return EXIT_OK
