"""The operator's command line (SPEC 9, "CLI") against a real daemon: `--socket tcp://` with
`--token-file`, global flags before the command, readable tables and status, `events --follow`,
and the reply of a chat command shown by `send`."""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env

TOKEN = "ops-secret-token-0123456789abcdef"
EPOCH_MS = re.compile(r"\b1[0-9]{12}\b")  # an epoch-ms time printed raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sessiond(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**daemon_env(), **(env or {})},
    )


def at(d: Daemon) -> list[str]:
    return ["--state-dir", str(d.state_dir), "--config", str(d.config_path)]


@pytest.fixture
def tcp_daemon(launch: Launch, tmp_path: Path) -> Iterator[tuple[Daemon, str, Path]]:
    """A daemon with a TCP listener (which always needs a token) and an admin token."""
    port = free_port()
    d = launch(
        {
            "daemon": {"listeners": [{"tcp": f"127.0.0.1:{port}"}]},
            "auth": {"tokens": [{"name": "ops", "token": TOKEN, "role": "admin"}]},
        }
    )
    token_file = tmp_path / "ops.token"
    token_file.write_text(f"  {TOKEN}\n")  # surrounding whitespace is not part of it
    token_file.chmod(0o600)
    yield d, f"tcp://127.0.0.1:{port}", token_file


def test_status_over_tcp_with_a_token_file(tcp_daemon: tuple[Daemon, str, Path]) -> None:
    d, address, token_file = tcp_daemon
    r = sessiond("status", "--socket", address, "--token-file", str(token_file), "--json")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["pid"] == d.pid

    readable = sessiond("status", "--socket", address, "--token-file", str(token_file))
    assert readable.returncode == 0, readable.stderr
    assert f"pid {d.pid}" in " ".join(readable.stdout.split())
    assert TOKEN not in readable.stdout + readable.stderr


def test_tcp_without_a_token_says_how_to_give_one(tcp_daemon: tuple[Daemon, str, Path]) -> None:
    _, address, _ = tcp_daemon
    r = sessiond("status", "--socket", address)
    assert r.returncode == 1
    assert "1001" in r.stderr and "--token-file" in r.stderr


def test_the_token_can_come_from_the_environment(tcp_daemon: tuple[Daemon, str, Path]) -> None:
    d, address, _ = tcp_daemon
    r = sessiond("status", "--socket", address, "--json", env={"SESSIOND_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["pid"] == d.pid


def test_a_wrong_token_fails_without_printing_it(
    tcp_daemon: tuple[Daemon, str, Path], tmp_path: Path
) -> None:
    _, address, _ = tcp_daemon
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-but-also-secret\n")
    r = sessiond("status", "--socket", address, "--token-file", str(wrong))
    assert r.returncode == 1
    assert "not-the-token-but-also-secret" not in r.stdout + r.stderr


def test_a_missing_token_file_is_bad_usage_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.token"
    r = sessiond("status", "--socket", "tcp://127.0.0.1:9", "--token-file", str(missing))
    assert r.returncode == 2
    assert str(missing) in r.stderr and "No such file" in r.stderr


def test_a_tcp_address_is_not_taken_for_a_path(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    r = sessiond("status", "--socket", f"tcp://127.0.0.1:{port}")
    assert r.returncode == 1
    assert f"tcp://127.0.0.1:{port}" in r.stderr and "tcp:/127" not in r.stderr


def test_global_flags_may_stand_before_the_command(daemon: Daemon) -> None:
    before = sessiond(*at(daemon), "--json", "status")
    assert before.returncode == 0, before.stderr
    assert orjson.loads(before.stdout)["pid"] == daemon.pid
    mixed = sessiond(
        "--state-dir",
        str(daemon.state_dir),
        "sessions",
        "list",
        "--config",
        str(daemon.config_path),
        "--json",
    )
    assert mixed.returncode == 0, mixed.stderr
    assert orjson.loads(mixed.stdout)["sessions"] == []  # OpenClaw's {path, count, sessions}
    socket_first = sessiond("--socket", str(daemon.socket), "--json", "status")
    assert socket_first.returncode == 0, socket_first.stderr


def test_json_on_a_command_without_json_output_is_bad_usage() -> None:
    r = sessiond("--json", "run")
    assert r.returncode == 2 and "--json" in r.stderr


def test_status_and_tables_are_readable(daemon: Daemon) -> None:
    assert sessiond("send", "hello", *at(daemon), "--peer", "7").returncode == 0
    status = sessiond("status", *at(daemon))
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert not EPOCH_MS.search(out), out
    for repr_only in ("{'", "None", "True", "False"):
        assert repr_only not in out, out
    assert "ago" in out or "just now" in out  # started, last checkpoint: relative ages

    listed = sessiond("sessions", "list", *at(daemon))
    assert listed.returncode == 0, listed.stderr
    header, *rows = [line for line in listed.stdout.splitlines() if line.strip()]
    assert header.split()[:4] == ["UPDATED", "SESSION", "KEY", "SESSION"]
    session_id = orjson.loads(sessiond("sessions", "list", *at(daemon), "--json").stdout)[
        "sessions"
    ][0]["sessionId"]
    row = next(r for r in rows if session_id in r)
    assert "agent:main:main" in row and not EPOCH_MS.search(row)

    assert sessiond("reset", "agent:main:main", *at(daemon)).returncode == 0
    archived = sessiond("sessions", "archived", *at(daemon))
    assert archived.returncode == 0, archived.stderr
    assert archived.stdout.split()[:3] == ["ARCHIVED", "REASON", "MESSAGES"]
    assert session_id in archived.stdout and " reset " in archived.stdout


def test_send_shows_the_reply_of_a_chat_command(daemon: Daemon) -> None:
    assert sessiond("send", "hello", *at(daemon), "--peer", "7").returncode == 0
    r = sessiond("send", "/status", *at(daemon), "--peer", "7")
    assert r.returncode == 0, r.stderr
    as_json = sessiond("send", "/status", *at(daemon), "--peer", "7", "--json")
    reply = orjson.loads(as_json.stdout)["command"]["reply"]
    first_line = reply.splitlines()[0]
    assert first_line.startswith("Session agent:main:main")
    assert first_line in r.stdout.splitlines()


def test_events_follow_prints_session_created(tcp_daemon: tuple[Daemon, str, Path]) -> None:
    d, address, token_file = tcp_daemon
    argv = [sys.executable, "-m", "daemon", "events", "--follow", "--json"]
    argv += ["--filter", "session.*", "--socket", address, "--token-file", str(token_file)]
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon_env()
    ) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            # The banner comes once the subscription is in place.
            assert proc.stderr.readline().startswith("# following events")
            stdout = proc.stdout
            reader = threading.Thread(target=lambda: [lines.put(x) for x in stdout])
            reader.start()
            ack = d.call(
                "message.ingest",
                {"channel": "cli", "chatType": "direct", "peer": "9", "text": "hi"},
            )
            d.call("sessions.reset", {"sessionKey": ack["sessionKey"]})
            # A reset begins the new session (session.created) and then says so (session.reset).
            got = [orjson.loads(lines.get(timeout=30)) for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    reader.join(timeout=30)
    assert got[0] == {
        "event": "session.created",
        "params": {
            "agentId": "main",
            "sessionKey": ack["sessionKey"],
            "sessionId": ack["sessionId"],
        },
    }
    assert [g["event"] for g in got[1:]] == ["session.created", "session.reset"]
    assert got[2]["params"]["previousSessionId"] == ack["sessionId"]


def test_events_without_follow_is_bad_usage_explaining_why() -> None:
    r = sessiond("events")
    assert r.returncode == 2 and "--follow" in r.stderr


def test_a_filter_matching_no_event_is_bad_usage(daemon: Daemon) -> None:
    r = sessiond("events", "--follow", "--filter", "sesion.*", *at(daemon))
    assert r.returncode == 2 and "session.created" in r.stderr


def test_the_command_line_starts_without_importing_rich() -> None:
    code = "import sys; from daemon import cli; cli.build_parser(); print('rich' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert r.stdout.strip() == "False", r.stderr
