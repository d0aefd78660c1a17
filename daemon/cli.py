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
from typing import TYPE_CHECKING, Any

import orjson

from daemon import __version__, cli_events, cli_offline, cli_output, guard, maintenance
from daemon.cli_common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    call,
    common,
    config_of,
    connect,
    daemon_address,
    global_flags,
    print_json,
    tls_files,
    token_of,
)
from daemon.client import ConnectError, RpcError
from daemon.config_load import resolve_state_dir
from daemon.errors import UNAUTHENTICATED, ConfigError, ListenFailed, StateLocked

if TYPE_CHECKING:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="sessiond keeps chat-agent sessions: durable, append-only transcripts in "
        "OpenClaw's format, served over a Unix socket (JSON-RPC 2.0, one object per line).",
    )
    parser.add_argument("--version", action="version", version=f"sessiond {__version__}")
    global_flags(parser, json_flag=True, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground until SIGTERM or Ctrl-C. Config is read "
        "from --config, else $SESSIOND_CONFIG, else ~/.config/sessiond/config.json5, else "
        "/etc/sessiond/config.json5, else built-in defaults. State goes to --state-dir, else "
        "daemon.stateDir, else $STATE_DIRECTORY, else ~/.local/state/sessiond.",
    )
    common(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "json", "console"])

    p = sub.add_parser(
        "send",
        help="ingest one message, as a channel adapter would",
        description="Send one inbound message through the daemon's pipeline and print the "
        "acknowledgement (sent only once the message is durably stored).",
    )
    common(p, json_flag=True)
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
    common(q, json_flag=True)
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
    common(q, json_flag=True)
    q.add_argument("key", nargs="?", help="session key, e.g. agent:main:main")
    q.add_argument("--id", dest="session_id", help="session id instead of a key")
    q = ssub.add_parser("history", help="read a session's transcript, newest first")
    common(q, json_flag=True)
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
    common(q, json_flag=True)
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
    common(p, json_flag=True)
    p.add_argument("key", help="session key, e.g. agent:main:main")
    p.add_argument("--reason", default="reset", choices=["reset", "new", "daily", "idle"])

    p = sub.add_parser(
        "compact",
        help="compact a session's context now",
        description="Save the cycle's memory notes, then append a summary of the older entries "
        "(the transcript keeps every entry), as the /compact chat command would; waits for it.",
    )
    common(p, json_flag=True)
    p.add_argument("key", help="session key, e.g. agent:main:main")
    p.add_argument("--instructions", help="what the summary should focus on")

    p = sub.add_parser("status", help="show the daemon's status")
    common(p, json_flag=True)

    cli_events.add_parser(sub, common)

    p = sub.add_parser(
        "call",
        help="call any protocol method",
        description="Call a JSON-RPC method and print its result as JSON.",
    )
    common(p, json_flag=True)
    p.add_argument("method", help="e.g. sessions.list")
    p.add_argument("--params", default="{}", help="params as a JSON object")

    cli_offline.add_parsers(sub)  # config check, import-openclaw
    _search_parser(sub)
    cli_offline.add_reindex_parser(sub)
    _mcp_parser(sub)
    maintenance.add_parsers(sub, common)  # doctor, backup verify|restore, retention
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


def dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "run":
        return cmd_run(args)
    if cmd == "send":
        return cmd_send(args)
    if cmd == "sessions":
        return cmd_sessions(args)
    if cmd == "reset":
        res = call(args, "sessions.reset", {"sessionKey": args.key, "reason": args.reason})
        if args.json:
            print_json(res)
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
        res = call(args, "sessions.compact", params)
        if args.json:
            print_json(res)
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
        st = call(args, "status", {})
        if args.json:
            print_json(st)
        else:
            print("\n".join(cli_output.status_lines(st)))
        return EXIT_OK
    if cmd == "events":
        return cli_events.follow(args, lambda: connect(args))
    if cmd == "mcp":
        return cmd_mcp(args)
    if cmd == "call":
        try:
            params = orjson.loads(args.params)
        except orjson.JSONDecodeError as e:
            raise UsageError(f"--params is not valid JSON: {e}") from None
        if not isinstance(params, dict):
            raise UsageError("--params must be a JSON object")
        print_json(call(args, args.method, params))
        return EXIT_OK
    if cmd == "config":
        return cli_offline.cmd_config_check(args)
    if cmd == "import-openclaw":
        return cli_offline.cmd_import_openclaw(args)
    if cmd == "search":
        return cmd_search(args)
    if cmd == "reindex":
        return cli_offline.cmd_reindex(args)
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
    cfg, path = config_of(args)
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
    res = call(args, "message.ingest", params)
    if args.json:
        print_json(res)
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
        res = call(args, "sessions.list", params)
        if args.json:
            from daemon.api import openclaw_list

            state_dir = resolve_state_dir(args.state_dir, config_of(args)[0])
            print_json(
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
        res = call(args, "sessions.archived", params)
        if args.json:
            print_json(res)
        elif res["sessions"]:
            cli_output.print_table(cli_output.archived_table(res["sessions"]))
        else:
            print("no archived sessions", file=sys.stderr)
        return EXIT_OK
    if sc == "show":
        res = call(args, "sessions.get", _ref(args))
        print_json(res) if args.json else cli_output.print_entry(res)
        return EXIT_OK
    params = _ref(args)
    params["limit"] = args.limit
    if args.before is not None:
        params["before"] = args.before
    if args.previous is not None:
        params["previous"] = args.previous
    if args.no_tools:
        params["includeTools"] = False
    res = call(args, "sessions.history", params)
    if args.json:
        print_json(res)
        return EXIT_OK
    print(f"# {res['sessionKey']} [{res['sessionId']}], newest first")
    for e in res["entries"]:
        print(cli_output.render_entry(e))
    if res.get("before") is not None:
        print(f"# older entries: --before {res['before']}")
    return EXIT_OK


def _search_parser(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search transcripts (active and archived) and memory files",
        description="Full-text search through the daemon (memory.search). QUERY is plain "
        'language ("what did we decide about the tip, 15%?"): any punctuation is fine, '
        "messages sharing the question's rarer words rank first, newer ones a little higher. "
        'With --fts, QUERY is FTS5 syntax: words (all must occur), "quoted phrases", OR, NOT, '
        "NEAR(a b), prefix*. Hits are ranked by bm25; the match is marked «like this».",
    )
    common(p, json_flag=True)
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
    common(p)
    p.add_argument(
        "--http",
        metavar="127.0.0.1:PORT",
        help="serve Streamable HTTP on this loopback address (path /mcp) instead of stdio",
    )


def cmd_mcp(args: argparse.Namespace) -> int:
    from daemon import agenttools

    token = token_of(args)
    if any(tls_files(args)):
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
    address = str(daemon_address(args))
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
    res = call(args, "memory.search", params)
    if args.json:
        print_json(res)
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
