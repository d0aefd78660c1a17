"""OpenClaw's own `openclaw.json` as a config source: its shape in, our config dict out.

An operator coming from OpenClaw already wrote down how sessions are keyed, reset and compacted;
sessiond reads those keys from the gateway's file instead of asking for them again. What is read:

    session.{dmScope, mainKey, identityLinks, reset, resetByType, resetByChannel, resetTriggers}
    session.idleMinutes (legacy: reset.idleMinutes), session.scope (legacy: explained, no effect)
    agents.defaults.session.*          as session.*, under it (session.* wins)
    agents.defaults.compaction.{reserveTokensFloor, keepRecentTokens,
                                memoryFlush.{enabled, softThresholdTokens, prompt}}
    agents.defaults.workspace
    agents.list[] (2026.6) and agents.entries{} (2026.9): id, default, name, workspace
    bindings[]: agentId, match.{channel, accountId, peer, guildId, teamId}
    sessions.backup                    the same block as ours
    sessiond                           our own config, as in a sessiond config file

Everything else belongs to the gateway (channels, models, gateway, plugins, mcp, ...): it is
listed as ignored, never an error. Values of the keys that are read are validated as ours are,
so a wrong value names its key in the file.

Precedence, lowest first: built-in defaults; what is read from openclaw.json; its `sessiond`
block; a sessiond config file that names this file in `openclaw` (config.py); command-line flags.

Pure apart from `load`/`detect` (which read files): `translate` is a function of the dict.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config_files import read_config_text, read_json5
from daemon.core.exclusions import exclude_problems

if TYPE_CHECKING:
    from daemon.config import Config

SESSION_KEYS = (
    "dmScope",
    "mainKey",
    "identityLinks",
    "reset",
    "resetByType",
    "resetByChannel",
    "resetTriggers",
)
COMPACTION_KEYS = ("reserveTokensFloor", "keepRecentTokens")
FLUSH_KEYS = ("enabled", "softThresholdTokens", "prompt")
AGENT_KEYS = ("default", "name", "workspace")
MATCH_KEYS = ("channel", "accountId", "peer", "guildId", "teamId")
SESSIOND_BLOCK = "sessiond"
FILE_NAME = "openclaw.json"


@dataclass(frozen=True, slots=True)
class Translation:
    """Our config dict (not yet validated) and what was done with each key of the file."""

    config: dict[str, Any]
    taken: tuple[str, ...]  # key paths of the file that were read
    ignored: tuple[str, ...]  # key paths that belong to the gateway
    notes: tuple[str, ...]  # what an operator should know (legacy keys, conflicts)

    def to_json(self) -> dict[str, Any]:
        return {"taken": list(self.taken), "ignored": list(self.ignored), "notes": list(self.notes)}


def is_openclaw_file(path: Path) -> bool:
    """Whether a config path is OpenClaw's file (`openclaw.json`, also `openclaw.json5` or a copy
    such as `openclaw.json.last-good`), read in OpenClaw's shape."""
    return path.name.lower().startswith(FILE_NAME)


def detect(state_dir: Path) -> Path | None:
    """`<stateDir>/openclaw.json` when it exists: used when no sessiond config was found."""
    path = state_dir / FILE_NAME
    return path if path.is_file() else None


class _Walk:
    """Collects our config and the fate of every key path of the file."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {}
        self.taken: list[str] = []
        self.ignored: list[str] = []
        self.notes: list[str] = []

    def ignore_rest(self, node: dict[str, Any], prefix: str, read: tuple[str, ...]) -> None:
        for k in node:
            if k not in read:
                self.ignored.append(f"{prefix}.{k}" if prefix else k)

    def take(self, node: dict[str, Any], prefix: str, keys: tuple[str, ...]) -> dict[str, Any]:
        got: dict[str, Any] = {}
        for k in keys:
            if k in node:
                got[k] = copy.deepcopy(node[k])
                self.taken.append(f"{prefix}.{k}")
        return got


def translate(raw: dict[str, Any]) -> Translation:
    """OpenClaw's config dict as ours (see the module docstring for what is read)."""
    w = _Walk()
    agents = raw.get("agents")
    defaults = agents.get("defaults") if isinstance(agents, dict) else None
    session = _session(w, raw.get("session"), "session")
    if isinstance(defaults, dict) and isinstance(defaults.get("session"), dict):
        under = _session(w, defaults["session"], "agents.defaults.session")
        session = merge(under, session) if isinstance(session, dict) else session
    if session:
        w.out["session"] = session
    if isinstance(agents, dict):
        w.out["agents"] = _agents(w, agents)
    elif agents is not None:
        w.out["agents"] = agents  # not an object: our validation names it
        w.taken.append("agents")
    if "bindings" in raw:
        w.out["bindings"] = _bindings(w, raw["bindings"])
    sessions = raw.get("sessions")
    if isinstance(sessions, dict):
        if "backup" in sessions:
            w.out["sessions"] = {"backup": copy.deepcopy(sessions["backup"])}
            w.taken.append("sessions.backup")
        w.ignore_rest(sessions, "sessions", ("backup",))
    elif sessions is not None:
        w.ignored.append("sessions")
    w.out = {k: v for k, v in w.out.items() if v != {}}
    if SESSIOND_BLOCK in raw:
        own = raw[SESSIOND_BLOCK]
        if isinstance(own, dict):
            w.out = merge(w.out, own)
            w.taken.extend(f"{SESSIOND_BLOCK}.{k}" for k in own)
        else:
            w.out[SESSIOND_BLOCK] = own  # our validation says the block must be an object
    w.ignore_rest(raw, "", ("session", "agents", "bindings", "sessions", SESSIOND_BLOCK))
    return Translation(w.out, tuple(w.taken), tuple(w.ignored), tuple(w.notes))


def _session(w: _Walk, node: Any, prefix: str) -> Any:
    if node is None:
        return {}
    if not isinstance(node, dict):
        w.taken.append(prefix)
        return node  # our validation says it must be an object
    got = w.take(node, prefix, SESSION_KEYS)
    if "idleMinutes" in node:
        # OpenClaw's older spelling of reset.idleMinutes; reset.idleMinutes wins when both exist.
        reset = got.get("reset")
        if reset is None or isinstance(reset, dict):
            got["reset"] = {"idleMinutes": node["idleMinutes"], **(reset or {})}
        w.taken.append(f"{prefix}.idleMinutes")
    scope = node.get("scope")
    if "scope" in node:
        w.taken.append(f"{prefix}.scope")
        if scope == "global":
            w.notes.append(
                f'{prefix}.scope "global" (legacy) put every chat of the gateway into one session '
                "keyed `global`; sessiond keeps one session per conversation: direct messages "
                f'follow session.dmScope (now {got.get("dmScope", "main")!r}; "main" shares one '
                "session per agent), groups and threads keep their own. Remove the key to "
                "silence this note."
            )
        else:
            w.notes.append(
                f"{prefix}.scope {scope!r} (legacy) is the default behaviour: direct messages "
                "follow session.dmScope. It has no further effect; the key can be removed."
            )
    w.ignore_rest(node, prefix, (*SESSION_KEYS, "idleMinutes", "scope"))
    return got


def _agents(w: _Walk, agents: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    defaults = agents.get("defaults")
    if isinstance(defaults, dict):
        d = w.take(defaults, "agents.defaults", ("workspace",))
        comp = defaults.get("compaction")
        if isinstance(comp, dict):
            c = w.take(comp, "agents.defaults.compaction", COMPACTION_KEYS)
            flush = comp.get("memoryFlush")
            if isinstance(flush, dict):
                f = w.take(flush, "agents.defaults.compaction.memoryFlush", FLUSH_KEYS)
                if f:
                    c["memoryFlush"] = f
                w.ignore_rest(flush, "agents.defaults.compaction.memoryFlush", FLUSH_KEYS)
            elif flush is not None:
                w.ignored.append("agents.defaults.compaction.memoryFlush")
            w.ignore_rest(comp, "agents.defaults.compaction", (*COMPACTION_KEYS, "memoryFlush"))
            if c:
                d["compaction"] = c
        elif comp is not None:
            w.ignored.append("agents.defaults.compaction")
        w.ignore_rest(defaults, "agents.defaults", ("workspace", "compaction", "session"))
        if d:
            out["defaults"] = d
    listed: list[Any] = []
    items = agents.get("list")
    if isinstance(items, list):
        for i, a in enumerate(items):
            listed.append(_agent(w, a, f"agents.list[{i}]", None))
    elif items is not None:
        out["list"] = items  # our validation names it: must be a list
        w.taken.append("agents.list")
    entries = agents.get("entries")
    if isinstance(entries, dict):
        seen = {a.get("id") for a in listed if isinstance(a, dict)}
        for agent_id, a in entries.items():
            if agent_id in seen:
                w.notes.append(
                    f"agent {agent_id!r} is in agents.list and agents.entries; "
                    "agents.list's entry is used"
                )
                w.ignored.append(f"agents.entries.{agent_id}")
                continue
            listed.append(_agent(w, a, f"agents.entries.{agent_id}", agent_id))
    elif entries is not None:
        w.ignored.append("agents.entries")
    if listed:
        out["list"] = listed
    w.ignore_rest(agents, "agents", ("defaults", "list", "entries"))
    return out


def _agent(w: _Walk, a: Any, prefix: str, agent_id: str | None) -> Any:
    if not isinstance(a, dict):
        w.taken.append(prefix)
        return a  # our validation says it must be an object
    got: dict[str, Any] = {}
    if agent_id is not None:
        got["id"] = agent_id  # 2026.9 keys entries by id
    elif "id" in a:
        got["id"] = a["id"]
    w.taken.append(prefix + (".id" if agent_id is None and "id" in a else ""))
    got.update(w.take(a, prefix, AGENT_KEYS))
    w.ignore_rest(a, prefix, ("id", *AGENT_KEYS))
    return got


def _bindings(w: _Walk, items: Any) -> Any:
    if not isinstance(items, list):
        w.taken.append("bindings")
        return items
    out = []
    for i, b in enumerate(items):
        prefix = f"bindings[{i}]"
        if not isinstance(b, dict) or not isinstance(b.get("match"), dict):
            out.append(copy.deepcopy(b))  # our validation names what is wrong with it
            w.taken.append(prefix)
            continue
        got = w.take(b, prefix, ("agentId",))
        got["match"] = w.take(b["match"], f"{prefix}.match", MATCH_KEYS)
        w.ignore_rest(b["match"], f"{prefix}.match", MATCH_KEYS)
        w.ignore_rest(b, prefix, ("agentId", "match"))
        out.append(got)
    return out


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: objects merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        out[k] = merge(old, v) if isinstance(old, dict) and isinstance(v, dict) else v
    return out


def load(path: Path) -> Translation:
    """Read and translate an openclaw.json; raises ConfigError naming the file."""

    raw = read_json5(read_config_text(path), str(path), duplicates_ok=True)
    return translate(raw)


def openclaw_path(raw: dict[str, Any], source: str) -> Path | None:
    """The openclaw.json a sessiond config names in `openclaw` (relative: to that config)."""
    name = raw.get("openclaw")
    if not isinstance(name, str):
        return None
    return Path(source).parent / Path(name).expanduser()


def layered(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """A sessiond config dict over the openclaw.json it names in `openclaw` (if any)."""
    path = openclaw_path(raw, source)
    return raw if path is None else merge(load(path).config, raw)


def source_of(path: Path | None) -> tuple[Path, Translation] | None:
    """The openclaw.json a config file is (or names in `openclaw`) and what was read from it."""
    if path is None:
        return None
    if is_openclaw_file(path):
        return path, load(path)

    named = openclaw_path(read_json5(read_config_text(path), str(path)), str(path))
    return None if named is None else (named, load(named))


def check_report(path: Path | None, cfg: Config) -> dict[str, Any]:
    """What `sessiond config check` prints: the file, what came from OpenClaw's file, warnings
    and the effective config."""
    found = source_of(path)
    return {
        "config": str(path) if path else "built-in defaults (no config file found)",
        "openclaw": None if found is None else {"file": str(found[0]), **found[1].to_json()},
        "warnings": exclude_problems(cfg.sessions.backup.exclude_patterns),
        "effective": cfg.model_dump(mode="json"),
    }


def log_source(path: Path | None, cfg: Config) -> None:
    """At start-up and after a reload: one `config.openclaw_ignored` line for what was not read
    from OpenClaw's file, its notes, and one `config.warning` per problem. Never raises."""
    import structlog

    from daemon.errors import ConfigError

    log = structlog.get_logger("daemon.config")
    try:
        found = source_of(path)
    except (ConfigError, OSError) as e:  # read a moment ago: changed meanwhile
        log.warning("config.warning", warning=f"cannot read it again: {e}")
        found = None
    if found is not None:
        file, t = found
        log.info(
            "config.openclaw_ignored",
            file=str(file),
            count=len(t.ignored),
            keys=list(t.ignored),
            taken=len(t.taken),
        )
        for note in t.notes:
            log.warning("config.warning", file=str(file), warning=note)
    for w in exclude_problems(cfg.sessions.backup.exclude_patterns):
        log.warning("config.warning", warning=w)
