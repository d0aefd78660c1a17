"""The config file (SPEC section 1): where it is found, what it may say, how mistakes are told."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import pytest
from pydantic import BaseModel, Field, ValidationError

from daemon.config import Config, DaemonConfig
from daemon.config_errors import format_validation_error
from daemon.config_load import (
    find_config,
    load_config,
    parse_config,
    resolve_socket_path,
    resolve_state_dir,
)
from daemon.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.json5"


def error_of(text: str, source: str = "config.json5") -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text, source)
    return str(e.value)


def write(tmp_path: Path, text: str, name: str = "config.json5") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds: itself, or inside Optional, tuple[...], dict[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in models_in(arg)]


def all_models(root: type[BaseModel] = Config) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.append(model)
            for field in model.model_fields.values():
                todo.extend(models_in(field.annotation))
    return seen


# Commented-out example lines inside the example file: `// key: value,` or `// { ... },`, possibly
# followed by a trailing `// comment`. Prose comments never look like that.
_EXAMPLE_LINE = re.compile(r"^(\s*)//(\s*)([{\[]|(?:[{}\[\]]|[\w$\"-]+\s*:).*?[,{\[])(\s+//\s.*)?$")


def uncomment_examples(text: str) -> str:
    return "\n".join(_EXAMPLE_LINE.sub(r"\1\2\3\4", line) for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# The example file


def test_example_file_parses_and_equals_the_defaults() -> None:
    cfg = parse_config(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert cfg.model_dump() == Config().model_dump()  # a readable diff if not
    assert cfg == Config()


def test_every_key_of_every_model_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [
        f"{model.__name__}.{name}"
        for model in all_models()
        for name in model.model_fields
        if not re.search(rf"(?<![\w$]){re.escape(name)}\s*:", text)
    ]
    assert missing == []


def test_the_walk_over_the_models_reaches_the_nested_ones() -> None:
    names = {m.__name__ for m in all_models()}
    assert {"Config", "AgentEntry", "Binding", "PeerMatch", "ResetOverride"} <= names
    assert {"ChannelAccess", "CompactionConfig", "ResetByType"} <= names


def test_commented_out_examples_in_the_example_are_valid_config() -> None:
    text = uncomment_examples(EXAMPLE.read_text(encoding="utf-8"))
    cfg = parse_config(text, "config.example.json5 (examples uncommented)")
    assert [a.id for a in cfg.agents.list] == ["main", "work"]
    assert [b.agentId for b in cfg.bindings] == ["work", "family"]
    assert cfg.bindings[0].match.peer is not None
    assert cfg.bindings[0].match.peer.kind == "group"
    assert cfg.session.identityLinks["alice"] == (
        "telegram:123456789",
        "discord:987654321012345678",
    )
    assert cfg.session.resetByChannel["discord"].idleMinutes == 10080
    assert cfg.access.channels["telegram"].dm == "allowlist"
    assert cfg.access.channels["slack"].allowGroups == ("C0123456",)


# ---------------------------------------------------------------------------------------------
# No file at all


def test_no_config_file_means_the_builtin_defaults(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    if Path("/etc/sessiond/config.json5").is_file():
        pytest.skip("this host has a system-wide /etc/sessiond/config.json5")
    assert find_config(None, env) is None
    assert load_config(None) == Config()


def test_defaults_are_the_ones_the_spec_names() -> None:
    cfg = Config()
    assert cfg.daemon.socketMode == 0o660
    assert cfg.session.dmScope == "main"
    assert cfg.session.resetTriggers == ("/new", "/reset")
    assert cfg.session.reset.mode == "daily"
    assert cfg.session.reset.atHour == 4
    assert cfg.daemon.dedupWindowHours == 24
    assert cfg.daemon.dedupMaxPerAgent == 10_000
    assert cfg.bindings == ()
    assert cfg.access.default.dm == "open"


@pytest.mark.parametrize(
    "text", ["", "  \n", "// nothing here yet\n", "/* all\nof it */", "null", " null // x\n"]
)
def test_an_empty_null_or_comment_only_file_is_an_error(tmp_path: Path, text: str) -> None:
    """A file truncated by a failed write or a botched deploy must not silently become the
    defaults (every token would stop working, every DM would share one session)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "empty" in str(e.value) and "{}" in str(e.value)


def test_an_empty_object_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "{}  // the defaults, on purpose\n")) == Config()


def test_a_partial_file_keeps_the_defaults_for_what_it_leaves_out() -> None:
    cfg = parse_config('{session: {dmScope: "per-channel-peer", reset: {atHour: 6}}}')
    assert cfg.session.dmScope == "per-channel-peer"
    assert cfg.session.reset.atHour == 6
    assert cfg.session.reset.mode == "daily"
    assert cfg.daemon == DaemonConfig()


# ---------------------------------------------------------------------------------------------
# Mistakes: each names the file and the key path, says what was expected and what was found


def test_reset_hour_out_of_range_names_file_key_and_range(tmp_path: Path) -> None:
    path = write(tmp_path, "{\n  session: { reset: { atHour: 25 } },\n}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: session.reset.atHour: must be between 0 and 23, got 25"


def test_a_json5_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  daemon: {\n    logLevel: "info" "debug",\n  },\n}\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert re.match(rf"^{re.escape(str(path))}:3:22: syntax error: ", str(e.value)), str(e.value)


def test_an_unclosed_object_names_where_the_input_ended() -> None:
    assert error_of("{daemon: {maxLineBytes: 1,}").startswith("config.json5:1:28: syntax error: ")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("{sesion: {}}", "sesion"),
        ('{session: {dmscope: "per-peer"}}', "session.dmscope"),
        ("{session: {reset: {atHours: 4}}}", "session.reset.atHours"),
        ("{access: {channels: {telegram: {allowfrom: []}}}}", "access.channels.telegram.allowfrom"),
        ('{bindings: [{agentId: "a", match: {chanel: "x"}}]}', "bindings[0].match.chanel"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_key_path(text: str, path: str) -> None:
    unknown = "unknown key (check its spelling against config.example.json5)"
    assert f"config.json5: {path}: {unknown}" in error_of(text).splitlines()


def test_a_key_written_twice_is_rejected() -> None:
    assert error_of("{daemon: {maxLineBytes: 1, maxLineBytes: 2}}") == (
        'config.json5: Duplicate key "maxLineBytes" found in object'
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{daemon: {maxLineBytes: "big"}}',
            'daemon.maxLineBytes: must be a whole number, got "big"',
        ),
        ("{daemon: {maxLineBytes: 1.5}}", "daemon.maxLineBytes: must be a whole number, got 1.5"),
        (
            "{daemon: {maxConnections: true}}",
            "daemon.maxConnections: must be a whole number, got true",
        ),
        ("{daemon: {stateDir: 5}}", "daemon.stateDir: must be a string, got 5"),
        (
            '{session: {resetTriggers: "/new"}}',
            'session.resetTriggers: must be a list [...], got "/new"',
        ),
        ("{session: {reset: null}}", "session.reset: must be an object {...}, got null"),
        ("{bindings: {}}", "bindings: must be a list [...], got an object {...}"),
        (
            '{agents: {list: [{id: "a", default: "yes"}]}}',
            'agents.list[0].default: must be true or false, got "yes"',
        ),
        (
            "{session: {reset: {idleMinutes: 0}}}",
            "session.reset.idleMinutes: must be at least 1, got 0",
        ),
        ('{agents: {list: [{id: ""}]}}', "agents.list[0].id: must not be empty"),
        ('{bindings: [{agentId: "a"}]}', "bindings[0].match: required key is missing"),
        (
            '{session: {identityLinks: {alice: "telegram:1"}}}',
            'session.identityLinks.alice: must be a list [...], got "telegram:1"',
        ),
    ],
)
def test_wrong_types_name_the_path_and_what_was_expected(text: str, message: str) -> None:
    assert error_of(text) == f"config.json5: {message}"


def test_a_wrong_choice_lists_the_allowed_ones() -> None:
    assert error_of('{session: {dmScope: "per-user"}}') == (
        'config.json5: session.dmScope: must be one of "main", "per-peer", "per-channel-peer", '
        '"per-account-channel-peer", got "per-user"'
    )
    assert error_of('{session: {resetByChannel: {discord: {mode: "weekly"}}}}') == (
        "config.json5: session.resetByChannel.discord.mode: "
        'must be one of "daily", "idle", "both", "none", got "weekly"'
    )


def test_keys_that_are_not_plain_names_are_quoted_in_the_path() -> None:
    assert error_of('{access: {channels: {"my.chat": {dm: "closed"}}}}').startswith(
        'config.json5: access.channels["my.chat"].dm: must be one of'
    )


def test_every_problem_gets_its_own_line() -> None:
    lines = error_of("{daemon: {maxLineBytes: 0, logLevel: 3}, sesion: 1}").splitlines()
    assert len(lines) == 3
    assert all(line.startswith("config.json5: ") for line in lines)


def test_two_default_agents_are_rejected() -> None:
    assert error_of('{agents: {list: [{id: "a", default: true}, {id: "b", default: true}]}}') == (
        "config.json5: agents.list: at most one agent may be the default, got a, b"
    )


def test_the_top_level_must_be_an_object() -> None:
    assert (
        error_of("[1, 2]")
        == "config.json5: the top level must be an object {...}, got a list [...]"
    )


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Key paths reachable through objects alone (no list or map in between)."""
    paths = []
    for name, field in model.model_fields.items():
        nested = [m for m in models_in(field.annotation) if field.annotation in (m, m | None)]
        if nested:
            paths.extend(_leaf_paths(nested[0], f"{prefix}{name}."))
        else:
            paths.append(prefix + name)
    return paths


@pytest.mark.parametrize("path", _leaf_paths(Config))
def test_a_wrong_value_for_any_key_names_exactly_that_key(path: str) -> None:
    raw: Any = 3.5  # valid for no key at all
    for part in reversed(path.split(".")):
        raw = {part: raw}
    with pytest.raises(ValidationError) as e:
        Config.model_validate(raw)
    message = format_validation_error("config.json5", e.value, raw)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"config.json5: {path}: "), message
    assert message.endswith("got 3.5"), message


def test_union_member_names_never_leak_into_key_paths() -> None:
    class Unix(BaseModel):
        type: Literal["unix"]
        path: str

    class Tcp(BaseModel):
        type: Literal["tcp"]
        port: int

    class Listeners(BaseModel):
        listeners: list[Annotated[Union[Unix, Tcp], Field(discriminator="type")]]  # noqa: UP007
        mode: int | str
        either: Unix | Tcp

    raw = {
        "listeners": [{"type": "tcp", "port": "http"}],
        "mode": 1.5,
        "either": {"type": "tcp"},
    }
    with pytest.raises(ValidationError) as e:
        Listeners.model_validate(raw)
    message = format_validation_error("x.json5", e.value, raw)
    assert 'x.json5: listeners[0].port: must be a whole number, got "http"' in message
    assert "x.json5: mode: must be a whole number or a string, got 1.5" in message
    assert "x.json5: either.port: required key is missing" in message
    for tag in ("tcp", "Tcp", "Unix", "int", "str", "function"):
        assert not re.search(rf"[.\[]{tag}\b", message.replace(".json5", "")), message


# ---------------------------------------------------------------------------------------------
# Particular keys


@pytest.mark.parametrize("zone", ["Europe/Berlin", "UTC", "America/New_York", None])
def test_known_time_zones_are_accepted(zone: str | None) -> None:
    assert DaemonConfig(timezone=zone).timezone == zone


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "utc", "Europe/", "../etc/passwd", "/etc/localtime", ""]
)
def test_unknown_time_zones_are_rejected(zone: str) -> None:
    assert error_of(f"{{daemon: {{timezone: {zone!r}}}}}") == (
        f'config.json5: daemon.timezone: unknown time zone "{zone}" '
        '(expected an IANA name such as "Europe/Berlin")'
    )


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ('"0660"', 0o660),
        ('"0600"', 0o600),
        ('"640"', 0o640),
        ('"0o750"', 0o750),
        ('"2770"', 0o2770),
    ],
)
def test_socket_mode_is_an_octal_string(text: str, mode: int) -> None:
    assert parse_config(f"{{daemon: {{socketMode: {text}}}}}").daemon.socketMode == mode


@pytest.mark.parametrize("text", ['"rwx"', '"rw-rw----"', '"0999"', '"66"', "true", "1.5"])
def test_socket_mode_that_is_not_an_octal_string_is_rejected(text: str) -> None:
    assert error_of(f"{{daemon: {{socketMode: {text}}}}}") == (
        "config.json5: daemon.socketMode: "
        f'must be an octal file mode written as a string such as "0660", got {text}'
    )


def test_socket_mode_may_be_an_int_from_python() -> None:
    assert DaemonConfig(socketMode=0o600).socketMode == 0o600


# ---------------------------------------------------------------------------------------------
# Where things are


def test_state_dir_from_the_command_line_wins(tmp_path: Path) -> None:
    cfg = parse_config('{daemon: {stateDir: "/srv/from-config"}}')
    env = {"STATE_DIRECTORY": "/var/lib/sessiond", "HOME": str(tmp_path)}
    assert resolve_state_dir("/srv/from-flag", cfg, env) == Path("/srv/from-flag")


def test_state_dir_from_the_config_beats_systemd(tmp_path: Path) -> None:
    cfg = parse_config('{daemon: {stateDir: "/srv/from-config"}}')
    env = {"STATE_DIRECTORY": "/var/lib/sessiond", "HOME": str(tmp_path)}
    assert resolve_state_dir(None, cfg, env) == Path("/srv/from-config")


def test_state_dir_from_systemd_beats_the_home_default(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/sessiond", "HOME": str(tmp_path)}
    assert resolve_state_dir(None, Config(), env) == Path("/var/lib/sessiond")
    # systemd passes one folder per StateDirectory= entry, colon-separated; the first is ours.
    env["STATE_DIRECTORY"] = "/var/lib/sessiond:/var/lib/other"
    assert resolve_state_dir(None, Config(), env) == Path("/var/lib/sessiond")


def test_state_dir_defaults_to_local_state_in_home(tmp_path: Path) -> None:
    assert resolve_state_dir(None, Config(), {"HOME": str(tmp_path)}) == (
        tmp_path / ".local/state/sessiond"
    )


def test_socket_defaults_to_the_state_dir_unless_configured(tmp_path: Path) -> None:
    assert resolve_socket_path(Config(), tmp_path) == tmp_path / "sessiond.sock"
    cfg = parse_config('{daemon: {socket: "/run/sessiond/s.sock"}}')
    assert resolve_socket_path(cfg, tmp_path) == Path("/run/sessiond/s.sock")


def test_config_flag_beats_the_environment(tmp_path: Path) -> None:
    flag, from_env = write(tmp_path, "{}", "flag.json5"), write(tmp_path, "{}", "env.json5")
    env = {"SESSIOND_CONFIG": str(from_env), "HOME": str(tmp_path)}
    assert find_config(str(flag), env) == flag


def test_config_from_the_environment_beats_the_per_user_file(tmp_path: Path) -> None:
    user = tmp_path / ".config/sessiond/config.json5"
    user.parent.mkdir(parents=True)
    user.write_text("{}")
    from_env = write(tmp_path, "{}", "env.json5")
    assert find_config(None, {"SESSIOND_CONFIG": str(from_env), "HOME": str(tmp_path)}) == from_env
    assert find_config(None, {"HOME": str(tmp_path)}) == user


def test_a_named_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json5"
    path = find_config(None, {"SESSIOND_CONFIG": str(missing), "HOME": str(tmp_path)})
    assert path == missing
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{missing}: config file not found"


def test_a_config_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json5"
    path.write_bytes(b'{daemon: {socket: "/tmp/\xff"}}')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: not valid UTF-8 at byte 24"


def test_config_models_are_immutable() -> None:
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.daemon.maxLineBytes = 1  # type: ignore[misc]


def test_a_config_file_over_a_mebibyte_is_an_error_not_a_long_reload(tmp_path: Path) -> None:
    from daemon.config_files import MAX_CONFIG_BYTES
    from daemon.config_load import load_config

    path = tmp_path / "config.json5"
    path.write_text('{"daemon": {"logLevel": "info"}, "x": "' + "a" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "at most 1,048,576" in str(e.value) and str(path) in str(e.value)


def test_plain_json_and_json5_read_alike_and_a_repeated_key_is_still_an_error() -> None:
    from daemon.config_files import read_json5

    plain = '{"session": {"dmScope": "per-peer"}, "daemon": {"maxConnections": 10}}'
    five = "{session: {dmScope: 'per-peer'}, daemon: {maxConnections: 10,},} // note"
    assert read_json5(plain, "a") == read_json5(five, "b")
    with pytest.raises(ConfigError) as e:
        read_json5('{"a": 1, "a": 2}', "c")
    assert "c:" in str(e.value)
    assert read_json5('{"a": 1, "a": 2}', "d", duplicates_ok=True) == {"a": 2}
