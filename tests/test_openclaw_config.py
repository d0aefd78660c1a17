"""OpenClaw's openclaw.json as a config source (daemon/openclaw_config.py), with the real files
OpenClaw wrote (tests/fixtures/openclaw-*/openclaw.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.config_load import load_config
from daemon.core.exclusions import exclude_problems, excluded
from daemon.core.keys import Inbound, resolve_route
from daemon.errors import ConfigError
from daemon.openclaw_config import check_report, detect, is_openclaw_file, translate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_6 = FIXTURES / "openclaw-2026.6" / "openclaw.json"
REAL_9 = FIXTURES / "openclaw-2026.9" / "openclaw.json"


def real(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def write(folder: Path, data: dict[str, Any] | str, name: str = "openclaw.json") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def dm(cfg: Config, channel: str, peer: str, account: str | None = None) -> str:
    return resolve_route(
        Inbound(channel, "direct", peer, account_id=account), cfg.routing()
    ).session_key


def test_the_real_2026_6_file_routes_as_openclaw_did() -> None:
    cfg = load_config(REAL_6)
    # The fixture's own sessions.json holds these keys for these chats.
    keys = set(real(REAL_6.parent / "agents/main/sessions/sessions.json"))
    assert dm(cfg, "telegram", "123456789") == "agent:main:telegram:direct:123456789"
    assert "agent:main:telegram:direct:123456789" in keys
    assert dm(cfg, "discord", "410029384756102938") in keys
    # Bindings: Discord account "work" and all of Slack go to agent work.
    assert dm(cfg, "discord", "1", account="work").startswith("agent:work:discord:direct:")
    assert dm(cfg, "slack", "u1").startswith("agent:work:")
    assert cfg.default_agent_id() == "main"
    assert [a.id for a in cfg.agents.list] == ["main", "work"]
    assert cfg.agents.defaults.compaction.keepRecentTokens == 250


def test_the_real_files_list_what_was_taken_and_ignored() -> None:
    t = translate(real(REAL_6))
    assert "session.dmScope" in t.taken and "bindings[0].match.accountId" in t.taken
    assert set(t.ignored) == {
        "logging",
        "models",
        "agents.defaults.model",
        "agents.defaults.models",
    }
    t9 = translate(real(REAL_9))
    assert "session.resetByChannel" in t9.taken
    cfg = load_config(REAL_9)
    whatsapp = cfg.session.resetByChannel["whatsapp"]
    assert (whatsapp.mode, whatsapp.idleMinutes) == ("idle", 1)


def test_agents_entries_of_2026_9_equal_agents_list_of_2026_6() -> None:
    listed = real(REAL_6)
    entries = json.loads(json.dumps(listed))
    entries["agents"]["entries"] = {"main": {"default": True}, "work": {}}
    del entries["agents"]["list"]
    a = Config.model_validate(translate(listed).config)
    b = Config.model_validate(translate(entries).config)
    assert a.agents.list == b.agents.list
    assert "agents.entries.work" in translate(entries).taken


def test_an_agent_in_both_list_and_entries_is_taken_once_with_a_note() -> None:
    t = translate({"agents": {"list": [{"id": "main"}], "entries": {"main": {"default": True}}}})
    assert t.config["agents"]["list"] == [{"id": "main"}]
    assert any("agents.list and agents.entries" in n for n in t.notes)


def test_gateway_keys_are_ignored_never_an_error(tmp_path: Path) -> None:
    data = {
        "channels": {"telegram": {"botToken": "x"}},
        "gateway": {"port": 18789},
        "plugins": {"entries": {}},
        "mcp": {"servers": {}},
        "session": {"dmScope": "per-peer", "typingMode": "instant", "store": "x"},
        "bindings": [{"agentId": "a", "match": {"channel": "telegram", "roles": ["x"]}}],
        "agents": {"list": [{"id": "a", "model": "m", "tools": {}}]},
    }
    cfg = load_config(write(tmp_path, data))
    assert cfg.session.dmScope == "per-peer"
    t = translate(data)
    for key in ("channels", "gateway", "plugins", "mcp", "session.typingMode", "session.store"):
        assert key in t.ignored
    assert "bindings[0].match.roles" in t.ignored and "agents.list[0].model" in t.ignored


def test_compaction_memory_flush_and_workspace_are_read() -> None:
    data = {
        "agents": {
            "defaults": {
                "workspace": "~/ws",
                "compaction": {
                    "mode": "safeguard",
                    "reserveTokensFloor": 30000,
                    "memoryFlush": {
                        "enabled": False,
                        "softThresholdTokens": 6000,
                        "prompt": "Write notes.",
                        "systemPrompt": "x",
                    },
                },
            }
        }
    }
    cfg = Config.model_validate(translate(data).config)
    cc = cfg.agents.defaults.compaction
    assert cc.reserveTokensFloor == 30000
    assert (cc.memoryFlush.enabled, cc.memoryFlush.softThresholdTokens) == (False, 6000)
    assert cc.memoryFlush.prompt == "Write notes."
    assert cfg.agents.defaults.workspace == "~/ws"
    ignored = translate(data).ignored
    assert "agents.defaults.compaction.mode" in ignored
    assert "agents.defaults.compaction.memoryFlush.systemPrompt" in ignored


def test_agents_defaults_session_is_under_session() -> None:
    data = {
        "session": {"dmScope": "per-peer"},
        "agents": {"defaults": {"session": {"dmScope": "main", "mainKey": "home"}}},
    }
    cfg = Config.model_validate(translate(data).config)
    assert (cfg.session.dmScope, cfg.session.mainKey) == ("per-peer", "home")


@pytest.mark.parametrize("scope", ["per-sender", "global"])
def test_legacy_scope_is_accepted_and_explained(scope: str) -> None:
    t = translate({"session": {"scope": scope, "idleMinutes": 90}})
    cfg = Config.model_validate(t.config)
    assert cfg.session.dmScope == "main"
    assert cfg.session.reset.idleMinutes == 90, "legacy session.idleMinutes is reset.idleMinutes"
    (note,) = t.notes
    assert "session.scope" in note and scope in note and "dmScope" in note


def test_a_wrong_value_names_its_key_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"session": {"dmScope": "per-everyone"}, "models": {}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "session.dmScope" in str(e.value)


def test_json5_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "{\n  session: { dmScope: 'main', }\n  models: oops\n}")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:3:" in str(e.value)


def test_the_sessiond_block_and_a_layered_config_win_in_that_order(tmp_path: Path) -> None:
    oc = write(
        tmp_path,
        {
            "session": {"dmScope": "per-channel-peer", "mainKey": "oc"},
            "sessiond": {"session": {"mainKey": "block"}, "daemon": {"maxConnections": 7}},
        },
    )
    cfg = load_config(oc)
    assert (cfg.session.dmScope, cfg.session.mainKey) == ("per-channel-peer", "block")
    assert cfg.daemon.maxConnections == 7
    ours = write(
        tmp_path,
        '{openclaw: "openclaw.json", daemon: {maxConnections: 9}, session: {mainKey: "own"}}',
        name="config.json5",
    )
    layered = load_config(ours)
    assert layered.session.dmScope == "per-channel-peer"
    assert (layered.session.mainKey, layered.daemon.maxConnections) == ("own", 9)


def test_a_sessiond_block_with_a_typo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"sessiond": {"deamon": {}}}))
    assert "deamon" in str(e.value)


def test_detection_by_name_and_in_the_state_folder(tmp_path: Path) -> None:
    assert is_openclaw_file(Path("/x/openclaw.json"))
    assert is_openclaw_file(Path("openclaw.json.last-good"))
    assert not is_openclaw_file(Path("config.json5"))
    assert detect(tmp_path) is None
    write(tmp_path, {})
    assert detect(tmp_path) == tmp_path / "openclaw.json"


def test_check_report_lists_taken_ignored_and_the_effective_config() -> None:
    report = check_report(REAL_6, load_config(REAL_6))
    assert report["openclaw"]["file"] == str(REAL_6)
    assert "models" in report["openclaw"]["ignored"]
    assert report["effective"]["session"]["dmScope"] == "per-channel-peer"
    assert report["warnings"] == []


# ---------------------------------------------------------------------------------------------
# sessions.backup.exclude_patterns


@pytest.mark.parametrize(
    ("pattern", "key", "hit"),
    [
        ("heartbeat*", "agent:main:heartbeat", True),
        ("system:*", "agent:ops:system:cron", True),
        ("agent:main:*", "agent:main:telegram:direct:1", True),
        ("heartbeat*", "agent:main:telegram:direct:heartbeat", False),
        ("*:group:*", "agent:main:telegram:group:-100", True),
        ("main", "agent:main:telegram:direct:1", False),
    ],
)
def test_exclude_patterns_match_the_key_with_or_without_its_agent_prefix(
    pattern: str, key: str, hit: bool
) -> None:
    assert excluded(key, (pattern,)) is hit


def test_a_pattern_that_can_match_no_key_is_a_warning(tmp_path: Path) -> None:
    problems = exclude_problems(("", "heart beat*", "agent:Main:*", "agent:*:x", "heartbeat*"))
    assert len(problems) == 3
    assert "[0]" in problems[0] and "[1]" in problems[1] and "'Main'" in problems[2]
    path = write(tmp_path, {"sessions": {"backup": {"exclude_patterns": ["agent:Main:*"]}}})
    (warning,) = check_report(path, load_config(path))["warnings"]
    assert warning == problems[2].replace("[2]", "[0]")
