"""Who may reach a session at all: the `access` policy applied to an inbound message.

Pure: the policy and the message in, a refusal reason (or None) out. The pipeline answers a
refusal with error 1005 and logs the reason; the message never reaches a session.

Per channel, `access.channels.<channel>` overrides `access.default` key by key: only the keys
written in the channel's section replace the default's, so tightening the default (say
`dm: "allowlist"`) cannot be undone by a channel section that merely lists its `allowFrom`.
The built-in default is open for everyone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from daemon.core.keys import Inbound

__all__ = ["AccessRules", "check_access"]

# A section's keys by their config names (dm, allowFrom, groups, allowGroups, groupAllowFrom):
# policies are strings, lists are tuples of strings.
Section = Mapping[str, str | tuple[str, ...]]
OPEN: Section = {
    "dm": "open",
    "allowFrom": (),
    "groups": "open",
    "allowGroups": (),
    "groupAllowFrom": (),
}


@dataclass(frozen=True, slots=True)
class AccessRules:
    """The `access` section (built by `AccessConfig.rules()` in daemon/config.py): every key of
    the default, and of each channel's section only the keys written there."""

    default: Section = field(default_factory=lambda: OPEN)
    channels: Mapping[str, Section] = field(default_factory=dict)


_DIRECT_TYPES = frozenset({"direct", "dm"})
_GROUP_TYPES = frozenset({"group", "channel", "thread"})


@dataclass(frozen=True, slots=True)
class _Setting:
    """One effective policy value and the config path it came from, for the refusal reason."""

    value: object
    path: str


def _channel_section(channel: str, access: AccessRules) -> tuple[str, Section] | None:
    for name, section in access.channels.items():
        if name.strip().lower() == channel:
            return name, section
    return None


def _setting(key: str, channel: str, access: AccessRules) -> _Setting:
    found = _channel_section(channel, access)
    if found is not None:
        name, section = found
        if key in section:
            return _Setting(section[key], f"access.channels.{name}.{key}")
    return _Setting(access.default[key], f"access.default.{key}")


def _listed(value: str | None, entries: Sequence[str], channel: str) -> bool:
    """Whether an id is in an allow list: "*", the bare id or "<channel>:<id>", any case."""
    wanted = (value or "").strip().lower()
    for entry in entries:
        e = entry.strip().lower()
        if e == "*":
            return True
        if wanted and e in (wanted, f"{channel}:{wanted}"):
            return True
    return False


def _shown(value: str | None) -> str:
    """An id as it may appear in a log line: printable and short."""
    if not value or not value.strip():
        return "(unknown)"
    text = "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in value.strip())
    return text if len(text) <= 64 else text[:61] + "..."


def _entries(setting: _Setting) -> Sequence[str]:
    value = setting.value
    return value if isinstance(value, tuple) else ()


def check_access(inbound: Inbound, access: AccessRules) -> str | None:
    """None when the sender (and group) may reach a session, else a short reason for the log.

    Direct messages follow `dm` (open | allowlist | disabled) with `allowFrom`; group, channel
    and thread messages follow `groups` with `allowGroups` (group ids), and, when
    `groupAllowFrom` is non-empty, the sender must also be in it.
    """
    channel = inbound.channel.strip().lower()
    chat_type = inbound.chat_type.strip().lower()
    # The channel as shown in a refusal is made only for one (most messages are allowed).

    if chat_type in _DIRECT_TYPES:
        dm = _setting("dm", channel, access)
        if dm.value == "disabled":
            return f"direct messages on {_shown(channel)} are disabled by {dm.path}"
        if dm.value == "allowlist":
            allow = _setting("allowFrom", channel, access)
            if not _listed(inbound.peer, _entries(allow), channel):
                return f"sender {_shown(channel)}:{_shown(inbound.peer)} is not in {allow.path}"
        return None

    if chat_type in _GROUP_TYPES:
        groups = _setting("groups", channel, access)
        if groups.value == "disabled":
            return f"group messages on {_shown(channel)} are disabled by {groups.path}"
        if groups.value == "allowlist":
            allow_groups = _setting("allowGroups", channel, access)
            if not _listed(inbound.group_id, _entries(allow_groups), channel):
                group = _shown(inbound.group_id)
                return f"group {_shown(channel)}:{group} is not in {allow_groups.path}"
        senders = _setting("groupAllowFrom", channel, access)
        entries = _entries(senders)
        if entries and not _listed(inbound.peer, entries, channel):
            return f"sender {_shown(channel)}:{_shown(inbound.peer)} is not in {senders.path}"
        return None

    # resolve_route rejects unknown chat types first; refuse rather than guess a policy.
    return f"unknown chat type {_shown(inbound.chat_type)}"
