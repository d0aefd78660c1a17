"""Token accounting and compaction thresholds. Pure: entries, usage and config in, numbers out.

How a session's context is counted (SPEC 4.6), the same way everywhere (the committer's running
count, the crash recount, `sessions.context`):

- The provider's usage of the latest assistant entry after the latest compaction is the truth for
  everything up to and including that entry: it is what the model was actually sent and answered.
- Every later entry adds ceil(chars / 4); an image counts as 4800 characters.
- With no such usage, the context is the latest compaction's summary plus the entries it kept
  (from `firstKeptEntryId`) plus everything after it, each estimated the same way.

Thresholds: flush at contextWindow - reserveTokensFloor - softThresholdTokens, compact at
contextWindow - reserveTokensFloor. A cycle is one value of `compactionCount`; the memory flush
runs once per cycle (`memoryFlushCompactionCount` records the cycle it ran in) and always before
that cycle's compaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

IMAGE_CHARS = 4800
MESSAGE_ROLES = ("user", "assistant", "toolResult")
# A compaction triggered by the threshold needs this share of the room between the kept tail and
# the threshold to be new material since the previous one: an agent runtime that ignores our
# summaries keeps reporting a full context, and must not get one compaction per message.
MIN_NEW_SHARE = 4


# ---------------------------------------------------------------------------------------------
# Counting


def content_chars(content: Any) -> int:
    """Characters of a message's content: text, thinking, tool calls (name and arguments as
    JSON-ish text), tool results; an image block counts IMAGE_CHARS."""
    if isinstance(content, str):
        return len(content)
    total = 0
    if not isinstance(content, list):
        return 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "image":
            total += IMAGE_CHARS
        elif kind == "toolCall":
            total += len(str(block.get("name") or "")) + len(_plain(block.get("arguments")))
        elif kind == "thinking":
            total += len(str(block.get("thinking") or ""))
        else:
            value = block.get("text")
            if value is None:
                value = block.get("content")
            total += content_chars(value) if isinstance(value, list) else len(_plain(value))
    return total


def _plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return repr(v)


CHARS_PER_TOKEN = 4


def estimate(chars: int) -> int:
    """ceil(chars / 4): the estimate for text no provider has counted."""
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def message_tokens(message: dict[str, Any]) -> int:
    return estimate(content_chars(message.get("content")))


def entry_tokens(entry: dict[str, Any]) -> int:
    """Estimated tokens a stored transcript entry adds to the context (0 for entries a model never
    sees: headers, custom entries, model changes; compaction summaries are counted apart)."""
    if entry.get("type") != "message":
        return 0
    msg = entry.get("message")
    if not isinstance(msg, dict) or msg.get("role") not in MESSAGE_ROLES:
        return 0
    return message_tokens(msg)


def is_message(entry: dict[str, Any]) -> bool:
    msg = entry.get("message")
    return (
        entry.get("type") == "message"
        and isinstance(msg, dict)
        and msg.get("role") in MESSAGE_ROLES
    )


def role_of(entry: dict[str, Any]) -> str | None:
    msg = entry.get("message")
    role = msg.get("role") if isinstance(msg, dict) else None
    return role if isinstance(role, str) else None


def usage_tokens(usage: Any) -> int | None:
    """The context size a provider reported: OpenClaw's `totalTokens`, else the sum of its parts,
    in OpenClaw (input/output/cacheRead/cacheWrite), OpenAI and Anthropic spellings."""
    if not isinstance(usage, dict):
        return None
    for key in ("totalTokens", "total_tokens"):
        v = usage.get(key)
        if _count(v):
            return v
    groups = (
        ("input", "output", "cacheRead", "cacheWrite"),
        ("prompt_tokens", "completion_tokens"),
        (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ),
    )
    for keys in groups:
        parts = [p for p in (usage.get(k) for k in keys) if _count(p)]
        if parts:
            return sum(parts)
    return None


def _count(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def assistant_usage(message: dict[str, Any]) -> int | None:
    if message.get("role") != "assistant":
        return None
    return usage_tokens(message.get("usage"))


def after_message(current: int, message: dict[str, Any]) -> int:
    """The session's count once `message` is appended: its usage when it is an assistant entry
    that carries one, else the current count plus its estimate."""
    used = assistant_usage(message)
    if used is not None:
        return used
    return max(0, current) + message_tokens(message)


def context_tokens(
    summary: str | None, kept: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]
) -> int:
    """The context of a session: `kept` are the entries the latest compaction kept (before its
    entry in the file), `after` the entries after it (or all of them, with no compaction)."""
    acc = 0
    for entry in reversed(after):
        msg = entry.get("message")
        if is_message(entry) and isinstance(msg, dict):
            used = assistant_usage(msg)
            if used is not None:
                return used + acc
        acc += entry_tokens(entry)
    return estimate(len(summary or "")) + sum(entry_tokens(e) for e in kept) + acc


# ---------------------------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One agent's effective compaction numbers."""

    context_window: int
    reserve_floor: int
    keep_recent: int
    soft: int
    flush_enabled: bool
    flush_on_reset: bool

    @property
    def compact_at(self) -> int:
        return self.context_window - self.reserve_floor

    @property
    def flush_at(self) -> int:
        return self.compact_at - self.soft

    @property
    def min_new_tokens(self) -> int:
        return max(1, (self.compact_at - self.keep_recent) // MIN_NEW_SHARE)


def threshold_problem(checks: Iterable[tuple[str, Thresholds]]) -> str | None:
    """Why the effective numbers of some agent make no sense (None when all do): the thresholds
    must leave room for a kept tail and a flush before the compaction. `checks` names each
    agent's numbers by the config section they come from."""
    for where, t in checks:
        if t.reserve_floor >= t.context_window:
            return (
                f"{where}: reserveTokensFloor ({t.reserve_floor}) must be less than "
                f"contextWindow ({t.context_window})"
            )
        if t.keep_recent >= t.compact_at:
            return (
                f"{where}: keepRecentTokens ({t.keep_recent}) must be less than contextWindow - "
                f"reserveTokensFloor ({t.compact_at})"
            )
        if t.soft >= t.compact_at:
            return (
                f"{where}: memoryFlush.softThresholdTokens ({t.soft}) must be less than "
                f"contextWindow - reserveTokensFloor ({t.compact_at})"
            )
    return None


@dataclass(frozen=True, slots=True)
class Due:
    """What a session needs now."""

    flush: bool
    compact: bool


def due(
    tokens: int,
    t: Thresholds,
    compaction_count: int,
    flush_count: int | None,
    new_tokens: int | None = None,
) -> Due:
    """Whether the flush threshold and the compaction threshold have been crossed.

    `new_tokens` is how much has been added since the latest compaction this daemon made (None
    when unknown, e.g. after a restart): below `min_new_tokens` the threshold does not compact
    again. The flush is due once per cycle, at its own threshold or together with a compaction.
    """
    compact = tokens >= t.compact_at and (new_tokens is None or new_tokens >= t.min_new_tokens)
    flushed = flush_count is not None and flush_count == compaction_count
    flush = t.flush_enabled and not flushed and (tokens >= t.flush_at or compact)
    return Due(flush=flush, compact=compact)


def split_kept(sizes: Sequence[int], roles: Sequence[str | None], keep_recent: int) -> int:
    """Index of the first entry of the kept tail: the newest entries whose tokens fit in
    `keep_recent`, at least the last one, never beginning with a tool result (its call stays
    with it). Everything before the index is summarised; 0 means there is nothing to summarise.
    """
    n = len(sizes)
    if n == 0:
        return 0
    i = n - 1
    total = sizes[i]
    while i > 0 and total + sizes[i - 1] <= keep_recent:
        i -= 1
        total += sizes[i]
    while i > 0 and roles[i] == "toolResult":
        i -= 1
    return i
