"""The builtin summarizer: offline, deterministic, extractive. No model at all.

It cannot understand a conversation, so it does not pretend to: it picks out what a reader needs
to carry on, in the words that were used. Who took part; what the user asked; sentences that
record decisions and actions; questions left open; and the exact facts (names, numbers, dates and
times, paths and links, identifiers in code spans) that summaries written by models most often
lose. The same entries always give the same text, byte for byte.

A compaction summary folds in the previous one: a builtin summary's sections are merged item by
item; any other summary is carried over as "Earlier summary". Every list is capped, newest items
kept, so the summary stays small however long the session grows. A memory flush gives bullet notes
of the lasting items only (decisions, open questions, facts), or NO_REPLY when there are none.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio

from daemon.summarizers import NO_REPLY, SummaryRequest, block_text

HEADING = "## Conversation summary"
MAX_ITEM = 200  # characters of one quoted item
MAX_REQUESTS = 12
MAX_DECISIONS = 12
MAX_OPEN = 6
MAX_FOCUS = 8
MAX_FACTS = 16  # per kind of fact
MAX_EARLIER = 6000  # characters of a previous summary that is not ours


class BuiltinSummarizer:
    kind = "builtin"

    async def summarize(self, req: SummaryRequest) -> str:
        # Pure Python over every entry: on a worker thread, so that a long session never holds
        # up the event loop (acknowledgements, a SIGTERM) for the whole of it.
        return await anyio.to_thread.run_sync(notes if req.task == "memoryFlush" else summary, req)


# ---------------------------------------------------------------------------------------------
# Reading the entries


@dataclass(slots=True)
class Turn:
    role: str
    text: str
    who: str | None = None  # a user's sender name / channel
    tools: list[tuple[str, Any]] = field(default_factory=list)
    timestamp: str | None = None
    split: list[str] | None = None  # sentences(text), once it was asked for


def sentences_of(t: Turn) -> list[str]:
    """`sentences(t.text)`, split once per turn however many sections look at it."""
    if t.split is None:
        t.split = sentences(t.text)
    return t.split


def turns_of(entries: tuple[dict[str, Any], ...]) -> list[Turn]:
    out = []
    for e in entries:
        msg = e.get("message")
        if e.get("type") != "message" or not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role not in ("user", "assistant", "toolResult"):
            continue
        content = msg.get("content")
        text = block_text(content)
        if role == "user" and "@" in text:
            text = _MENTION.sub("", text)
        t = Turn(str(role), text.strip(), timestamp=_str(e.get("timestamp")))
        if role == "user":
            t.who = _sender(e.get("origin"))
        if role == "assistant" and isinstance(content, list):
            for b in content:
                if isinstance(b, dict) and b.get("type") == "toolCall":
                    t.tools.append((str(b.get("name") or "tool"), b.get("arguments")))
        if role == "toolResult":
            t.who = _str(msg.get("toolName"))
        out.append(t)
    return out


_MENTION = re.compile(r"^\s*(?:@[\w.-]+[\s,:]*)+")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _sender(origin: Any) -> str | None:
    if not isinstance(origin, dict):
        return None
    name = _str(origin.get("senderName"))
    channel = _str(origin.get("channel"))
    if name and channel:
        return f"{name} ({channel})"
    return name or (f"{channel}:{origin.get('peer')}" if channel and origin.get("peer") else None)


_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def sentences(text: str) -> list[str]:
    # Code blocks are identifiers, not prose. (The tests on `in` skip a regex scan that could
    # not match: the same result, in a fraction of the time on long sessions.)
    if "```" in text:
        text = _FENCE.sub(" ", text)
    if "\n" not in text and not _ENDS.intersection(text):
        s = text.strip(" -*•>\t")
        return [s] if s else []
    return [s for s in map(_strip_item, _SENTENCE.split(text)) if s]


def _strip_item(s: str) -> str:
    return s.strip(" -*•>\t")


_ENDS = frozenset(".!?。！？")


_FENCE = re.compile(r"```.*?(?:```|$)", re.S)


def clip(text: str, limit: int = MAX_ITEM) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for i in items:
        k = i.casefold()
        if k not in seen:
            seen.add(k)
            out.append(i)
    return out


def first_and_last(items: list[str], cap: int) -> list[str]:
    """The first few items (they set the topic) and the newest ones, with a note of how many
    were left out between them."""
    items = _dedupe(items)
    if len(items) <= cap:
        return items
    head = cap // 3
    tail = cap - head
    left = len(items) - cap
    return [*items[:head], f"(and {left} more request{'s' if left != 1 else ''})", *items[-tail:]]


def _newest(items: list[str], cap: int) -> tuple[list[str], int]:
    items = _dedupe(items)
    return items[-cap:], max(0, len(items) - cap)


# ---------------------------------------------------------------------------------------------
# What is picked out

_ACK = re.compile(
    r"^(?:ok(?:ay)?|cool|great|nice|perfect|thanks?|thank you|thx|ty|merci|danke|gracias|yes|"
    r"no|sure|right|got it|good|awesome)\b",
    re.I,
)


def is_request(text: str) -> bool:
    """A user message that asks for something: a question, or more than a short acknowledgement."""
    if not text:
        return False
    if "?" in text or "？" in text:
        return True
    words = text.split()
    if len(words) >= 5:
        return True
    return len(words) >= 2 and not _ACK.match(text) and any(c.isalpha() for c in text)


_DECISION = re.compile(
    r"\b(?:decid\w*|agreed?|agree to|let'?s|let us|we(?:'ll| will| are going to)|i(?:'ll| will)|"
    r"going with|go with|chose|choose|chosen|settled on|confirm(?:ed|s)?|booked|reserved|"
    r"scheduled|switch(?:ed)? to|swap(?:ped)?|the plan is|plan to|from now on|"
    r"prefers?|always|never|must|should not|don'?t want|do not)\b|"
    r"^(?:done|noted|saved|added|updated|wrote|created)\b",
    re.I,
)
_OPEN = re.compile(
    r"\b(?:open question|todo|to do|tbd|to be decided|not sure yet|still need|need to "
    r"(?:check|decide|find out)|follow up|pending)\b",
    re.I,
)


def decisions(turns: list[Turn]) -> list[str]:
    out = []
    for t in turns:
        if t.role not in ("user", "assistant"):
            continue
        for s in sentences_of(t):
            if "?" in s or "？" in s:
                continue
            if _DECISION.search(s):
                prefix = "User" if t.role == "user" else "Assistant"
                out.append(f"{prefix}: {clip(s)}")
    return out


def open_questions(turns: list[Turn]) -> list[str]:
    out: list[str] = []
    talk = [t for t in turns if t.role in ("user", "assistant") and t.text]
    if talk:
        last = talk[-1]
        asked = [s for s in sentences_of(last) if s.endswith(("?", "？"))]
        who = "User" if last.role == "user" else "Assistant"
        suffix = "(not answered yet)" if last.role == "user" else "(waiting for the user)"
        out.extend(f"{who} asked: {clip(s)} {suffix}" for s in asked)
    for t in talk:
        for s in sentences_of(t):
            if _OPEN.search(s) and not s.endswith(("?", "？")):
                out.append(clip(s))
    return out


def requests(turns: list[Turn]) -> list[str]:
    return [clip(t.text) for t in turns if t.role == "user" and is_request(t.text)]


def participants(turns: list[Turn]) -> list[str]:
    users: Counter[str] = Counter()
    assistant = 0
    tools: Counter[str] = Counter()
    for t in turns:
        if t.role == "user":
            users[t.who or "User"] += 1
        elif t.role == "assistant":
            assistant += 1
            for name, _args in t.tools:
                tools[name] += 1
    out = []
    for who, n in sorted(users.items(), key=lambda kv: (-kv[1], kv[0])):
        label = who if who == "User" else f"User {who}"
        out.append(f"{label}: {n} message{'s' if n != 1 else ''}")
    if assistant:
        out.append(f"Assistant: {assistant} message{'s' if assistant != 1 else ''}")
    if tools:
        used = ", ".join(f"{k} ×{v}" for k, v in sorted(tools.items(), key=lambda kv: kv[0]))
        out.append(f"Tools used: {used}")
    return out


# --- facts -----------------------------------------------------------------------------------

_MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
_WEEKDAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
# Each alternative begins at a word boundary, so the boundary is tested once per position and
# the alternatives only where a date can begin (a digit, or the first letter of one of its
# words); tried one by one at every character, the flushes of a reset job spent half of the
# builtin summarizer's time in this pattern. Same alternatives, same order, same matches.
_DATE = re.compile(
    rf"\b(?=[\dbdefjlmnostwya])(?:"
    rf"\d{{4}}-\d{{2}}-\d{{2}}(?:[T ]\d{{2}}:\d{{2}}(?::\d{{2}})?)?\b|"
    rf"\d{{1,2}}[./]\d{{1,2}}[./]\d{{2,4}}\b|"
    rf"(?:(?:early|mid|late|end of|beginning of)[- ])?(?:{_MONTHS})\.?"
    rf"(?: \d{{1,2}}(?:st|nd|rd|th)?)?(?:,? \d{{4}})?\b|"
    rf"\d{{1,2}}(?:st|nd|rd|th)? (?:of )?(?:{_MONTHS})\b(?: \d{{4}})?|"
    rf"(?:next |this |last )?(?:{_WEEKDAYS})\b|"
    rf"\d{{1,2}}(?::\d{{2}})? ?(?:am|pm|a\.m\.|p\.m\.)(?![\w])|"
    rf"\d{{1,2}}:\d{{2}}\b|"
    rf"(?:tomorrow|tonight|yesterday|next (?:week|month|year)|this (?:week|weekend|month))\b)",
    re.I,
)
_URL = re.compile(r"\bhttps?://[^\s<>\"'`)\]]+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_WINPATH = re.compile(r"\b[A-Za-z]:\\(?:[^\\\n\"'<>|:*?]+\\)*[^\\\s\"'<>|:*?]+")
_PATH = re.compile(  # the word-boundary alternatives share one test (see _DATE)
    r"(?<![\w/])(?:~|\.{1,2})?/(?:[\w.@%+-]+/)*[\w.@%+-]+|"
    r"\b(?:[\w.-]+(?:/[\w.-]+)+\.\w{1,8}\b|"
    r"[\w-]+\.(?:md|json|jsonl|py|ts|js|txt|ya?ml|toml|csv|xlsx?|pdf|sh|html|css|log|ini|"
    r"conf|cfg|docx?|png|jpe?g|zip|tar|gz)\b)"
)
_CODE = re.compile(r"`([^`\n]{2,80})`")
_NUMBER = re.compile(  # after a currency sign, every alternative starts at \b, a digit or v
    r"[$€£¥]\s?\d[\d,]*(?:\.\d+)?|"
    r"\b(?=[\dv])(?:"
    r"\d+(?:[.,]\d+)?\s?%|"
    r"\d+(?:[.,]\d+)?\s?(?:°\s?[CF]\b|°|(?:ml|l|g|kg|mg|km|m|cm|mm|mi|ft|lb|oz|h|min|s|ms|"
    r"GB|MB|KB|TB|tbsp|tsp|cups?|nights?|days?|hours?|minutes?|weeks?|months?|years?|people|"
    r"persons?|guests?|USD|EUR|JPY|GBP|yen|dollars?|euros?)\b)|"
    r"\d+-(?:day|night|week|hour|minute|year|month|person)s?\b|"
    r"v?\d+\.\d+(?:\.\d+)+\b|"
    r"\d+[.,]\d+\b|"
    r"\d{3,}\b)"
)
_NAME = re.compile(r"\b[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:[ -](?:de |van |von )?[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+)*\b")
# Capitalised words that start sentences without naming anything.
_COMMON = frozenset(
    re.split(
        r"\s+",
        """a about after again all also an and any anytime are as at be because before beides both
    bring but by can cool could dear delete did do does done draft enjoy even every for from
    give go good great happy hello hey hi how i if in insert is it its just keep large let make
    many maybe mild most my no not noted now of ok okay on one or our perfect please run save
    saved see so some sorry sounds subject sure swap than thank thanks that the then there these
    they this those thx to today try update usually very was we well what when where which who
    why will with would yes you your small added wrote updated created comptez mit danke sehr
    sliced freeze build whisk rest add use user assistant tool tools notes note here
    successfully error errors warning result ok true false none null""",
    )
)


def facts(turns: list[Turn]) -> dict[str, list[str]]:
    """Exact facts in first-seen order (names by frequency), each kind deduplicated."""
    text_parts = []
    paths: list[str] = []
    for t in turns:
        text_parts.append(t.text)
        for _name, args in t.tools:
            if isinstance(args, dict):
                for k in ("path", "file", "filePath", "url"):
                    v = args.get(k)
                    if isinstance(v, str) and v:
                        paths.append(v)
    text = "\n".join(text_parts)
    # Each pattern is only run where its mark is in the text (`, ://, @, :\): no match is
    # possible otherwise, and most messages have none of them.
    codes: list[str] = []
    links: list[str] = []
    emails: list[str] = []
    wins: list[str] = []
    rest = text
    if "`" in text:
        found, rest = _cut_out(_CODE, text)
        codes = [clip(m.group(1), 80) for m in found]
    if "://" in text:
        links = [m.group(0).rstrip(".,;:") for m in _URL.finditer(text)]
        rest = _URL.sub(" ", rest)
    if "@" in text:
        emails = [m.group(0) for m in _EMAIL.finditer(text)]
        rest = _EMAIL.sub(" ", rest)
    if ":\\" in rest:
        found, rest = _cut_out(_WINPATH, rest)
        wins = [m.group(0) for m in found]
    if "/" in rest or "." in rest:  # every path has one or the other
        found, rest = _cut_out(_PATH, rest)
        paths.extend(m.group(0).rstrip(".,;:") for m in found)
    paths = [p for p in paths if _looks_like_path(p)]
    found, rest = _cut_out(_DATE, rest)
    dates = [" ".join(m.group(0).split()) for m in found]
    numbers = [" ".join(m.group(0).split()) for m in _NUMBER.finditer(rest)]
    names = _names(turns)
    out = {
        "Names": names,
        "Numbers": numbers,
        "Dates and times": dates,
        "Paths and links": [*wins, *paths, *links, *emails],
        "Identifiers": codes,
    }
    return {k: _dedupe(v)[:MAX_FACTS] for k, v in out.items() if v}


def _cut_out(pattern: re.Pattern[str], text: str) -> tuple[list[re.Match[str]], str]:
    """The matches of `pattern` and `pattern.sub(" ", text)`, in one scan instead of two (none
    of the patterns matches an empty string, so both see the same matches)."""
    found = []
    parts = []
    pos = 0
    for m in pattern.finditer(text):
        found.append(m)
        parts.append(text[pos : m.start()])
        pos = m.end()
    if not found:
        return found, text
    parts.append(text[pos:])
    return found, " ".join(parts)


def _looks_like_path(p: str) -> bool:
    if p.startswith(("/", "~/", "./", "../")):
        return p.count("/") >= 2 or "." in p.rsplit("/", 1)[-1]
    return True


_FIRST_WORD = re.compile(r"[ -]")
_CALENDAR = re.compile(rf"(?:{_MONTHS}|{_WEEKDAYS})", re.I)


def _names(turns: list[Turn]) -> list[str]:
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    mid: set[str] = set()
    order = 0
    for t in turns:
        if t.role == "user" and t.who and "(" in t.who:
            name = t.who.split(" (", 1)[0]
            counts[name] += 2
            first.setdefault(name, order)
            mid.add(name)
        if t.role == "toolResult" and len(t.text) > 2000:
            continue  # file dumps: their capitalised words are not the conversation's names
        split = sentences(_CODE.sub(" ", t.text)) if "`" in t.text else sentences_of(t)
        for s in split:
            for m in _NAME.finditer(s):
                words = m.group(0)
                if _FIRST_WORD.split(words, maxsplit=1)[0].casefold() in _COMMON:
                    if " " not in words:
                        continue
                    words = words.split(" ", 1)[1]
                if _CALENDAR.fullmatch(words):
                    continue
                order += 1
                counts[words] += 1
                first.setdefault(words, order)
                if m.start() > 0:
                    mid.add(words)
    # A word that only ever starts a sentence is more likely an ordinary word than a name.
    keep = [n for n in counts if n in mid or " " in n or counts[n] > 1]
    keep.sort(key=lambda n: (-counts[n], first[n]))
    return keep


# ---------------------------------------------------------------------------------------------
# Writing it down


def summary(req: SummaryRequest) -> str:
    turns = turns_of(req.entries)
    sections: dict[str, list[str]] = {}
    sections["Participants"] = participants(turns)
    sections["Requests"] = first_and_last(requests(turns), MAX_REQUESTS)
    sections["Decisions and actions"] = _newest(decisions(turns), MAX_DECISIONS)[0]
    sections["Open questions"] = _newest(open_questions(turns), MAX_OPEN)[0]
    sections["Facts"] = [f"{k}: {', '.join(v)}" for k, v in facts(turns).items()]
    if req.instructions:
        sections["Focus"] = focus(turns, req.instructions)
    previous = req.previous_summary or ""
    earlier = None
    if previous.startswith(HEADING):
        sections = merge_sections(parse_sections(previous), sections)
    elif previous.strip():
        earlier = previous.strip()
        if len(earlier) > MAX_EARLIER:
            earlier = earlier[:MAX_EARLIER].rsplit("\n", 1)[0] + "\n…"
    lines = [HEADING, "", _span(turns, previous)]
    if req.instructions:
        lines.append(f"Focus asked for: {clip(req.instructions)}")
    for name in SECTION_ORDER:
        items = sections.get(name)
        if items:
            lines += ["", f"### {name}", *(f"- {i}" for i in items)]
    if earlier:
        lines += ["", "### Earlier summary", earlier]
    return "\n".join(lines).strip() + "\n"


SECTION_ORDER = (
    "Participants",
    "Requests",
    "Decisions and actions",
    "Open questions",
    "Facts",
    "Focus",
)
_CAPS = {
    "Requests": MAX_REQUESTS,
    "Decisions and actions": MAX_DECISIONS,
    "Open questions": MAX_OPEN,
    "Focus": MAX_FOCUS,
}


def _span(turns: list[Turn], previous: str) -> str:
    stamps = [t.timestamp for t in turns if t.timestamp]
    n = len(turns)
    what = f"{n} message{'s' if n != 1 else ''}"
    if stamps:
        start, end = (s[:16].replace("T", " ") for s in (stamps[0], stamps[-1]))
        what += f" from {start} to {end} UTC"
    if previous.strip():
        what += ", folded into the previous summary"
    return f"Summarised {what} (extractive; the full transcript is kept)."


def focus(turns: list[Turn], instructions: str) -> list[str]:
    words = {w.casefold() for w in re.findall(r"\w{4,}", instructions)}
    out = []
    for t in turns:
        if t.role not in ("user", "assistant"):
            continue
        for s in sentences_of(t):
            if words & {w.casefold() for w in re.findall(r"\w{4,}", s)}:
                out.append(clip(s))
    return _newest(out, MAX_FOCUS)[0]


def parse_sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = out.setdefault(line[4:].strip(), [])
        elif current is not None and line.startswith("- "):
            current.append(line[2:])
    return out


def merge_sections(old: dict[str, list[str]], new: dict[str, list[str]]) -> dict[str, list[str]]:
    """Fold an earlier builtin summary into a new one: list sections keep the newest items;
    participants and facts are merged by label."""
    out: dict[str, list[str]] = {}
    for name in SECTION_ORDER:
        a, b = old.get(name, []), new.get(name, [])
        if name in ("Facts", "Participants"):
            out[name] = _merge_labelled(a, b, name == "Participants")
        else:
            a = [i for i in a if not i.startswith("(and ")]
            b = [i for i in b if not i.startswith("(and ")]
            if name == "Requests":
                out[name] = first_and_last(a + b, MAX_REQUESTS)
            else:
                out[name] = _newest(a + b, _CAPS.get(name, MAX_REQUESTS))[0]
    return out


def _merge_labelled(a: list[str], b: list[str], counts: bool) -> list[str]:
    merged: dict[str, list[str]] = {}
    for item in (*a, *b):
        label, sep, value = item.partition(": ")
        if not sep:
            merged.setdefault(item, [])
            continue
        if counts:
            merged.setdefault(label, []).append(value)
        else:
            values = merged.setdefault(label, [])
            values.extend(v for v in value.split(", ") if v)
    out = []
    for label, values in merged.items():
        if not values:
            out.append(label)
        elif counts:
            out.append(f"{label}: {_sum_counts(values)}")
        else:
            out.append(f"{label}: {', '.join(_dedupe(values)[-MAX_FACTS:])}")
    return out


def _sum_counts(values: list[str]) -> str:
    """ "3 messages" + "2 messages" -> "5 messages"; tool lists are joined."""
    total = 0
    for v in values:
        m = re.fullmatch(r"(\d+) messages?", v)
        if m is None:
            return ", ".join(_dedupe(values))
        total += int(m.group(1))
    return f"{total} message{'s' if total != 1 else ''}"


def notes(req: SummaryRequest) -> str:
    """Memory-flush notes: decisions, open questions and facts as bullets, or NO_REPLY."""
    turns = turns_of(req.entries)
    lines = []
    for d in _newest(decisions(turns), MAX_DECISIONS)[0]:
        lines.append(f"- {d}")
    for q in _newest(open_questions(turns), MAX_OPEN)[0]:
        lines.append(f"- Open: {q}")
    for k, v in facts(turns).items():
        lines.append(f"- {k}: {', '.join(v)}")
    if not lines:
        return NO_REPLY
    return "\n".join(lines) + "\n"
