"""Chat commands and reset triggers at the start of an inbound message. Pure.

Recognised (case-insensitive, at the very start, alone or followed by whitespace and text; a
Telegram-style `@botname` suffix is accepted): the reset triggers of `session.resetTriggers`
(default `/new`, `/reset`), and `/status`, `/compact [instructions]`, `/sessions`,
`/session [<key>]`, `/context [list|detail]` and `/stop` (the agent runtime aborts its run: it is
recorded as a custom entry, not stored as a message).

`/new <model>` records a model on the new session when the first word after it names one in
`provider/model` form (`/new openai/gpt-4o`); any other text after a trigger goes into the new
session as the user's message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

COMMANDS = ("status", "compact", "sessions", "session", "context", "stop")
_HEAD = re.compile(r"^\s*/([A-Za-z][\w-]*)(?:@[\w.-]+)?(?=\s|$)\s*(.*)$", re.S)
_MODEL = re.compile(r"^[\w.-]+/[\w.:@-]+$")


@dataclass(frozen=True, slots=True)
class Command:
    """A recognised command. `name` is "reset" for every reset trigger; `trigger` says which."""

    name: str
    trigger: str  # as configured, e.g. "/new"
    arg: str  # everything after the command word, stripped
    model: str | None = None  # /new <provider/model>
    text: str = ""  # what goes into the (new) session as the user's message

    @property
    def is_reset(self) -> bool:
        return self.name == "reset"


def message_text(content: str | list[Any]) -> str | None:
    """The text a command is read from: the string, or the first text block."""
    if isinstance(content, str):
        return content
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            return text if isinstance(text, str) else None
    return None


def parse_command(text: str | None, triggers: tuple[str, ...]) -> Command | None:
    """The command at the start of `text`, or None for an ordinary message."""
    if not text:
        return None
    m = _HEAD.match(text)
    if m is None:
        return None
    word = "/" + m.group(1).lower()
    rest = m.group(2).strip()
    for trig in triggers:
        if word == trig.strip().lower():
            model = None
            body = rest
            first, _, after = rest.partition(" ")
            if first and _MODEL.match(first):
                model, body = first, after.strip()
            return Command("reset", trig, rest, model, body)
    if word[1:] in COMMANDS:
        return Command(word[1:], word, rest)
    return None


def split_model(model: str) -> tuple[str | None, str]:
    """`provider/model` -> (provider, model)."""
    provider, _, name = model.partition("/")
    return (provider or None), name
