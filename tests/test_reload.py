"""Config reload: SIGHUP, `config.reload` and file changes swap a valid config in at once; an
invalid one changes nothing but a logged rejection; connections and acknowledgements survive."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e.harness import Daemon, ingest_params, message_ids
from ops_harness import Launch, daemons, log_lines, replace_file, wait_for, wait_log

from daemon.client import Client, RpcError
from daemon.config import Config
from daemon.config_load import parse_config
from daemon.reload import MISSING, RESTART_REQUIRED, get_path, plan_reload


def cfg(text: str) -> Config:
    return parse_config(text, "test")


# ---------------------------------------------------------------------------------------------
# The plan (pure)


def test_an_unchanged_config_changes_nothing() -> None:
    plan = plan_reload(Config(), Config())
    assert plan.changed == () and plan.restart_required == ()
    assert plan.config == Config()


def test_live_sections_are_swapped_in_and_named() -> None:
    new = cfg("{session: {dmScope: 'per-peer'}, access: {default: {dm: 'disabled'}}}")
    plan = plan_reload(Config(), new)
    assert plan.changed == ("session", "access")
    assert plan.restart_required == ()
    assert plan.config == new


def test_keys_that_need_a_restart_keep_their_running_values_and_are_reported() -> None:
    running = cfg("{daemon: {socketMode: '0660', stateDir: '/srv/a'}}")
    new = cfg(
        "{daemon: {socketMode: '0600', stateDir: '/srv/b', logLevel: 'debug',"
        " spool: {enabled: true}}, session: {mainKey: 'home'}}"
    )
    plan = plan_reload(running, new)
    assert set(plan.restart_required) == {"daemon.socketMode", "daemon.stateDir", "daemon.spool"}
    assert plan.config.daemon.socketMode == 0o660
    assert plan.config.daemon.stateDir == "/srv/a"
    assert not plan.config.daemon.spool.enabled
    # The rest of the section is live.
    assert plan.config.daemon.logLevel == "debug"
    assert plan.config.session.mainKey == "home"
    assert plan.changed == ("daemon", "session")


def test_keys_set_on_the_command_line_win_and_are_not_reported() -> None:
    running = cfg("{daemon: {socket: '/run/cli.sock', logLevel: 'debug'}}")
    new = cfg("{daemon: {logLevel: 'warning'}}")  # the file never named the socket
    plan = plan_reload(running, new, overrides={"daemon.socket", "daemon.logLevel"})
    assert plan.restart_required == ()
    assert plan.changed == ()
    assert plan.config.daemon.socket == "/run/cli.sock"


def test_the_restart_keys_name_real_config_keys() -> None:
    present = {k for k in RESTART_REQUIRED if get_path(Config(), k) is not MISSING}
    assert {"daemon.stateDir", "daemon.socket", "daemon.socketMode", "daemon.spool"} <= present


# ---------------------------------------------------------------------------------------------
# The real daemon


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    with daemons(tmp_path) as launch:
        yield launch


def ingest(d: Daemon, peer: str = "111", text: str = "hi", **extra: Any) -> dict[str, Any]:
    result = d.call("message.ingest", ingest_params(peer, text, **extra))
    assert isinstance(result, dict)
    return result


def test_an_invalid_config_is_rejected_with_the_reason_and_the_old_one_keeps_serving(
    launch: Launch,
) -> None:
    d = launch("{session: {dmScope: 'main'}}")
    conn = d.raw()  # opened before: must stay usable
    replace_file(d.config_path, "{session: {dmScope: 'per-galaxy'}}")
    rejected = wait_log(d, "config.rejected")[0]
    assert "session.dmScope" in rejected["reason"] and "per-galaxy" in rejected["reason"]
    assert log_lines(d, "config.reloaded") == []
    assert ingest(d, "111")["sessionKey"] == "agent:main:main"
    assert "result" in conn.call("status")

    replace_file(d.config_path, "{session: {dmScope: 'main'")  # a syntax error this time
    rejected = wait_log(d, "config.rejected", count=2)[1]
    assert "syntax error" in rejected["reason"]
    assert ingest(d, "222")["sessionKey"] == "agent:main:main"
    assert d.running


def test_a_valid_change_applies_without_a_restart(launch: Launch) -> None:
    d = launch("{session: {dmScope: 'main'}}")
    pid = d.pid
    conn = d.raw()
    assert ingest(d, "111")["sessionKey"] == "agent:main:main"
    assert ingest(d, "111", "/fresh")["reset"] is None  # not a trigger yet

    replace_file(
        d.config_path,
        "{session: {dmScope: 'per-channel-peer', resetTriggers: ['/new', '/reset', '/fresh']}}",
    )
    reloaded = wait_log(d, "config.reloaded")[0]
    assert reloaded["changed"] == ["session"] and reloaded["trigger"] == "file"
    assert ingest(d, "111")["sessionKey"] == "agent:main:telegram:direct:111"
    answer = ingest(d, "111", "/fresh")
    assert answer["reset"] is not None and answer["command"]["name"] == "reset"
    assert "result" in conn.call("status")  # the same connection, the same process
    assert d.pid == pid


def test_sighup_reloads(launch: Launch) -> None:
    d = launch("{session: {dmScope: 'main'}}")
    assert d.pid is not None
    replace_file(d.config_path, "{session: {dmScope: 'per-peer'}}")
    os.kill(d.pid, signal.SIGHUP)
    wait_for(
        "a reload by SIGHUP",
        lambda: [r for r in log_lines(d, "config.reloaded") if r["trigger"] == "SIGHUP"],
    )
    # The file watch waits for the file to settle, so the signal got there first.
    by_signal = [r for r in log_lines(d, "config.reloaded") if r["trigger"] == "SIGHUP"]
    assert by_signal[0]["changed"] == ["session"]
    assert ingest(d, "111")["sessionKey"] == "agent:main:direct:111"


def test_config_reload_answers_with_what_happened(launch: Launch) -> None:
    d = launch("{daemon: {socketMode: '0660'}}")
    replace_file(d.config_path, "{daemon: {socketMode: '0600'}, session: {dmScope: 'per-peer'}}")
    res = d.call("config.reload")
    assert res["reloaded"] is True and "error" not in res
    assert res["restartRequired"] == ["daemon.socketMode"]
    assert stat.S_IMODE(os.lstat(d.socket).st_mode) == 0o660  # not applied
    assert ingest(d, "111")["sessionKey"] == "agent:main:direct:111"  # applied
    assert wait_log(d, "config.restart_required")[0]["keys"] == ["daemon.socketMode"]

    # (`sessions` itself is a real key since sessions.backup; a misspelling is not)
    replace_file(d.config_path, "{session: {dmScope: 'per-peer'}, sesions: {}}")
    res = d.call("config.reload")
    assert res["reloaded"] is False
    assert "sesions" in res["error"] and "unknown key" in res["error"]
    assert ingest(d, "222")["sessionKey"] == "agent:main:direct:222"


def test_a_reload_never_drops_a_connection_or_an_acknowledgement(launch: Launch) -> None:
    configs = ["{session: {dmScope: 'per-peer'}}", "{session: {dmScope: 'per-channel-peer'}}"]
    d = launch(configs[0])
    assert d.pid is not None
    clients, per_client, burst = 4, 1500, 50
    conns = [d.raw(timeout=30) for _ in range(clients)]
    answers: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def send(n: int) -> None:
        conn = conns[n]
        for start in range(0, per_client, burst):
            ids = [
                conn.send_request(
                    "message.ingest",
                    ingest_params(f"{n}-{i % 7}", f"m {i}", messageId=f"c{n}-{i}"),
                )
                for i in range(start, start + burst)
            ]
            answers[n].extend(conn.read() for _ in ids)

    def reload() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if i % 3 == 0:
                os.kill(d.pid or 0, signal.SIGHUP)
            elif i % 3 == 1:
                replace_file(d.config_path, configs[i % 2])
            else:
                d.call("config.reload")
            time.sleep(0.02)

    reloader = threading.Thread(target=reload)
    senders = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
    reloader.start()
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    stop.set()
    reloader.join(30)

    assert sum(1 for r in log_lines(d, "config.reloaded")) >= 5
    for n, got in enumerate(answers):
        assert len(got) == per_client
        errors = [a for a in got if "result" not in a]
        assert errors == [], errors[:3]
        assert "result" in conns[n].call("status")  # still connected
    assert d.stop() == 0
    stored = Counter(mid for lines in d.transcripts().values() for mid in message_ids(lines))
    assert len(stored) == clients * per_client
    assert set(stored.values()) == {1}


# ---------------------------------------------------------------------------------------------
# All or nothing (issue 12): a config whose token secrets cannot be resolved changes nothing

TOKEN = "tok-" + "a" * 40
OTHER = "tok-" + "b" * 40


def token_config(d: Daemon, dm_scope: str, tokens: list[dict[str, Any]]) -> str:
    return orjson.dumps(
        {
            "session": {"dmScope": dm_scope},
            "daemon": {"listeners": [{"unix": str(d.workdir / "t.sock")}]},
            "auth": {"tokens": tokens},
        }
    ).decode()


@pytest.mark.parametrize("source", ["tokenFile", "tokenEnv"])
def test_a_token_that_cannot_be_resolved_rejects_the_whole_reload(
    launch: Launch, source: str
) -> None:
    d = launch(start=False)
    d.config_path.write_text(
        token_config(d, "main", [{"name": "ops", "token": TOKEN, "role": "admin"}])
    )
    d.start()
    assert ingest(d, "111")["sessionKey"] == "agent:main:main"
    secret: dict[str, str] = (
        {"tokenFile": str(d.workdir / "no-such-token")}
        if source == "tokenFile"
        else {"tokenEnv": "SESSIOND_TEST_TOKEN_NOT_SET"}
    )
    replace_file(
        d.config_path,
        token_config(d, "per-peer", [{"name": "new", "role": "admin", **secret}]),
    )
    res = d.call("config.reload")
    assert res["reloaded"] is False
    assert f"auth.tokens[0].{source}" in res["error"]
    assert res["changed"] == []
    # Nothing of the new file applies: not the session settings, not the tokens.
    assert ingest(d, "111")["sessionKey"] == "agent:main:main"
    with Client(str(d.workdir / "t.sock"), token=TOKEN) as c:
        assert c.call("status")["storage"] == "ok"
    rejected = wait_log(d, "config.rejected")
    assert any(f"auth.tokens[0].{source}" in r["reason"] for r in rejected)
    assert not [r for r in log_lines(d, "config.reloaded") if r["trigger"] == "rpc"]

    # Once the secret can be read, the same file applies in full.
    if source == "tokenFile":
        (d.workdir / "no-such-token").write_text(OTHER)
        res = d.call("config.reload")
        assert res["reloaded"] is True and set(res["changed"]) >= {"session", "auth"}
        assert ingest(d, "111")["sessionKey"] == "agent:main:direct:111"
        with Client(str(d.workdir / "t.sock"), token=OTHER) as c:
            assert c.call("status")["storage"] == "ok"
        with pytest.raises(RpcError) as e, Client(str(d.workdir / "t.sock"), token=TOKEN):
            pass
        assert e.value.code == 1001


@pytest.mark.parametrize("text", ["", "\n  \n", "null", "// emptied by a botched deploy\n"])
def test_an_empty_config_file_is_rejected_by_reload_and_the_old_config_keeps_serving(
    launch: Launch, text: str
) -> None:
    d = launch("{session: {dmScope: 'per-peer'}}")
    replace_file(d.config_path, text)
    res = d.call("config.reload")
    assert res["reloaded"] is False
    assert "empty" in res["error"] and str(d.config_path) in res["error"]
    assert ingest(d, "111")["sessionKey"] == "agent:main:direct:111"
    assert wait_log(d, "config.rejected")


def test_an_empty_config_file_stops_start_up_and_fails_config_check(launch: Launch) -> None:
    d = launch("", start=False)
    proc = d.spawn()
    assert proc.wait(timeout=30) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert "empty" in err and "Traceback" not in err
    check = subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", "--config", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1
    assert "empty" in check.stderr and str(d.config_path) in check.stderr
