"""Chat commands and reset triggers are recognised only at the start of a message."""

from __future__ import annotations

import pytest

from daemon.core.commands import message_text, parse_command

TRIGGERS = ("/new", "/reset")


@pytest.mark.parametrize(
    ("text", "name", "model", "body"),
    [
        ("/new", "reset", None, ""),
        ("/NEW", "reset", None, ""),
        ("  /reset  ", "reset", None, ""),
        ("/new hello there", "reset", None, "hello there"),
        ("/new openai/gpt-4o", "reset", "openai/gpt-4o", ""),
        (
            "/new anthropic/claude-3.5 and tell me a joke",
            "reset",
            "anthropic/claude-3.5",
            "and tell me a joke",
        ),
        ("/new@my_bot hi", "reset", None, "hi"),
        ("/reset\nsecond line", "reset", None, "second line"),
        ("/status", "status", None, ""),
        ("/compact keep the numbers", "compact", None, ""),
        ("/session agent:main:telegram:direct:1", "session", None, ""),
        ("/sessions", "sessions", None, ""),
        ("/context", "context", None, ""),
        ("/context detail", "context", None, ""),
        ("/stop", "stop", None, ""),
        ("/STOP@my_bot", "stop", None, ""),
    ],
)
def test_commands_at_the_start(text: str, name: str, model: str | None, body: str) -> None:
    c = parse_command(text, TRIGGERS)
    assert c is not None
    assert c.name == name
    assert c.model == model
    if name == "reset":
        assert c.text == body


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello /new",
        "/newer",
        "/news today",
        "/unknown",
        "please /reset",
        "//new",
        "/ new",
        None,
    ],
)
def test_ordinary_messages_are_not_commands(text: str | None) -> None:
    assert parse_command(text, TRIGGERS) is None


def test_configured_triggers_replace_the_defaults() -> None:
    assert parse_command("/fresh start", ("/fresh",)) is not None
    assert parse_command("/new", ("/fresh",)) is None


def test_text_is_read_from_the_first_text_block() -> None:
    assert message_text([{"type": "image"}, {"type": "text", "text": "/new x"}]) == "/new x"
    assert message_text([{"type": "image"}]) is None
    assert message_text("plain") == "plain"
