"""Which sessions `sessions.backup.exclude_patterns` leave out of the backup mirror, and the
config warnings for patterns that can match no session key. Pure: keys and patterns in.
"""

from __future__ import annotations

import fnmatch
import re


def excluded(session_key: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether `exclude_patterns` (globs over session keys) leave this session out. A pattern
    matches the whole key or the key without its `agent:<id>:` prefix, so "heartbeat*" and
    "system:*" mean what an operator writing them means."""
    if session_key is None or not patterns:
        return False
    parts = session_key.split(":", 2)
    rest = parts[2] if len(parts) == 3 and parts[0] == "agent" else None
    return any(
        fnmatch.fnmatchcase(session_key, p) or (rest is not None and fnmatch.fnmatchcase(rest, p))
        for p in patterns
    )


_AGENT_PART = re.compile(r"agent:([^:]*)(?::|$)")
_ID = re.compile(r"[a-z0-9_][a-z0-9_-]{0,63}")


def exclude_problems(patterns: tuple[str, ...]) -> list[str]:
    """Config warnings for `exclude_patterns` that can match no session key: keys are never
    empty and never hold spaces or control characters, and their agent part is a lowercase id."""
    out = []
    for i, p in enumerate(patterns):
        where = f"sessions.backup.exclude_patterns[{i}] {p!r}"
        m = _AGENT_PART.match(p)
        agent = m.group(1) if m else None
        if not p.strip():
            out.append(f"{where} is empty: it matches no session key")
        elif any(ch.isspace() or not ch.isprintable() for ch in p):
            out.append(f"{where} holds a space or control character, which no session key has")
        elif agent is not None and not any(c in agent for c in "*?[") and not _ID.fullmatch(agent):
            out.append(
                f"{where} names agent {agent!r}, which no key can hold (agent ids are lowercase "
                "a-z, 0-9, _ and -)"
            )
    return out
