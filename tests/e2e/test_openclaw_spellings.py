"""OpenClaw's spellings over the real socket: `key` for sessionKey, OpenClaw's list rows and
`sessions list --json` shape, memory.search's seed spellings and date-only bounds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import orjson
import pytest

from daemon.client import Client, RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env, ingest_params

CONFIG = {
    "agents": {"list": [{"id": "main", "default": True}, {"id": "work"}]},
    "bindings": [{"agentId": "work", "match": {"channel": "slack"}}],
    "session": {"dmScope": "per-channel-peer"},
    "daemon": {"timezone": "Europe/Berlin"},
}
MAIN = "agent:main:telegram:direct:42"
WORK = "agent:work:slack:direct:u7"


@pytest.fixture
def d(launch: Launch) -> Daemon:
    d = launch(start=False)
    listener = {"unix": str(d.workdir / "main.sock"), "role": "agent", "agents": ["main"]}
    config = {**CONFIG, "daemon": {**CONFIG["daemon"], "listeners": [listener]}}
    d.config_path.write_text(json.dumps(config))
    d.start()
    c = d.client()
    c.call("message.ingest", ingest_params("42", "the quokka smiles", messageId="m1"))
    c.call("message.ingest", ingest_params("u7", "work talk", channel="slack"))
    return d


def test_key_is_an_alias_of_session_key(d: Daemon) -> None:
    c = d.client()
    assert c.call("sessions.get", {"key": MAIN}) == c.call("sessions.get", {"sessionKey": MAIN})
    history = c.call("sessions.history", {"key": MAIN})
    assert history["sessionKey"] == MAIN and len(history["entries"]) == 1
    assert c.call("sessions.get", {"key": MAIN, "sessionKey": MAIN})["sessionKey"] == MAIN
    with pytest.raises(RpcError) as e:
        c.call("sessions.get", {"key": MAIN, "sessionKey": WORK})
    assert e.value.code == -32602 and e.value.data["field"] == "key"


def test_an_agent_cannot_reach_another_agents_session_through_the_alias(d: Daemon) -> None:
    with Client(d.workdir / "main.sock") as agent:
        assert agent.call("sessions.history", {"key": MAIN})["sessionKey"] == MAIN
        for method in ("sessions.get", "sessions.history", "sessions.context"):
            with pytest.raises(RpcError) as e:
                agent.call(method, {"key": WORK})
            assert e.value.code == 1002, method


def test_list_rows_carry_openclaws_key_kind_age_and_model(d: Daemon) -> None:
    d.client().call("message.ingest", ingest_params("42", "/new openai/gpt-4o", messageId="m2"))
    rows = {r["sessionKey"]: r for r in d.client().call("sessions.list", {})["sessions"]}
    row = rows[MAIN]
    assert row["key"] == MAIN and row["kind"] == "direct"
    assert isinstance(row["ageMs"], int) and row["ageMs"] >= 0
    assert row["model"] == "gpt-4o"  # OpenClaw's rows name the model without its provider
    assert rows[WORK]["model"] is None


def test_cli_sessions_list_json_has_openclaws_shape(d: Daemon) -> None:
    def listed(*extra: str) -> dict:
        at = ["--state-dir", str(d.state_dir), "--config", str(d.config_path)]
        res = subprocess.run(
            [sys.executable, "-m", "daemon", "sessions", "list", "--json", *extra, *at],
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(),
        )
        assert res.returncode == 0, res.stderr
        out: dict = orjson.loads(res.stdout)
        return out

    everything = listed()
    assert everything["path"] is None and everything["count"] == 2
    assert [s["agentId"] for s in everything["stores"]] == ["main", "work"]
    one = listed("--agent", "work")
    assert one["path"] == str(d.state_dir / "agents/work/sessions/sessions.json")
    assert one["count"] == 1 and one["sessions"][0]["key"] == WORK
    assert one["activeMinutes"] is None


def test_memory_search_takes_the_seed_spellings_and_dates(d: Daemon) -> None:
    deadline = time.monotonic() + 60
    while d.call("status")["search"]["state"] != "ok":  # the index worker starts on its own
        assert time.monotonic() < deadline, d.output()
        time.sleep(0.05)
    c = d.client()
    hits = c.call("memory.search", {"query": "quokka", "include_sessions": True, "session": MAIN})
    assert [h["sessionKey"] for h in hits["hits"]] == [MAIN]
    assert c.call("memory.search", {"query": "quokka", "session": WORK})["hits"] == []
    assert c.call("memory.search", {"query": "quokka", "after": "2999-01-01"})["hits"] == []
    assert len(c.call("memory.search", {"query": "quokka", "before": "2999-01-01"})["hits"]) == 1
    with pytest.raises(RpcError) as e:
        c.call("memory.search", {"query": "quokka", "after": "2024-02-30"})
    assert e.value.data["field"] == "after"
