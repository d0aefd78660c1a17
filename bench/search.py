"""Search benchmark: index build rate and memory.search latency over a million messages.

    python bench/search.py [--messages 1000000] [--sessions 2000] [--agents 4] [--queries 2000]

Writes a state folder straight to disk in OpenClaw's v3 format (headers, user messages with their
`origin`, assistant replies with `usage`, tool calls and results, reset markers; a third of the
sessions archived under archive/, a few compressed), plus a memory file per agent and day. Words
follow a Zipf distribution over a 40,000-word vocabulary, so some words are in a third of all
messages and most are rare, as in real chat. Then it:

  1. builds the index from scratch with the same function `sessiond reindex` runs (`rebuild`),
     and reports entries indexed per second;
  2. appends 5% more messages to active transcripts and runs one incremental pass (what the
     daemon does about once a second), and reports its rate;
  3. runs a mix of plain-language questions (the default `memory.search` syntax: a few of the
     most common words around one or two content words, with punctuation, percent signs and
     numbers; remembered phrases; single words; questions of common words only; a third narrowed
     to one agent) through `SearchIndex.search`, snippets included, and reports p50, p90, p99 and
     max latency; then the same for the FTS5-syntax mix (single words drawn by frequency,
     two-word AND, phrases, prefixes).

Targets: at least 50,000 messages/s indexed (issue 6); plain-language questions over 1,000,000
messages p50 < 50 ms and p99 < 200 ms, very common words included (issue 18).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.core.protocol import parse_search
from daemon.search import SearchIndex, index_path, rebuild
from daemon.store.transcript import iso_ms

T0 = 1_790_000_000_000
CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.choice((1, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables)))
    return sorted(words, key=lambda w: (len(w), w))


class Words:
    """Zipf-distributed words: rank r has weight 1/r (from rank `first` on)."""

    def __init__(self, vocab: list[str], rng: random.Random, first: int = 0) -> None:
        self.vocab = vocab[first:]
        self.cum = list(itertools.accumulate(1 / (first + i + 1) for i in range(len(self.vocab))))
        self.rng = rng

    def take(self, k: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=k)


def generate(state: Path, messages: int, sessions: int, agents: int, seed: int) -> dict[str, Any]:
    """Write the state folder; return what the query mix needs."""
    rng = random.Random(seed)
    words = Words(vocabulary(40_000, rng), rng)
    per_session = max(1, messages // sessions)
    written = 0
    sample_texts: list[str] = []
    for s in range(sessions):
        agent = f"agent{s % agents}"
        folder = state / "agents" / agent / "sessions"
        (folder / "archive").mkdir(parents=True, exist_ok=True)
        sid = str(uuid.UUID(int=rng.getrandbits(128)))
        key = f"agent:{agent}:telegram:direct:{s}"
        archived = s % 3 == 0
        compressed = archived and s % 15 == 0
        path = (folder / "archive" if archived else folder) / f"{sid}.jsonl"
        t = T0 + s * 10_000_000
        lines = [
            orjson.dumps(
                {"type": "session", "version": 3, "id": sid, "timestamp": iso_ms(t),
                 "cwd": "/srv/agent", "sessionKey": key}
            )
        ]  # fmt: skip
        parent = None
        count = per_session if s < sessions - 1 else messages - written
        for i in range(count):
            eid = f"{i + 1:08x}"
            t += rng.randint(1000, 120_000)
            text = " ".join(words.take(rng.randint(4, 40)))
            if i % 2 == 0:
                entry: dict[str, Any] = {
                    "type": "message", "id": eid, "parentId": parent, "timestamp": iso_ms(t),
                    "message": {"role": "user", "content": [{"type": "text", "text": text}],
                                "timestamp": t},
                    "origin": {"channel": "telegram", "chatType": "direct", "accountId": "default",
                               "peer": str(s), "messageId": f"{s}-{i}"},
                }  # fmt: skip
            elif i % 10 == 5:
                entry = {
                    "type": "message", "id": eid, "parentId": parent, "timestamp": iso_ms(t),
                    "message": {"role": "assistant", "content": [
                        {"type": "text", "text": text},
                        {"type": "toolCall", "id": "c1", "name": "search",
                         "arguments": {"q": text[:40]}}]},
                }  # fmt: skip
            else:
                entry = {
                    "type": "message", "id": eid, "parentId": parent, "timestamp": iso_ms(t),
                    "message": {"role": "assistant", "content": [{"type": "text", "text": text}],
                                "usage": {"input": 1200, "output": 80, "totalTokens": 1280}},
                }  # fmt: skip
            lines.append(orjson.dumps(entry))
            parent = eid
            if rng.random() < 0.001:
                sample_texts.append(text)
        if archived:
            lines.append(
                orjson.dumps(
                    {"type": "custom", "customType": "sessiond.closed", "id": "ffffffff",
                     "parentId": parent, "timestamp": iso_ms(t), "data": {"reason": "daily"}}
                )
            )  # fmt: skip
        data = b"\n".join(lines) + b"\n"
        if compressed:
            Path(f"{path}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            path.write_bytes(data)
        written += count
    for a in range(agents):
        memory = state / ("workspace" if a == 0 else f"workspace-agent{a}") / "memory"
        memory.mkdir(parents=True, exist_ok=True)
        for day in range(30):
            notes = "\n".join(f"- {' '.join(words.take(12))}" for _ in range(20))
            (memory / f"2026-10-{day + 1:02d}.md").write_text(f"# notes\n\n{notes}\n")
    return {"words": words, "samples": sample_texts, "written": written}


def questions(n: int, words: Words, samples: list[str], agents: int, seed: int) -> list[Any]:
    """Plain-language questions as people and models ask them. The 100 most frequent ranks play
    the common words ("what", "did", "the"); every question has some, some have nothing else."""
    rng = random.Random(seed + 2)
    common = words.vocab[:100]
    content = Words(words.vocab, rng, first=100)
    out = []
    for i in range(n):
        kind = rng.random()
        glue = rng.sample(common, rng.randint(2, 5))
        if kind < 0.45:
            asked = content.take(rng.randint(1, 2))
            text = f"{' '.join(glue[:2])} {asked[0]}, {' '.join(glue[2:] + asked[1:])}?"
        elif kind < 0.60:
            text = f"{content.take(1)[0]} {rng.randint(1, 99)}% of {rng.randint(1, 999)}.50?"
        elif kind < 0.75 and samples:
            tokens = rng.choice(samples).split()
            j = rng.randrange(max(1, len(tokens) - 3))
            text = " ".join(tokens[j : j + 4])  # a phrase someone half remembers, unquoted
        elif kind < 0.90:
            text = content.take(1)[0]
        else:
            text = " ".join(glue) + "?"  # common words only
        params: dict[str, Any] = {"query": text, "limit": 20}
        if i % 3 == 0:
            params["agentId"] = f"agent{rng.randrange(agents)}"
        out.append(parse_search(params))
    return out


def queries(n: int, words: Words, samples: list[str], agents: int, seed: int) -> list[Any]:
    """What people look for: words that carry meaning. The 100 most frequent ranks play the
    stop words ("the", "and"), which nobody searches for alone; they are measured apart."""
    rng = random.Random(seed + 1)
    content = Words(words.vocab, rng, first=100)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.45:
            text = content.take(1)[0]  # a content word, as often as it is used
        elif kind < 0.60:
            text = rng.choice(words.vocab)  # any word of the vocabulary (mostly rare)
        elif kind < 0.80:
            text = " ".join(content.take(1) + words.take(1))  # two words, both must occur
        elif kind < 0.92 and samples:
            tokens = rng.choice(samples).split()
            j = rng.randrange(max(1, len(tokens) - 1))
            text = '"' + " ".join(tokens[j : j + 2]) + '"'  # a phrase someone remembers
        else:
            w = ""
            while len(w) < 6:
                w = content.take(1)[0]
            text = w[:4] + "*"
        params: dict[str, Any] = {"query": text, "limit": 20, "syntax": "fts5"}
        if i % 3 == 0:
            params["agentId"] = f"agent{rng.randrange(agents)}"
        out.append(parse_search(params))
    return out


def stress(words: Words) -> dict[str, list[Any]]:
    """The expensive kinds, reported apart: every matching row is scored by bm25."""
    vocab = words.vocab
    return {
        "plain: one stop word (top 10, in 30-90% of messages)": [
            parse_search({"query": w}) for w in vocab[:10]
        ],
        "plain: five stop words": [
            parse_search({"query": " ".join(vocab[i : i + 5]) + "?"}) for i in range(0, 25, 5)
        ],
        "fts5: one stop word": [parse_search({"query": w, "syntax": "fts5"}) for w in vocab[:10]],
        "fts5: two stop words": [
            parse_search({"query": f"{vocab[i]} {vocab[i + 1]}", "syntax": "fts5"})
            for i in range(0, 10, 2)
        ],
        "fts5: 3-character prefixes": [
            parse_search({"query": w[:3] + "*", "syntax": "fts5"})
            for w in vocab[200:400:40]
            if len(w) >= 4
        ],
    }


def append_more(state: Path, n: int, words: Words) -> int:
    """Append n messages to the active transcripts (what arrives between two passes)."""
    actives = sorted(state.glob("agents/*/sessions/*.jsonl"))
    t = T0 + 10**12
    per = max(1, n // len(actives))
    done = 0
    for k, path in enumerate(actives):
        lines = []
        for i in range(per if k < len(actives) - 1 else n - done):
            t += 1000
            text = " ".join(words.take(20))
            lines.append(
                orjson.dumps(
                    {"type": "message", "id": f"f{i:07x}", "parentId": None,
                     "timestamp": iso_ms(t), "message": {"role": "user", "content": text}}
                )
            )  # fmt: skip
        with open(path, "ab") as f:
            f.write(b"\n".join(lines) + b"\n")
        done += len(lines)
    return done


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sessiond-search-"))
    state = work / "state"
    try:
        if state.exists():
            shutil.rmtree(state)
        t = time.perf_counter()
        gen = generate(state, args.messages, args.sessions, args.agents, args.seed)
        gen_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
        print(
            f"generated {gen['written']:,} messages in {args.sessions:,} sessions "
            f"({size / 1e6:,.0f} MB on disk) in {gen_s:.1f} s",
            file=sys.stderr,
        )

        def workspace_of(agent: str) -> Path:
            return state / ("workspace" if agent == "agent0" else f"workspace-{agent}")

        agent_ids = [f"agent{a}" for a in range(args.agents)]
        t = time.perf_counter()
        stats = rebuild(state, workspace_of, agent_ids)
        build_s = time.perf_counter() - t
        db = index_path(state)
        print(
            f"build: {stats.docs:,} entries from {stats.files:,} files in {build_s:.1f} s "
            f"= {stats.docs / build_s:,.0f} entries/s; index {db.stat().st_size / 1e6:,.0f} MB",
            file=sys.stderr,
        )

        idx = SearchIndex(db, state, workspace_of, lambda: agent_ids)
        idx.open()
        try:
            idx.sync()  # warm: the first pass after a rebuild only stats
            extra = append_more(state, max(1, args.messages // 20), gen["words"])
            t = time.perf_counter()
            inc = idx.sync()
            inc_s = time.perf_counter() - t
            print(
                f"incremental pass: {inc.docs:,} new entries in {inc_s:.2f} s "
                f"= {inc.docs / inc_s:,.0f} entries/s",
                file=sys.stderr,
            )
            assert inc.docs == extra, (inc.docs, extra)
            t = time.perf_counter()
            idle = idx.sync()
            idle_s = time.perf_counter() - t

            asked = questions(args.queries, gen["words"], gen["samples"], args.agents, args.seed)
            mix = queries(args.queries, gen["words"], gen["samples"], args.agents, args.seed)
            for q in asked[:50] + mix[:50]:  # warm the page cache as a running daemon's would be
                idx.search(q)
            plain_lat = []
            plain_hits = 0
            for q in asked:
                t = time.perf_counter()
                plain_hits += len(idx.search(q))
                plain_lat.append((time.perf_counter() - t) * 1000)
            lat = []
            hits = 0
            for q in mix:
                t = time.perf_counter()
                hits += len(idx.search(q))
                lat.append((time.perf_counter() - t) * 1000)
            worst: dict[str, dict[str, float]] = {}
            for kind, qs in stress(gen["words"]).items():
                ms = []
                for q in qs:
                    t = time.perf_counter()
                    idx.search(q)
                    ms.append((time.perf_counter() - t) * 1000)
                worst[kind] = {
                    "medianMs": round(statistics.median(ms), 1),
                    "maxMs": round(max(ms), 1),
                }
        finally:
            idx.close()
        result = {
            "messages": gen["written"],
            "entries": stats.docs,
            "buildSeconds": round(build_s, 2),
            "buildRate": round(stats.docs / build_s),
            "incrementalRate": round(inc.docs / inc_s),
            "idlePassMs": round(idle_s * 1000, 1),
            "idlePassFiles": idle.files,
            "questions": len(asked),
            "questionHits": round(plain_hits / len(asked), 1),
            "questionP50ms": round(pct(plain_lat, 50), 2),
            "questionP90ms": round(pct(plain_lat, 90), 2),
            "questionP99ms": round(pct(plain_lat, 99), 2),
            "questionMaxMs": round(max(plain_lat), 2),
            "queries": len(mix),
            "hitsPerQuery": round(hits / len(mix), 1),
            "p50ms": round(pct(lat, 50), 2),
            "p90ms": round(pct(lat, 90), 2),
            "p99ms": round(pct(lat, 99), 2),
            "maxMs": round(max(lat), 2),
            "meanMs": round(statistics.fmean(lat), 2),
            "indexMB": round(db.stat().st_size / 1e6),
            "stress": worst,
            "loadAverage": [round(x, 2) for x in os.getloadavg()],
        }
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            print(
                f"index build      {result['buildRate']:>10,} entries/s "
                f"({result['entries']:,} in {result['buildSeconds']} s; target >= 50,000)\n"
                f"incremental      {result['incrementalRate']:>10,} entries/s\n"
                f"idle pass        {result['idlePassMs']:>10} ms over {idle.files:,} files\n"
                f"question p50     {result['questionP50ms']:>10} ms (plain language; target < 50)\n"
                f"question p90     {result['questionP90ms']:>10} ms\n"
                f"question p99     {result['questionP99ms']:>10} ms (target < 200)\n"
                f"question max     {result['questionMaxMs']:>10} ms "
                f"({result['questions']:,} questions, {result['questionHits']} hits each)\n"
                f"fts5 query p50   {result['p50ms']:>10} ms\n"
                f"fts5 query p90   {result['p90ms']:>10} ms\n"
                f"fts5 query p99   {result['p99ms']:>10} ms\n"
                f"fts5 query max   {result['maxMs']:>10} ms "
                f"({result['queries']:,} queries, {result['hitsPerQuery']} hits each)"
            )
            for kind, v in worst.items():
                print(f"  stress: {kind:45} median {v['medianMs']:>8} ms, max {v['maxMs']:>8} ms")
            print(f"load average at the end: {result['loadAverage']}")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
