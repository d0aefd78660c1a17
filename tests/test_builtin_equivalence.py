"""The builtin summarizer was made faster without changing a byte of what it writes: its summaries
and notes are compared with those of the frozen copy of the earlier implementation
(tests/builtin_reference.py) on every fixture transcript, on long sessions built from them, and on
generated conversations full of what its patterns look for."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import builtin_reference as reference
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.summarizers import COMPACTION_PROMPT, DEFAULT_FLUSH_PROMPT, SummaryRequest
from daemon.summarizers import builtin as current

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def transcripts() -> list[Path]:
    return sorted(FIXTURES.glob("*/agents/*/sessions/*.jsonl*"))


def entries_of(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def all_entries() -> list[dict[str, Any]]:
    return [e for p in transcripts() for e in entries_of(p)]


def same(
    entries: list[dict[str, Any]], previous: str | None = None, focus: str | None = None
) -> str:
    """Both implementations on the same request, both tasks; returns the current summary."""
    flush = SummaryRequest("memoryFlush", DEFAULT_FLUSH_PROMPT, tuple(entries))
    assert current.notes(flush) == reference.notes(flush)
    req = SummaryRequest("compaction", COMPACTION_PROMPT, tuple(entries), previous, focus)
    got = current.summary(req)
    assert got == reference.summary(req)
    return got


def test_every_fixture_transcript_gives_the_same_text() -> None:
    paths = transcripts()
    assert len(paths) >= 15
    for path in paths:
        entries = entries_of(path)
        first = same(entries)
        same(entries, previous=first)
        same(entries, previous="An earlier summary written by a model.\n\n- Ana likes tea.")
        same(entries, focus="the budget and the dates of the trip")


def test_long_sessions_built_from_the_fixtures_give_the_same_text() -> None:
    pool = all_entries()
    rng = random.Random(16)
    previous: str | None = None
    for n in (1, 7, 200, 3000):
        entries = [rng.choice(pool) for _ in range(n)]
        previous = same(entries, previous=previous)
    same(pool * 10, focus="Kyoto hotel booking")


WORDS = [
    "we decided",
    "let's",
    "I'll",
    "TODO",
    "open question:",
    "follow up",
    "Ana",
    "Ana Lopez",
    "van Dijk",
    "Kyoto",
    "The",
    "March 3rd, 2026",
    "next Monday",
    "3pm",
    "10:30",
    "2026-04-03T09:00",
    "12/05/2026",
    "$1,200.50",
    "45%",
    "3 nights",
    "v1.2.3",
    "1234",
    "2.5",
    "https://example.com/a?b=1).",
    "ana@example.org",
    r"C:\Users\ana\notes.txt",
    "/etc/hosts",
    "./src/app.py",
    "notes/trip.md",
    "plan.json",
    "`make build`",
    "```\ncode Block\n```",
    "@bot",
    "ok",
    "thanks",
    "?",
    "？",
    ".",
    "!",
    "\n",
    "。",
    "-",
    "•",
    "Ünal Ço",
    "Jan.",
    "end of May",
    "tomorrow",
]

texts = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=30).map(" ".join)


@st.composite
def entry(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["user", "assistant", "toolResult", "system"]))
    text = draw(texts)
    content: Any = text
    if draw(st.booleans()):
        content = [{"type": "text", "text": text}]
        if role == "assistant" and draw(st.booleans()):
            content.append(
                {
                    "type": "toolCall",
                    "name": draw(st.sampled_from(["read", "write", ""])),
                    "arguments": {"path": draw(texts)},
                }
            )
    msg: dict[str, Any] = {"role": role, "content": content}
    if role == "toolResult":
        msg["toolName"] = draw(st.sampled_from(["read", "exec"]))
    e: dict[str, Any] = {"type": "message", "message": msg}
    if draw(st.booleans()):
        e["timestamp"] = "2026-09-21T10:00:00.000Z"
    if role == "user" and draw(st.booleans()):
        e["origin"] = {
            "senderName": draw(st.sampled_from(["Ana", "Bo Chen"])),
            "channel": draw(st.sampled_from(["telegram", None])),
        }
    return e


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entry(), max_size=25), st.sampled_from([None, "budget and dates"]))
def test_generated_conversations_give_the_same_text(
    entries: list[dict[str, Any]], focus: str | None
) -> None:
    first = same(entries, focus=focus)
    same(entries, previous=first)
