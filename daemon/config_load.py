"""Finding and loading the config: the file to use, layering on OpenClaw's config, validation,
and the places (state folder, socket, time zone) the config leaves to defaults.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from daemon import openclaw_config
from daemon.config import Config
from daemon.config_errors import format_validation_error
from daemon.config_files import empty_file_error, read_config_text, read_json5
from daemon.errors import ConfigError


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


_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate config text; raises ConfigError naming source, line:column or key path.

    An empty file (blank, only comments, or `null`) is an error, not the defaults: a file
    truncated by a failed deploy would otherwise turn off every token and merge every DM into one
    session. `{}` asks for the defaults on purpose. A file that names an OpenClaw config in
    `openclaw` is layered on top of it (daemon/openclaw_config.py).
    """
    if not _COMMENTS.sub("", text).strip():
        raise ConfigError(empty_file_error(source))
    return validate_config(openclaw_config.layered(read_json5(text, source), source), source)


def validate_config(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e, raw)) from None


def load_config(path: Path | None) -> Config:
    """The config file at `path` (an openclaw.json in its own shape), or the defaults for None."""
    if path is None:
        return Config()
    if openclaw_config.is_openclaw_file(path):
        return validate_config(openclaw_config.load(path).config, str(path))
    return parse_config(read_config_text(path), str(path))


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


def workspace_of(cfg: Config, state_dir: Path, agent_id: str) -> str:
    """OpenClaw's default workspaces: workspace/ for the default agent, workspace-<id>/ else."""
    for a in cfg.agents.list:
        if a.id == agent_id and a.workspace:
            return str(Path(a.workspace).expanduser())
    if agent_id == cfg.default_agent_id():
        base = cfg.agents.defaults.workspace
        return str(Path(base).expanduser()) if base else str(state_dir / "workspace")
    return str(state_dir / f"workspace-{agent_id}")


def agent_ids(cfg: Config) -> list[str]:
    """The configured agents, the default one first (also when the list is empty)."""
    return [cfg.default_agent_id(), *(a.id for a in cfg.agents.list)]
