"""A real daemon run with OpenClaw's own openclaw.json (`--config`, or found in the state folder):
it routes as the file says, ignores the gateway's keys, and reloads when the file changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "openclaw-2026.6" / "openclaw.json"
WAIT = 30.0


def with_openclaw_json(d: Daemon) -> Path:
    path = d.workdir / "openclaw.json"
    shutil.copyfile(REAL, path)
    d.config_path = path  # `run --config <workdir>/openclaw.json`
    return path


def dm(d: Daemon, channel: str, peer: str, account: str | None = None) -> str:
    params: dict[str, Any] = {"channel": channel, "chatType": "direct", "peer": peer, "text": "hi"}
    if account:
        params["accountId"] = account
    key = d.client().call("message.ingest", params)["sessionKey"]
    assert isinstance(key, str)
    return key


def log_events(d: Daemon, name: str) -> list[dict[str, Any]]:
    out = []
    for line in (d.workdir / f"daemon-{d.runs}.out").read_bytes().splitlines():
        if f'"event":"{name}"'.encode() in line:
            out.append(orjson.loads(line))
    return out


def wait_for_event(d: Daemon, name: str, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(log_events(d, name)) < count:
        assert time.monotonic() < deadline, f"no {name} within {WAIT}s:\n{d.output()}"
        time.sleep(0.05)


def test_a_daemon_on_openclaw_json_routes_dms_by_its_dm_scope_and_reloads(
    launch: Launch,
) -> None:
    d = launch(start=False)
    path = with_openclaw_json(d)
    d.start()
    assert dm(d, "telegram", "555") == "agent:main:telegram:direct:555"
    assert dm(d, "discord", "777", account="work") == "agent:work:discord:direct:777"
    (ignored,) = log_events(d, "config.openclaw_ignored")
    assert ignored["count"] == 4 and "models" in ignored["keys"]

    data = json.loads(path.read_text())
    data["session"]["dmScope"] = "per-peer"
    path.write_text(json.dumps(data))
    assert d.pid is not None
    os.kill(d.pid, signal.SIGHUP)
    wait_for_event(d, "config.reloaded", 1)
    assert dm(d, "telegram", "555") == "agent:main:direct:555"
    assert d.stop() == 0


def sessiond(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**daemon_env(), "HOME": str(home)},
    )


def test_config_check_prints_what_was_taken_ignored_and_the_effective_config(
    tmp_path: Path,
) -> None:
    path = tmp_path / "openclaw.json"
    shutil.copyfile(REAL, path)
    res = sessiond("config", "check", "--config", str(path), home=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"ok: {path}" in out
    assert "session.dmScope" in out and "ignored (4 gateway keys)" in out
    assert '"dmScope": "per-channel-peer"' in out
    as_json = orjson.loads(
        sessiond("config", "check", "--config", str(path), "--json", home=tmp_path).stdout
    )
    assert as_json["openclaw"]["ignored"] == [
        "agents.defaults.model",
        "agents.defaults.models",
        "logging",
        "models",
    ]


def test_with_no_sessiond_config_the_state_folders_openclaw_json_is_used(tmp_path: Path) -> None:
    state = tmp_path / "dot-openclaw"
    state.mkdir()
    shutil.copyfile(REAL, state / "openclaw.json")
    res = sessiond("config", "check", "--state-dir", str(state), "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    report = orjson.loads(res.stdout)
    assert report["config"] == str(state / "openclaw.json")
    assert report["effective"]["session"]["dmScope"] == "per-channel-peer"
    # Without it: the built-in defaults.
    other = tmp_path / "empty"
    other.mkdir()
    res = sessiond("config", "check", "--state-dir", str(other), "--json", home=tmp_path)
    assert orjson.loads(res.stdout)["openclaw"] is None


def test_a_change_to_the_openclaw_json_a_sessiond_config_names_is_reloaded(
    launch: Launch,
) -> None:
    d = launch(config='{openclaw: "openclaw.json", daemon: {maxConnections: 50}}', start=False)
    path = d.workdir / "openclaw.json"
    shutil.copyfile(REAL, path)
    d.start()
    assert dm(d, "telegram", "9") == "agent:main:telegram:direct:9"
    data = json.loads(path.read_text())
    data["session"]["dmScope"] = "per-peer"
    path.write_text(json.dumps(data))  # no SIGHUP: the watch sees the named file change
    wait_for_event(d, "config.reloaded", 1)
    assert dm(d, "telegram", "9") == "agent:main:direct:9"
    assert d.stop() == 0
