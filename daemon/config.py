"""Configuration models: every section of the config file, validated by pydantic v2.

The file is optional: with none at all the built-in defaults run. Keys use OpenClaw's camelCase
spelling; unknown keys are rejected so that a typo never silently falls back to a default.
Reading and finding the file is daemon/config_load.py; field types daemon/config_fields.py.

The pure core (daemon/core/) never sees these models: the sections it needs build its plain
settings (`Config.routing()`, `SessionConfig.reset_rules()`, `AccessConfig.rules()`,
`CompactionConfig.thresholds()`), so pydantic stays at the config boundary.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.config_fields import (
    FileMode,
    FilePath,
    Flag,
    Hour,
    NonNegativeInt,
    PositiveInt,
    RoleName,
    check_agents,
    parse_tcp_address,
    show,
)
from daemon.core import tokens
from daemon.core.access import AccessRules
from daemon.core.keys import BindingRule, PeerRule, RoutingSettings, normalize_agent_id
from daemon.core.policy import Override, Policy, ResetRules
from daemon.core.shards import ShardMap
from daemon.core.summarizer_settings import SummarizerSettings

MIN_TOKEN_CHARS = 16


class _Model(BaseModel):
    """Base for every config section: camelCase keys as in OpenClaw, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# daemon


class SpoolConfig(_Model):
    """The spool folder (daemon/spool.py): message.ingest for adapters that write files."""

    enabled: Flag = False
    dir: str | None = None  # default <stateDir>/spool; a relative path is under the state folder


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
        check_agents(self.role, self.agents, "a listener")
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
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f'unknown time zone {show(v)} (expected an IANA name such as "Europe/Berlin")'
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

    def settings(self) -> SummarizerSettings:
        """The settings as plain data, for a worker process (no pydantic to import there)."""
        return SummarizerSettings(
            self.kind,
            self.command,
            self.baseUrl,
            self.model,
            self.apiKeyEnv,
            self.timeoutSeconds,
            self.retries,
            self.maxOutputTokens,
        )


class CompactionConfig(_Model):
    contextWindow: PositiveInt = 200_000
    reserveTokensFloor: NonNegativeInt = 20_000
    keepRecentTokens: NonNegativeInt = 20_000
    retryBaseSeconds: PositiveInt = 30
    memoryFlush: MemoryFlushConfig = MemoryFlushConfig()
    summarizer: SummarizerConfig = SummarizerConfig()

    def thresholds(self) -> tokens.Thresholds:
        mf = self.memoryFlush
        return tokens.Thresholds(
            context_window=self.contextWindow,
            reserve_floor=self.reserveTokensFloor,
            keep_recent=self.keepRecentTokens,
            soft=mf.softThresholdTokens,
            flush_enabled=mf.enabled,
            flush_on_reset=mf.enabled and mf.onReset,
        )


M = TypeVar("M", bound=BaseModel)


def merge(base: M, override: M) -> M:
    """`base` with the keys `override` was given (pydantic's fields_set) replaced, recursively;
    a summarizer that names its own `kind` replaces the inherited one whole."""
    update: dict[str, Any] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        inherited = getattr(base, name)
        if (
            isinstance(value, BaseModel)
            and type(value) is type(inherited)
            and "kind" not in value.model_fields_set
        ):
            value = merge(inherited, value)
        update[name] = value
    return base.model_copy(update=update)


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
        checks = [("agents.defaults.compaction", self.defaults.compaction.thresholds())]
        for i, a in enumerate(self.list):
            if a.compaction is not None:
                cc = self.compaction_for(normalize_agent_id(a.id))
                checks.append((f"agents.list[{i}].compaction", cc.thresholds()))
        problem = tokens.threshold_problem(checks)
        if problem is not None:
            raise ValueError(problem)
        return self

    def compaction_for(self, agent_id: str) -> CompactionConfig:
        """`agents.defaults.compaction` with the keys of the agent's own `compaction` entry."""
        base = self.defaults.compaction
        for a in self.list:
            if a.compaction is not None and normalize_agent_id(a.id) == agent_id:
                return merge(base, a.compaction)
        return base


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

    def reset_rules(self) -> ResetRules:
        """The reset policy as daemon/core/policy.py reads it."""
        r = self.reset
        by_type = {
            kind: _override(o)
            for kind, o in (
                ("direct", self.resetByType.direct),
                ("dm", self.resetByType.dm),
                ("group", self.resetByType.group),
                ("thread", self.resetByType.thread),
            )
            if o is not None
        }
        return ResetRules(
            base=Policy(r.mode, r.atHour, r.idleMinutes, r.deferWhileActiveMinutes),
            by_type=by_type,
            by_channel={name: _override(o) for name, o in self.resetByChannel.items()},
        )


def _override(o: ResetOverride) -> Override:
    return Override(o.mode, o.atHour, o.idleMinutes, o.deferWhileActiveMinutes)


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

    def rules(self) -> AccessRules:
        """The access policy as daemon/core/access.py reads it: of a channel's section only the
        keys written there, so that they alone override the default."""
        return AccessRules(
            default=self.default.model_dump(),
            channels={
                name: section.model_dump(include=section.model_fields_set)
                for name, section in self.channels.items()
            },
        )


# ---------------------------------------------------------------------------------------------
# auth (daemon/auth.py): tokens and what agents' reads may return


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
        check_agents(self.role, self.agents, "a token")
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
            raise ValueError(f"must be a redis:// rediss:// or unix:// URL, got {show(v)}")
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
        s = self.shards
        if s is None:
            return None
        agents = {normalize_agent_id(k): v for k, v in s.agents.items()}
        return ShardMap(s.count, s.index, agents)

    def default_agent_id(self) -> str:
        for a in self.agents.list:
            if a.default:
                return normalize_agent_id(a.id)
        if self.agents.list:
            return normalize_agent_id(self.agents.list[0].id)
        return "main"

    def compaction_for(self, agent_id: str) -> CompactionConfig:
        return self.agents.compaction_for(agent_id)

    def routing(self) -> RoutingSettings:
        """What daemon/core/keys.py reads to route a message (build once per config: the
        router keeps it)."""
        session = self.session
        return RoutingSettings(
            known_agents=frozenset(normalize_agent_id(a.id) for a in self.agents.list),
            default_agent=self.default_agent_id(),
            bindings=tuple(
                BindingRule(
                    agent_id=b.agentId,
                    channel=b.match.channel,
                    account_id=b.match.accountId,
                    peer=PeerRule(b.match.peer.kind, b.match.peer.id) if b.match.peer else None,
                    guild_id=b.match.guildId,
                    team_id=b.match.teamId,
                )
                for b in self.bindings
            ),
            dm_scope=session.dmScope,
            main_key=session.mainKey,
            identity_links=session.identityLinks,
        )
