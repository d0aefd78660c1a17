"""Plain-language queries: what a person or a model types, turned into safe FTS5 terms.

An agent asks "what did we decide about the tip, 15%?"; FTS5's own syntax would read `%`, `?`,
`,` and `84.50` as errors, and AND-ing every word would demand that one message contain them all.
So a plain query is split into terms, each quoted (nothing in it can be syntax), and the terms are
OR-ed: bm25 then ranks a message by the rare words it shares with the question, as a search
engine does.

Rules, each a property test in tests/test_search_plain.py:
1. Any text gives terms or none, never an error: punctuation, `%`, quotes, emoji and control
   characters separate words; letters and digits of every script (CJK too) make them.
2. A word with inner punctuation (`84.50`, `e-mail`, `don't`) stays one term, a phrase of its
   parts, so `84.50` finds "84.50" and not every "84" and "50" apart.
3. A "quoted phrase" in the question stays a phrase.
4. Terms are deduplicated case-insensitively and capped (MAX_TERMS), in the order given.
This module is pure: choosing which terms are rare enough to rank by needs the index
(daemon/search/query.py), and is done there.
"""

from __future__ import annotations

import re

MAX_TERMS = 32
# Letters and digits of any script, as FTS5's unicode61 tokenizer sees them (categories L*, N*);
# `[^\W_]` is "a word character that is not the underscore".
_TOKEN = re.compile(r"[^\W_]+")
_QUOTED = re.compile(r'"([^"]*)"')


def plain_terms(text: str) -> list[tuple[str, ...]]:
    """The terms of a plain-language query: each a tuple of tokens (one token, or a phrase)."""
    out: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()

    def add(tokens: list[str]) -> None:
        term = tuple(t.lower() for t in tokens)
        if term and term not in seen and len(out) < MAX_TERMS:
            seen.add(term)
            out.append(term)

    pos = 0
    for m in _QUOTED.finditer(text):
        for word in text[pos : m.start()].split():
            add(_TOKEN.findall(word))
        add(_TOKEN.findall(m.group(1)))
        pos = m.end()
    for word in text[pos:].split():
        add(_TOKEN.findall(word))
    return out


def fts_term(term: tuple[str, ...]) -> str:
    """One term as an FTS5 string: quoted, so no token can be read as an operator."""
    return '"' + " ".join(term).replace('"', '""') + '"'


def fts_or(terms: list[tuple[str, ...]]) -> str:
    """The terms OR-ed into one FTS5 query (bm25 sums what each matched term contributes)."""
    return " OR ".join(fts_term(t) for t in terms)
