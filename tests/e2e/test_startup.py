"""Start-up and shutdown of the daemon process (SPEC 1, 8): the state lock, logs, signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env, ingest_params


def test_a_second_daemon_on_the_same_state_folder_exits_1_with_a_clear_message(
    daemon: Daemon,
) -> None:
    second = daemon.spawn()
    try:
        code = second.wait(timeout=10)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert code == 1
    run = daemon.runs
    said = (daemon.workdir / f"daemon-{run}.err").read_text() + (
        daemon.workdir / f"daemon-{run}.out"
    ).read_text()
    assert re.search(r"lock|another sessiond|already running", said, re.IGNORECASE), said
    # The first daemon is untouched: same socket, still serving.
    assert daemon.running
    assert daemon.call("message.ingest", ingest_params("42", "still here"))["entryId"]


def test_sigterm_exits_0(daemon: Daemon) -> None:
    daemon.call("message.ingest", ingest_params("42", "hello"))
    assert daemon.stop() == 0


def test_sigterm_as_soon_as_the_socket_accepts_exits_0(launch: Launch) -> None:
    """An operator (or systemd) may stop the daemon the moment it is reachable."""
    d = launch(start=False)
    for _ in range(5):
        proc = d.spawn()
        try:
            deadline = time.monotonic() + 10
            while not _accepts(d.socket):
                assert proc.poll() is None, d.output()
                assert time.monotonic() < deadline
                time.sleep(0.001)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0, f"exit code {code} for SIGTERM right after start"


def _accepts(path: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_sigint_also_stops_the_daemon_cleanly(daemon: Daemon) -> None:
    daemon.call("message.ingest", ingest_params("42", "hello"))
    daemon.close_clients()
    assert daemon.proc is not None and daemon.pid is not None
    os.kill(daemon.pid, signal.SIGINT)
    assert daemon.proc.wait(timeout=20) == 0


def test_logs_are_json_lines_with_dotted_event_names(daemon: Daemon) -> None:
    daemon.call("message.ingest", ingest_params("42", "a secret body"))
    assert daemon.stop() == 0
    raw = (daemon.workdir / "daemon-1.out").read_bytes()
    assert b"a secret body" not in raw, "message bodies never go into logs"
    events = daemon.logs()
    assert events
    for e in events:
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", e["event"]), e
        assert e["level"] in ("debug", "info", "warning", "error", "critical")
    names = [e["event"] for e in events]
    assert "daemon.started" in names
    assert names.index("daemon.started") < len(names) - 1


def test_run_works_without_any_config_file(tmp_path: Path) -> None:
    if Path("/etc/sessiond/config.json5").exists():
        pytest.skip("/etc/sessiond/config.json5 exists on this host")
    home = tmp_path / "home"
    home.mkdir()
    state = tmp_path / "state"
    env = {**daemon_env(), "HOME": str(home)}
    cmd = [sys.executable, "-m", "daemon", "run", "--state-dir", str(state), "--log-format", "json"]
    with open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not _accepts(state / "sessiond.sock"):
            assert proc.poll() is None, (tmp_path / "out").read_text()
            assert time.monotonic() < deadline, "the daemon did not start on built-in defaults"
            time.sleep(0.02)
        from daemon.client import Client

        with Client(state / "sessiond.sock") as c:
            ack = c.call("message.ingest", ingest_params("42", "hello"))
        assert ack["sessionKey"] == "agent:main:main"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    started = [orjson.loads(line) for line in (tmp_path / "out").read_bytes().splitlines()]
    assert any(e.get("event") == "daemon.started" for e in started)
