"""Reading config files: size and encoding checks, then JSON5 (plain JSON first, which is fast),
with syntax errors that name line and column. Shared by our config and OpenClaw's
(daemon/openclaw_config.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import json5

from daemon.config_fields import show
from daemon.errors import ConfigError

_JSON5_POS = re.compile(r"^<string>:(\d+) (.*?)(?: at column (\d+))?$", re.S)


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
        raise ConfigError(empty_file_error(source))
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be an object {{...}}, got {show(raw)}")
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


def empty_file_error(source: str) -> str:
    return f"{source}: the config file is empty (write {{}} to use the built-in defaults)"


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
