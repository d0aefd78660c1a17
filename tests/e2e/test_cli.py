"""The command line (SPEC 7) against a real daemon: output, --json, exit codes 0/1/2, --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from daemon.cli import main
from e2e.harness import Daemon, daemon_env


def sessiond(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
        cwd=cwd,
    )


def at(d: Daemon) -> list[str]:
    return ["--state-dir", str(d.state_dir), "--config", str(d.config_path)]


def test_send_then_list_history_status_and_call(daemon: Daemon) -> None:
    sent = sessiond(
        "send", "hello from the cli", *at(daemon), "--channel", "telegram", "--peer", "42"
    )
    assert sent.returncode == 0, sent.stderr
    assert "agent:main:main" in sent.stdout

    again = sessiond("send", "second", *at(daemon), "--peer", "42", "--message-id", "m-1", "--json")
    assert again.returncode == 0, again.stderr
    ack = orjson.loads(again.stdout)
    assert ack["sessionKey"] == "agent:main:main" and ack["duplicate"] is False
    dup = sessiond("send", "second", *at(daemon), "--peer", "42", "--message-id", "m-1", "--json")
    assert orjson.loads(dup.stdout)["duplicate"] is True

    listed = sessiond("sessions", "list", *at(daemon), "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = orjson.loads(listed.stdout)["sessions"]
    assert [s["sessionKey"] for s in sessions] == ["agent:main:main"]
    assert sessions[0]["sessionId"] == ack["sessionId"]

    history = sessiond("sessions", "history", "agent:main:main", *at(daemon))
    assert history.returncode == 0, history.stderr
    out = history.stdout
    assert "hello from the cli" in out and "second" in out
    assert out.index("second") < out.index("hello from the cli"), "newest first"

    as_json = sessiond("sessions", "history", "agent:main:main", *at(daemon), "--json")
    entries = orjson.loads(as_json.stdout)["entries"]
    assert len(entries) == 2

    shown = sessiond("sessions", "show", "agent:main:main", *at(daemon), "--json")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["sessionId"] == ack["sessionId"]

    status = sessiond("status", *at(daemon), "--json")
    assert status.returncode == 0, status.stderr
    st = orjson.loads(status.stdout)
    assert st["pid"] == daemon.pid
    assert st["sessions"] == 1

    called = sessiond("call", "sessions.list", "--params", "{}", *at(daemon))
    assert called.returncode == 0, called.stderr

    # `sessions list --json` is OpenClaw's {path, count, sessions} around the method's rows.
    def rows(doc: dict) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "ageMs"} for r in doc["sessions"]]

    assert rows(orjson.loads(called.stdout)) == rows(orjson.loads(listed.stdout))


def test_an_error_from_the_daemon_exits_1_with_its_code(daemon: Daemon) -> None:
    missing = sessiond("sessions", "history", "agent:main:nobody", *at(daemon))
    assert missing.returncode == 1
    assert "1003" in missing.stderr
    bad = sessiond("call", "sessions.list", "--params", '{"limit": "x"}', *at(daemon))
    assert bad.returncode == 1
    assert "-32602" in bad.stderr and "limit" in bad.stderr


def test_call_with_params_that_are_not_a_json_object_is_bad_usage(daemon: Daemon) -> None:
    for params in ("{not json", "[1, 2]"):
        r = sessiond("call", "sessions.list", "--params", params, *at(daemon))
        assert r.returncode == 2, (params, r.stdout, r.stderr)


def test_config_check_names_the_bad_key_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json5"
    bad.write_text("{session: {reset: {atHour: 25}}}\n")
    r = sessiond("config", "check", "--config", str(bad))
    assert r.returncode == 1
    assert "session.reset.atHour" in r.stdout + r.stderr
    good = tmp_path / "good.json5"
    good.write_text("// fine\n{session: {dmScope: 'per-peer'},}\n")
    r = sessiond("config", "check", "--config", str(good))
    assert r.returncode == 0, r.stderr


def test_config_check_reports_a_syntax_error_with_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json5"
    bad.write_text("{\n  session: {\n    dmScope: 'main'\n    oops\n  }\n}\n")
    r = sessiond("config", "check", "--config", str(bad))
    assert r.returncode == 1
    assert "broken.json5" in r.stdout + r.stderr
    assert ":4" in r.stdout + r.stderr or "line 4" in r.stdout + r.stderr


def test_history_without_a_key_is_bad_usage(tmp_path: Path) -> None:
    r = sessiond("sessions", "history", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2
    assert r.stderr.strip()


def test_an_unknown_command_is_bad_usage() -> None:
    r = sessiond("frobnicate")
    assert r.returncode == 2


NOT_RUNNING = ("not running", "is the daemon running", "no daemon")


def test_a_command_without_a_daemon_exits_1_saying_it_is_not_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for args in (["status"], ["sessions", "list"], ["send", "hi", "--peer", "1"]):
        r = sessiond(*args, "--state-dir", str(state))
        assert r.returncode == 1, (args, r.stderr)
        assert any(s in r.stderr.lower() for s in NOT_RUNNING), r.stderr


def test_a_command_after_a_crash_says_the_daemon_is_not_running(daemon: Daemon) -> None:
    """A killed daemon leaves its socket file behind; the CLI must still say what is wrong."""
    daemon.kill()
    r = sessiond("status", *at(daemon))
    assert r.returncode == 1
    assert any(s in r.stderr.lower() for s in NOT_RUNNING), r.stderr


REQUIRED = [
    ["run"],
    ["send"],
    ["sessions", "list"],
    ["sessions", "show"],
    ["sessions", "history"],
    ["status"],
    ["call"],
    ["config", "check"],
]


def all_commands() -> list[list[str]]:
    """Every command and subcommand the parser knows, found by walking it."""
    import argparse

    from daemon.cli import build_parser

    out: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        out.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return out


COMMANDS = all_commands()


def test_the_issue_commands_exist() -> None:
    missing = [c for c in REQUIRED if c not in COMMANDS]
    assert not missing


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sessiond")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command:
        assert command[-1] in out


def test_the_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sessiond"
    if not script.exists():
        pytest.skip("the console script is not installed next to this Python")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "sessiond" in r.stdout
