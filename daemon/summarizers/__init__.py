"""Summarizers: who writes compaction summaries and memory-flush notes.

Three kinds, chosen by `agents.defaults.compaction.summarizer.kind` (per agent in `agents.list[]`):

- `builtin` (builtin.py): offline and deterministic, extractive; works with no model at all.
- `command` (command.py): runs a program; the request as JSON on stdin, the text on stdout.
- `openai` (openai.py): any OpenAI-compatible `/v1/chat/completions` endpoint.

Every summarizer turns a `SummaryRequest` into text or raises `SummarizerFailed`. What comes back
is checked here (`check_summary`, `check_notes`) the same way for all three: an empty or
template-only answer is a failure, never a summary, because a summary replaces history in what a
model is sent next, and an empty one would silently make the model forget everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from daemon.core.summarizer_settings import SummarizerSettings as SummarizerSettings
from daemon.errors import SummarizerFailed

NO_REPLY = "NO_REPLY"

DEFAULT_FLUSH_PROMPT = (
    "Pre-compaction memory flush. The conversation below is about to be compacted: older "
    "messages will only survive as a summary. Write down what is worth remembering in later "
    "sessions (facts about the people involved, preferences, decisions, commitments, dates, "
    "numbers, names, file paths, open questions) as short Markdown bullet points. If nothing is "
    f"worth keeping, answer with exactly {NO_REPLY}."
)

COMPACTION_PROMPT = (
    "You compact a chat transcript. Summarise the conversation below so that an assistant can "
    "carry on from the summary and the most recent messages alone. Keep: who takes part, what "
    "was asked, decisions made, open questions and pending requests, and exact facts (names, "
    "numbers, dates, file paths, identifiers). If a previous summary is given, fold it in. "
    "Answer with the summary only, in Markdown."
)

Task = Literal["compaction", "memoryFlush"]


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """What a summarizer is asked. `entries` are transcript entries as stored (oldest first)."""

    task: Task
    prompt: str
    entries: tuple[dict[str, Any], ...]
    previous_summary: str | None = None
    instructions: str | None = None
    session_key: str = ""
    agent_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The request as the `command` summarizer's stdin carries it."""
        return {
            "task": self.task,
            "prompt": self.prompt,
            "instructions": self.instructions,
            "previousSummary": self.previous_summary,
            "sessionKey": self.session_key,
            "agentId": self.agent_id,
            "entries": list(self.entries),
            "transcript": render(self.entries),
        }

    def user_text(self) -> str:
        """The request as one text for a chat model: previous summary, transcript, instructions."""
        parts = []
        if self.previous_summary:
            parts.append(f"Previous summary:\n{self.previous_summary.strip()}")
        parts.append(f"Conversation:\n{render(self.entries)}")
        if self.instructions:
            parts.append(f"Additional instructions: {self.instructions.strip()}")
        return "\n\n".join(parts)


class Summarizer(Protocol):
    kind: str

    async def summarize(self, req: SummaryRequest) -> str:
        """The summary or notes; raises SummarizerFailed."""
        ...


def make_summarizer(cfg: SummarizerSettings) -> Summarizer:
    from daemon.summarizers.builtin import BuiltinSummarizer
    from daemon.summarizers.command import CommandSummarizer
    from daemon.summarizers.openai import OpenAISummarizer

    if cfg.kind == "command":
        return CommandSummarizer(cfg)
    if cfg.kind == "openai":
        return OpenAISummarizer(cfg)
    return BuiltinSummarizer()


def summarize_here(cfg: SummarizerSettings, req: SummaryRequest) -> tuple[str, str]:
    """(kind, text): the summarizer's answer, computed in this thread; for worker processes
    (daemon/workers.py), where nothing else waits on this thread. Raises SummarizerFailed."""
    import anyio

    from daemon.summarizers import builtin

    if cfg.kind == "builtin":
        text = builtin.notes(req) if req.task == "memoryFlush" else builtin.summary(req)
        return "builtin", text
    summarizer = make_summarizer(cfg)
    return summarizer.kind, anyio.run(summarizer.summarize, req)


# ---------------------------------------------------------------------------------------------
# Transcript as text


def render(entries: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """Message entries as plain lines for a model: `User: ...`, `Assistant: ...`, tool calls and
    results in brackets. Thinking blocks are left out (they were never meant for anyone)."""
    lines = []
    for e in entries:
        msg = e.get("message")
        if e.get("type") != "message" or not isinstance(msg, dict):
            continue
        role = msg.get("role")
        text = block_text(msg.get("content"), tools=True)
        if role == "user":
            who = "User"
            origin = e.get("origin")
            if isinstance(origin, dict) and isinstance(origin.get("senderName"), str):
                who = f"User ({origin['senderName']})"
            lines.append(f"{who}: {text}")
        elif role == "assistant":
            lines.append(f"Assistant: {text}")
        elif role == "toolResult":
            name = msg.get("toolName")
            lines.append(f"[tool result{f' ({name})' if name else ''}: {text}]")
    return "\n".join(lines)


def block_text(content: Any, *, tools: bool = False) -> str:
    """The readable text of a message's content (string or blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    out = []
    for b in content:
        if not isinstance(b, dict):
            continue
        kind = b.get("type")
        if kind == "text" and isinstance(b.get("text"), str):
            out.append(b["text"])
        elif kind == "image":
            out.append("[image]")
        elif kind == "toolCall" and tools:
            out.append(f"[tool call: {b.get('name')} {_short(b.get('arguments'))}]")
    return "\n".join(out)


def _short(v: Any, limit: int = 300) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Checking answers

# Lines a summary template holds when nothing was filled in.
_PLACEHOLDER = re.compile(
    r"^(?:none(?: captured| yet| so far)?|n/?a|nothing(?: yet)?|no prior history|tbd|todo|"
    r"unknown|empty|-+|\.+|…|\(none\)|\[none\]|not applicable|no (?:decisions|questions|"
    r"open questions|requests|facts|todos)(?: yet)?)[.!]?$",
    re.I,
)
_MARKUP = re.compile(r"^(?:(?:[#>*+\-]+|\d+[.)]|\[[ xX]\])\s*)+")


def is_no_reply(text: str) -> bool:
    return text.strip().strip("`*_\"'").strip() == NO_REPLY


def is_template_only(text: str) -> bool:
    """True when every line is a heading, a label or a placeholder such as "None."."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.fullmatch(r"\*\*[^*]+\*\*:?|__[^_]+__:?", line):
            continue  # a bold heading
        line = _MARKUP.sub("", line).strip()
        if not line or (line.endswith(":") and len(line) < 60):
            continue  # a label
        label, sep, value = line.partition(":")
        if sep and len(label) < 40 and _PLACEHOLDER.match(value.strip() or "none"):
            continue  # "Decisions: none"
        if _PLACEHOLDER.match(line.strip("*_ ")):
            continue
        return False
    return True


def check_summary(text: str) -> str:
    """A compaction summary as it will be stored; raises SummarizerFailed for an answer that
    would blank history (empty, NO_REPLY, template-only)."""
    summary = text.strip()
    if not summary:
        raise SummarizerFailed("the summarizer answered with an empty summary")
    if is_no_reply(summary):
        raise SummarizerFailed(f"the summarizer answered {NO_REPLY} to a compaction")
    if is_template_only(summary):
        raise SummarizerFailed("the summary is an empty template (headings and placeholders)")
    return summary


def check_notes(text: str) -> str | None:
    """Memory-flush notes as they will be written, or None for NO_REPLY (nothing to keep)."""
    notes = text.strip()
    if is_no_reply(notes):
        return None
    if not notes:
        raise SummarizerFailed("the summarizer answered with nothing (not even NO_REPLY)")
    if is_template_only(notes):
        raise SummarizerFailed("the notes are an empty template (headings and placeholders)")
    return notes
