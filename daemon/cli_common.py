"""What every `sessiond` command shares: exit codes, usage errors, the global flags, the config
a command reads, and the connection to a running daemon (`daemon.client`: a Unix socket,
`tcp://HOST:PORT`, or `tls://HOST:PORT` with `--tls-*` files; a token from `--token-file` or
`$SESSIOND_TOKEN`). Imported by daemon/cli.py and by the command modules beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from daemon.client import Client
from daemon.config import Config
from daemon.config_load import find_config, load_config, resolve_socket_path, resolve_state_dir

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit 2)."""


def global_flags(p: argparse.ArgumentParser, *, json_flag: bool, top: bool) -> None:
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


def common(p: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    global_flags(p, json_flag=json_flag, top=False)
    p.set_defaults(json_ok=json_flag)


def config_of(args: argparse.Namespace) -> tuple[Config, Path | None]:
    from daemon.openclaw_config import detect

    path = find_config(args.config)
    if path is None:  # no sessiond config: an OpenClaw state folder's own openclaw.json
        path = detect(resolve_state_dir(args.state_dir, Config()))
    return load_config(path), path


def daemon_address(args: argparse.Namespace) -> str | Path:
    """Where the daemon listens: `--socket` as given (a `tcp://` or `tls://` address is not a
    path), else the socket the config names. The config is read only when it is needed."""
    if args.socket:
        if args.socket.startswith(("tcp://", "tls://")):
            return str(args.socket)
        return Path(args.socket).expanduser()
    cfg, _ = config_of(args)
    return resolve_socket_path(cfg, resolve_state_dir(args.state_dir, cfg))


def token_of(args: argparse.Namespace) -> str | None:
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


def tls_files(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """`--tls-ca/--tls-cert/--tls-key` as Client's ca, cert, key; they need a tls:// address."""
    ca, cert, key = (
        Path(v).expanduser() if v else None for v in (args.tls_ca, args.tls_cert, args.tls_key)
    )
    if (ca or cert or key) and not str(args.socket or "").startswith("tls://"):
        raise UsageError("--tls-ca, --tls-cert and --tls-key go with --socket tls://HOST:PORT")
    if key and not cert:
        raise UsageError("--tls-key needs --tls-cert (the certificate the key belongs to)")
    return ca, cert, key


def connect(args: argparse.Namespace) -> Client:
    ca, cert, key = tls_files(args)
    return Client(daemon_address(args), token=token_of(args), ca=ca, cert=cert, key=key)


def call(args: argparse.Namespace, method: str, params: dict[str, Any]) -> Any:
    with connect(args) as c:
        return c.call(method, params)


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
