"""Configuration: JSON5 on disk, validated by pydantic v2, with errors that name file, line and key.

The file is optional: with none at all the built-in defaults run. Keys use OpenClaw's camelCase
spelling; unknown keys are rejected so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import json5
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon import openclaw_config
from daemon.core.shards import ShardMap
from daemon.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Small validators that phrase errors the way an operator reads them.


def _between(lo: int, hi: int) -> Callable[[int], int]:
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {_show(v)}")
        return v

    return check


def _at_least(lo: int) -> Callable[[int], int]:
    def check(v: int) -> int:
        if v < lo:
            raise ValueError(f"must be at least {lo}, got {_show(v)}")
        return v

    return check


def _octal_mode(v: object) -> int:
    # JSON5 has no octal numbers, so the file spells modes as strings; Python callers pass ints.
    if isinstance(v, int) and not isinstance(v, bool):
        mode = v
    elif isinstance(v, str) and re.fullmatch(r"(?:0o?)?[0-7]{3,4}", v):
        mode = int(v.removeprefix("0o"), 8)
    else:
        raise ValueError(
            f'must be an octal file mode written as a string such as "0660", got {_show(v)}'
        )
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"must be a file mode between 0000 and 7777, got {oct(mode)}")
    return mode


# Strict: a config that says `maxLineBytes: true` or `default: "yes"` is a mistake, not a number.
Hour = Annotated[int, Strict(), AfterValidator(_between(0, 23))]
PositiveInt = Annotated[int, Strict(), AfterValidator(_at_least(1))]
NonNegativeInt = Annotated[int, Strict(), AfterValidator(_at_least(0))]
Flag = Annotated[bool, Strict()]
FileMode = Annotated[int, BeforeValidator(_octal_mode)]


class _Model(BaseModel):
    """Base for every config section: camelCase keys as in OpenClaw, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# daemon


class SpoolConfig(_Model):
    """The spool folder (daemon/spool.py): message.ingest for adapters that write files."""

    enabled: Flag = False
    dir: str | None = None  # default <stateDir>/spool; a relative path is under the state folder


# ---------------------------------------------------------------------------------------------
# listeners (daemon/listeners.py): more sockets, each with a default role


RoleName = Literal["admin", "adapter", "agent"]
_LOOPBACK_NAMES = ("localhost",)


def parse_tcp_address(v: str, *, tls: bool | None = None) -> tuple[str, int]:
    """`127.0.0.1:7000`, `[::1]:7000` or `localhost:7000` as (host, port). Loopback only unless
    `tls` is True (a listener with `tls`: any address or host name): without TLS, anything else
    would send tokens and transcripts in clear. `tls` None: a listener that cannot have TLS."""
    import ipaddress

    host, sep, port_text = v.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f'must be "HOST:PORT" such as "127.0.0.1:7000", got {_show(v)}')
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    if host.lower() in _LOOPBACK_NAMES:
        return "127.0.0.1", port
    if tls:
        return host, port
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        why = (
            "sessiond listens beyond this machine only with TLS (add tls: {cert, key})"
            if tls is False
            else "this listener has no TLS, so it never listens beyond this machine"
        )
        raise ValueError(
            f"must be a loopback address (127.0.0.1, [::1] or localhost), got {_show(v)}: {why}"
        )
    return host, port


def _check_agents(role: str | None, agents: tuple[str, ...], what: str) -> None:
    if role == "agent" and len(agents) != 1:
        raise ValueError(f'{what} with role "agent" must name exactly one agent in agents')
    if role in (None, "admin") and agents:
        raise ValueError(f"agents only applies to the adapter and agent roles ({what})")


def _file_path(v: str) -> str:
    if not v.strip():
        raise ValueError("must be a file path, got an empty string")
    return v


FilePath = Annotated[str, Strict(), AfterValidator(_file_path)]


class TlsConfig(_Model):
    """TLS on a TCP listener (daemon/listeners.py): PEM files, read at start-up and on reload."""

    cert: FilePath  # the server's certificate chain
    key: FilePath  # its private key, unencrypted
    clientCa: FilePath | None = None  # set: clients must present a certificate signed by it


class ListenerConfig(_Model):
    """A socket served besides daemon.socket: a Unix socket (unix, mode), TCP on loopback, or
    TCP on any address with TLS."""

    unix: str | None = None
    # Before tcp: the tcp check reads it (pydantic validates fields in this order).
    tls: TlsConfig | None = None
    tcp: str | None = None
    mode: FileMode | None = None  # Unix sockets only; default "0660"
    role: RoleName | None = None  # None: every connection must present a token
    agents: tuple[str, ...] = ()
    maxConnections: PositiveInt | None = None  # default daemon.limits.listenerConnections

    @field_validator("tcp")
    @classmethod
    def _loopback_without_tls(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            parse_tcp_address(v, tls=info.data.get("tls") is not None)
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ListenerConfig:
        if (self.unix is None) == (self.tcp is None):
            raise ValueError('give exactly one of unix (a socket path) or tcp ("127.0.0.1:PORT")')
        if self.tcp is not None and self.role is not None:
            raise ValueError(
                "a TCP listener has no default role: every TCP connection presents a token "
                "(auth.hello); remove role"
            )
        if self.tcp is not None and self.mode is not None:
            raise ValueError("mode applies to Unix sockets only")
        if self.unix is not None and self.tls is not None:
            raise ValueError("tls applies to TCP listeners only")
        _check_agents(self.role, self.agents, "a listener")
        return self


class LimitsConfig(_Model):
    """What one client may hold of the daemon (daemon/server.py)."""

    maxUnsentBytes: PositiveInt = 1024 * 1024  # answers a connection has not read yet
    maxInFlight: PositiveInt = 4096  # requests a connection has waiting for their answers
    stallTimeoutSeconds: PositiveInt = 60  # answers not read for this long: closed
    helloTimeoutSeconds: PositiveInt = 10  # a connection that needs a token must send it by then
    listenerConnections: PositiveInt = 256  # per daemon.listeners entry (maxConnections there)


class DaemonConfig(_Model):
    stateDir: str | None = None
    socket: str | None = None
    socketMode: FileMode = 0o660
    timezone: str | None = None
    maxLineBytes: PositiveInt = 1024 * 1024
    maxConnections: PositiveInt = 1024
    idleTimeoutSeconds: PositiveInt = 600
    frameTimeoutSeconds: PositiveInt = 30  # a begun request line must end within this
    checkpointIntervalMs: PositiveInt = 1000
    dedupWindowHours: PositiveInt = 24
    dedupMaxPerAgent: PositiveInt = 10_000
    logLevel: Literal["debug", "info", "warning", "error"] = "info"
    logFormat: Literal["auto", "json", "console"] = "auto"
    spool: SpoolConfig = SpoolConfig()
    listeners: tuple[ListenerConfig, ...] = ()
    compactionWorkers: PositiveInt = 2  # memory flushes and compactions running at once
    limits: LimitsConfig = LimitsConfig()
    metrics: str | None = None  # "127.0.0.1:PORT": /metrics and /healthz (daemon/metrics.py)

    @field_validator("metrics")
    @classmethod
    def _metrics_loopback_only(cls, v: str | None) -> str | None:
        if v is not None:
            parse_tcp_address(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f'unknown time zone {_show(v)} (expected an IANA name such as "Europe/Berlin")'
            ) from None
        return v


# ---------------------------------------------------------------------------------------------
# agents and routing


class MemoryFlushConfig(_Model):
    """The memory flush before a compaction (and a reset): lasting notes to memory/DATE.md."""

    enabled: Flag = True
    softThresholdTokens: NonNegativeInt = 4_000
    prompt: str | None = None  # None: the built-in prompt (daemon/summarizers/__init__.py)
    onReset: Flag = True


class SummarizerConfig(_Model):
    """Who writes summaries and memory notes (daemon/summarizers/)."""

    kind: Literal["builtin", "command", "openai"] = "builtin"
    command: tuple[str, ...] = ()
    baseUrl: str | None = None
    model: str | None = None
    apiKeyEnv: str | None = None
    timeoutSeconds: PositiveInt = 120
    retries: NonNegativeInt = 2
    maxOutputTokens: PositiveInt = 2_048

    @model_validator(mode="after")
    def _complete(self) -> SummarizerConfig:
        if self.kind == "command" and not self.command:
            raise ValueError('kind "command" needs command: the program and its arguments')
        if self.kind == "openai" and not (self.baseUrl and self.model):
            raise ValueError('kind "openai" needs baseUrl and model')
        return self


class CompactionConfig(_Model):
    contextWindow: PositiveInt = 200_000
    reserveTokensFloor: NonNegativeInt = 20_000
    keepRecentTokens: NonNegativeInt = 20_000
    retryBaseSeconds: PositiveInt = 30
    memoryFlush: MemoryFlushConfig = MemoryFlushConfig()
    summarizer: SummarizerConfig = SummarizerConfig()


class AgentDefaults(_Model):
    workspace: str | None = None
    compaction: CompactionConfig = CompactionConfig()


class AgentEntry(_Model):
    id: str = Field(min_length=1)
    default: Flag = False
    name: str | None = None
    workspace: str | None = None
    compaction: CompactionConfig | None = None  # keys set here override agents.defaults


class AgentsConfig(_Model):
    defaults: AgentDefaults = AgentDefaults()
    list: tuple[AgentEntry, ...] = ()

    @field_validator("list")
    @classmethod
    def _one_default(cls, v: tuple[AgentEntry, ...]) -> tuple[AgentEntry, ...]:
        defaults = [a.id for a in v if a.default]
        if len(defaults) > 1:
            raise ValueError(f"at most one agent may be the default, got {', '.join(defaults)}")
        return v

    @model_validator(mode="after")
    def _thresholds(self) -> AgentsConfig:
        from daemon.core.tokens import threshold_problem

        problem = threshold_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


class PeerMatch(_Model):
    kind: Literal["direct", "dm", "group", "channel", "thread"]
    id: str


class BindingMatch(_Model):
    channel: str = Field(min_length=1)
    accountId: str | None = None
    peer: PeerMatch | None = None
    guildId: str | None = None
    teamId: str | None = None


class Binding(_Model):
    agentId: str = Field(min_length=1)
    match: BindingMatch


# ---------------------------------------------------------------------------------------------
# sessions


ResetMode = Literal["daily", "idle", "both", "none"]


class ResetPolicyConfig(_Model):
    mode: ResetMode = "daily"
    atHour: Hour = 4
    idleMinutes: PositiveInt | None = None
    deferWhileActiveMinutes: NonNegativeInt = 30


class ResetOverride(_Model):
    mode: ResetMode | None = None
    atHour: Hour | None = None
    idleMinutes: PositiveInt | None = None
    deferWhileActiveMinutes: NonNegativeInt | None = None


class ResetByType(_Model):
    direct: ResetOverride | None = None
    dm: ResetOverride | None = None
    group: ResetOverride | None = None
    thread: ResetOverride | None = None


class SessionConfig(_Model):
    dmScope: Literal["main", "per-peer", "per-channel-peer", "per-account-channel-peer"] = "main"
    mainKey: str = Field(default="main", min_length=1)
    identityLinks: dict[str, tuple[str, ...]] = {}
    reset: ResetPolicyConfig = ResetPolicyConfig()
    resetByType: ResetByType = ResetByType()
    resetByChannel: dict[str, ResetOverride] = {}
    resetTriggers: tuple[str, ...] = ("/new", "/reset")


# ---------------------------------------------------------------------------------------------
# access


class ChannelAccess(_Model):
    dm: Literal["open", "allowlist", "disabled"] = "open"
    allowFrom: tuple[str, ...] = ()
    groups: Literal["open", "allowlist", "disabled"] = "open"
    allowGroups: tuple[str, ...] = ()
    groupAllowFrom: tuple[str, ...] = ()


class AccessConfig(_Model):
    default: ChannelAccess = ChannelAccess()
    channels: dict[str, ChannelAccess] = {}


# ---------------------------------------------------------------------------------------------
# auth (daemon/auth.py): tokens and what agents' reads may return

MIN_TOKEN_CHARS = 16


class TokenConfig(_Model):
    """One token: where its secret comes from, the role it grants, and for which agents."""

    token: str | None = None
    tokenFile: str | None = None
    tokenEnv: str | None = None
    role: RoleName
    agents: tuple[str, ...] = ()
    name: str | None = None  # shown in logs instead of the secret

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: str | None) -> str | None:
        if v is not None and len(v.strip()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters (use a random one)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        given = [k for k in ("token", "tokenFile", "tokenEnv") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of token, tokenFile or tokenEnv")
        _check_agents(self.role, self.agents, "a token")
        return self


class ReadLimitsConfig(_Model):
    maxBytes: PositiveInt = 262_144
    maxBlockChars: PositiveInt = 8192


class AuthConfig(_Model):
    tokens: tuple[TokenConfig, ...] = ()
    agentReads: ReadLimitsConfig = ReadLimitsConfig()

    @field_validator("tokens")
    @classmethod
    def _distinct(cls, v: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        inline = [t.token for t in v if t.token is not None]
        if len(inline) != len(set(inline)):
            raise ValueError("the same token is listed twice")
        return v


# ---------------------------------------------------------------------------------------------
# sessions.backup and retention (daemon/backup.py, daemon/retention.py). The SPEC spells these keys
# `sessions.backup.retention_days` and `exclude_patterns`, so they are kept as written there.


class BackupConfig(_Model):
    """The backup mirror: every transcript entry copied to <path>/<sessionId>/history.jsonl."""

    enabled: Flag = True
    format: Literal["jsonl"] = "jsonl"
    path: str | None = None  # default <stateDir>/backup; a relative path is under the state folder
    retention_days: NonNegativeInt = 30
    exclude_patterns: tuple[str, ...] = ()
    sync: Literal["async", "ack"] = "async"
    # "s3://bucket/prefix[?endpoint=..&region=..&segmentSeconds=..]": the mirror, uploaded
    target: str | None = None

    @field_validator("target")
    @classmethod
    def _s3_target(cls, v: str | None) -> str | None:
        from daemon.core.bucket import parse_target

        if v is not None:
            parse_target(v)  # its ValueError says which part is wrong
        return v


class SessionsConfig(_Model):
    backup: BackupConfig = BackupConfig()


class RetentionConfig(_Model):
    compressAfterDays: NonNegativeInt = 30


class RedisIngestConfig(_Model):
    """`ingest.redis`: adapters publish message.ingest params to a Redis stream
    (daemon/broker.py); sessiond reads it with a consumer group and XACKs after the append."""

    url: str = "redis://127.0.0.1:6379/0"  # redis://[:password@]host:port/db (rediss:// TLS)
    stream: str = "sessiond:ingest"
    group: str = "sessiond"
    consumer: str = "sessiond-1"  # unique per daemon reading the same group
    replyStream: str | None = None  # answers ({entry, result | error}) go here when set
    replyMaxLen: PositiveInt = 100_000  # approximate cap of the reply stream
    batch: PositiveInt = 256  # entries read at once
    blockMs: PositiveInt = 1000
    claimIdleMs: PositiveInt = 30_000  # take over entries another consumer left pending this long

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis:// rediss:// or unix:// URL, got {_show(v)}")
        return v


class ShardsConfig(_Model):
    """`shards`: this daemon owns the agents whose shard is `index` (daemon/core/shards.py)."""

    count: PositiveInt = 1
    index: NonNegativeInt = 0
    agents: dict[str, NonNegativeInt] = {}  # explicit owners, winning over the hash

    @model_validator(mode="after")
    def _in_range(self) -> ShardsConfig:
        if self.index >= self.count:
            raise ValueError(f"index must be below count ({self.count}), got {self.index}")
        for agent, owner in self.agents.items():
            if owner >= self.count:
                raise ValueError(
                    f"agents.{agent}: shard must be below count ({self.count}), got {owner}"
                )
        return self


class IngestConfig(_Model):
    redis: RedisIngestConfig | None = None


# ---------------------------------------------------------------------------------------------


class Config(_Model):
    openclaw: str | None = None  # an openclaw.json this file is layered on (relative: to this file)
    daemon: DaemonConfig = DaemonConfig()
    agents: AgentsConfig = AgentsConfig()
    bindings: tuple[Binding, ...] = ()
    session: SessionConfig = SessionConfig()
    access: AccessConfig = AccessConfig()
    auth: AuthConfig = AuthConfig()
    sessions: SessionsConfig = SessionsConfig()
    retention: RetentionConfig = RetentionConfig()
    ingest: IngestConfig = IngestConfig()
    shards: ShardsConfig | None = None

    def shard_map(self) -> ShardMap | None:
        from daemon.core.keys import normalize_agent_id

        s = self.shards
        if s is None:
            return None
        agents = {normalize_agent_id(k): v for k, v in s.agents.items()}
        return ShardMap(s.count, s.index, agents)

    def default_agent_id(self) -> str:
        from daemon.core.keys import normalize_agent_id

        for a in self.agents.list:
            if a.default:
                return normalize_agent_id(a.id)
        if self.agents.list:
            return normalize_agent_id(self.agents.list[0].id)
        return "main"


# ---------------------------------------------------------------------------------------------
# Loading


def default_config_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """The places a config file is looked for, in order (SPEC section 1)."""
    env = os.environ if env is None else env
    paths: list[Path] = []
    if env.get("SESSIOND_CONFIG"):
        paths.append(Path(env["SESSIOND_CONFIG"]))
    paths.append(Path(env.get("HOME", "~")).expanduser() / ".config/sessiond/config.json5")
    paths.append(Path("/etc/sessiond/config.json5"))
    return paths


def find_config(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to use, or None for built-in defaults.

    An explicit `--config` or `$SESSIOND_CONFIG` must exist; the per-user and system paths are
    only used when present.
    """
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("SESSIOND_CONFIG"):
        return Path(env["SESSIOND_CONFIG"])
    for p in default_config_paths(env)[-2:]:
        if p.is_file():
            return p
    return None


_JSON5_POS = re.compile(r"^<string>:(\d+) (.*?)(?: at column (\d+))?$", re.S)
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate config text; raises ConfigError naming source, line:column or key path.

    An empty file (blank, only comments, or `null`) is an error, not the defaults: a file
    truncated by a failed deploy would otherwise turn off every token and merge every DM into one
    session. `{}` asks for the defaults on purpose. A file that names an OpenClaw config in
    `openclaw` is layered on top of it (daemon/openclaw_config.py).
    """
    if not _COMMENTS.sub("", text).strip():
        raise ConfigError(_empty(source))
    return validate_config(openclaw_config.layered(read_json5(text, source), source), source)


class _DuplicateKey(Exception):
    """A strict-JSON object names a key twice (json5 then reports it with its position)."""


def _strict_json(text: str, duplicates_ok: bool) -> Any:
    """`text` read as plain JSON (a JSON5 file is mostly that): the C parser takes
    microseconds where the json5 package takes about 100 s per MB."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out and not duplicates_ok:
                raise _DuplicateKey(k)
            out[k] = v
        return out

    return json.loads(text, object_pairs_hook=pairs)


def read_json5(text: str, source: str, *, duplicates_ok: bool = False) -> dict[str, Any]:
    """The JSON5 object in `text`; raises ConfigError with line:column for a syntax error."""
    try:
        raw = _strict_json(text, duplicates_ok)
    except (ValueError, _DuplicateKey):
        raw = _read_json5_syntax(text, source, duplicates_ok)
    if raw is None:
        raise ConfigError(_empty(source))
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be an object {{...}}, got {_show(raw)}")
    return raw


def _read_json5_syntax(text: str, source: str, duplicates_ok: bool) -> Any:
    try:
        # A key written twice would otherwise keep the last value without a word (OpenClaw's
        # own file is read as OpenClaw reads it: the last one wins).
        raw = json5.loads(text, allow_duplicate_keys=duplicates_ok)
    except ValueError as e:
        m = _JSON5_POS.match(str(e))
        if m:
            line, msg, col = m.group(1), m.group(2), m.group(3) or "1"
            raise ConfigError(f"{source}:{line}:{col}: syntax error: {msg}") from None
        raise ConfigError(f"{source}: {e}") from None
    return raw


def validate_config(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e, raw)) from None


def _empty(source: str) -> str:
    return f"{source}: the config file is empty (write {{}} to use the built-in defaults)"


def format_validation_error(source: str, e: ValidationError, data: Any = None) -> str:
    """One line per problem: `file: key.path: what was expected, got what`.

    `data` is the input that was validated; with it, key paths hold only keys the user wrote
    (pydantic puts union member names such as "int" into its locations).
    """
    by_path: dict[str, list[str]] = {}
    for err in e.errors():
        loc = _user_loc(err["loc"], data) if data is not None else _drop_union_tags(err["loc"])
        by_path.setdefault(_key_path(loc), []).append(_describe(err))
    lines = []
    for path, msgs in by_path.items():
        msgs = list(dict.fromkeys(msgs))
        lines.append(f"{source}: {path}: {_merge(msgs)}")
    return "\n".join(lines)


_TYPE_NAMES = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list [...]",
    "list_type": "a list [...]",
    "dict_type": "an object {...}",
    "model_type": "an object {...}",
    "model_attributes_type": "an object {...}",
}


def _describe(err: Any) -> str:
    kind, got = err["type"], _show(err.get("input"))
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against config.example.json5)"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        return f"must be one of {', '.join(_show(c) for c in choices)}, got {got}"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    msg = str(err["msg"])
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def _merge(msgs: list[str]) -> str:
    # A union reports one error per member: "must be A, got x" + "must be B, got x" -> "A or B".
    if len(msgs) > 1 and all(m.startswith("must be ") for m in msgs):
        tails = {m.rpartition(", got ")[2] for m in msgs}
        if len(tails) == 1:
            kinds = [m.removeprefix("must be ").rpartition(", got ")[0] for m in msgs]
            return f"must be {' or '.join(kinds)}, got {tails.pop()}"
    return "; ".join(msgs)


def _user_loc(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """The parts of a pydantic location that are keys or indexes in `data`; the rest are tags."""
    parts: list[int | str] = []
    node = data
    for i, p in enumerate(loc):
        in_dict = isinstance(node, dict) and p in node
        in_list = isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
        if in_dict or in_list:
            parts.append(p)
            node = node[p]
        elif i == len(loc) - 1 and isinstance(node, dict):
            parts.append(p)  # a required key that is missing
    return parts


def _drop_union_tags(loc: tuple[int | str, ...]) -> list[int | str]:
    # Without the input, guess: pydantic names union members by type ("int", "function-after[...]").
    return [
        p
        for p in loc
        if not (isinstance(p, str) and (p in {"int", "str"} or p.startswith("function-")))
    ]


_PLAIN_KEY = re.compile(r"[A-Za-z_$][\w$-]*")


def _key_path(loc: list[int | str]) -> str:
    """`session.reset.atHour`, `bindings[0].match`, `access.channels["my.chat"]`."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _PLAIN_KEY.fullmatch(p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(top level)"


def _show(v: Any) -> str:
    """A value as the user wrote it in JSON5 (`null`, `"x"`, `true`), shortened."""
    if isinstance(v, dict):
        return "an object {...}"
    if isinstance(v, list | tuple):
        return "a list [...]"
    try:
        r = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def load_config(path: Path | None) -> Config:
    """The config file at `path` (an openclaw.json in its own shape), or the defaults for None."""
    if path is None:
        return Config()
    if openclaw_config.is_openclaw_file(path):
        return validate_config(openclaw_config.load(path).config, str(path))
    return parse_config(read_config_text(path), str(path))


MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is an error, not a long reload


def read_config_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: the config file is {size:,} bytes; at most {MAX_CONFIG_BYTES:,} are "
                "read (long token lists belong in tokenFile files)"
            )
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None


def resolve_state_dir(
    explicit: str | None, cfg: Config, env: Mapping[str, str] | None = None
) -> Path:
    """--state-dir, else daemon.stateDir, else $STATE_DIRECTORY, else ~/.local/state/sessiond."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if cfg.daemon.stateDir:
        return Path(cfg.daemon.stateDir).expanduser()
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated folders; the first is ours.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path(env.get("HOME", "~")).expanduser() / ".local/state/sessiond"


def resolve_socket_path(cfg: Config, state_dir: Path) -> Path:
    """`daemon.socket`, else `<stateDir>/sessiond.sock`."""
    if cfg.daemon.socket:
        return Path(cfg.daemon.socket).expanduser()
    return state_dir / "sessiond.sock"


def resolve_timezone(cfg: Config, env: Mapping[str, str] | None = None) -> ZoneInfo:
    """`daemon.timezone`, else the host's zone ($TZ, /etc/timezone, /etc/localtime), else UTC."""
    env = os.environ if env is None else env
    candidates: list[str] = []
    if cfg.daemon.timezone:
        candidates.append(cfg.daemon.timezone)
    if env.get("TZ"):
        candidates.append(env["TZ"].lstrip(":"))
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    with contextlib.suppress(OSError):
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")
