"""Field types and checks shared by the config sections (daemon/config.py), with errors phrased
the way an operator reads them: the value as written in JSON5 and what was expected instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Strict

# ---------------------------------------------------------------------------------------------
# Small validators that phrase errors the way an operator reads them.


def _between(lo: int, hi: int) -> Callable[[int], int]:
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {show(v)}")
        return v

    return check


def _at_least(lo: int) -> Callable[[int], int]:
    def check(v: int) -> int:
        if v < lo:
            raise ValueError(f"must be at least {lo}, got {show(v)}")
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
            f'must be an octal file mode written as a string such as "0660", got {show(v)}'
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


def show(v: Any) -> str:
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


# ---------------------------------------------------------------------------------------------
# Listeners and tokens (daemon/listeners.py, daemon/auth.py)


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
        raise ValueError(f'must be "HOST:PORT" such as "127.0.0.1:7000", got {show(v)}')
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
            f"must be a loopback address (127.0.0.1, [::1] or localhost), got {show(v)}: {why}"
        )
    return host, port


def check_agents(role: str | None, agents: tuple[str, ...], what: str) -> None:
    if role == "agent" and len(agents) != 1:
        raise ValueError(f'{what} with role "agent" must name exactly one agent in agents')
    if role in (None, "admin") and agents:
        raise ValueError(f"agents only applies to the adapter and agent roles ({what})")


def _file_path(v: str) -> str:
    if not v.strip():
        raise ValueError("must be a file path, got an empty string")
    return v


FilePath = Annotated[str, Strict(), AfterValidator(_file_path)]
