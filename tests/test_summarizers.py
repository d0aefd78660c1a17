"""Summarizers (SPEC 4.7): the builtin one on real OpenClaw conversations, the command one running
tiny scripts, the openai one against a real HTTP server on loopback speaking chat-completions.
Whatever goes wrong, the answer is a SummarizerFailed, never an empty summary."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from daemon.config import SummarizerConfig
from daemon.errors import SummarizerFailed
from daemon.summarizers import (
    COMPACTION_PROMPT,
    DEFAULT_FLUSH_PROMPT,
    NO_REPLY,
    SummarizerSettings,
    SummaryRequest,
    check_notes,
    check_summary,
    is_template_only,
    make_summarizer,
    render,
)
from daemon.summarizers.builtin import BuiltinSummarizer, notes, summary
from daemon.summarizers.command import CommandSummarizer
from daemon.summarizers.openai import OpenAISummarizer

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "openclaw-2026.6"
SESSIONS = FIXTURE / "agents" / "main" / "sessions"
KYOTO = SESSIONS / "07f14acd-9d09-4ec5-860c-924620213170.jsonl"
JAPANESE = SESSIONS / "70de30ac-307c-4f24-8026-fe134613daac.jsonl"
RELEASE = SESSIONS / "25a93949-1d2a-475b-9bad-a9d12fb98066-topic-42.jsonl"
BACKSLASHES = (
    SESSIONS / "01ebda3d-2b0f-48ee-bed4-a70be5d4a675.jsonl.deleted.2026-11-22T00-33-29.552Z"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def entries_of(path: Path) -> tuple[dict[str, Any], ...]:
    out = []
    for line in path.read_bytes().splitlines():
        obj = orjson.loads(line)
        if obj.get("type") == "message":
            out.append(obj)
    return tuple(out)


def all_transcripts() -> list[Path]:
    return sorted(p for p in FIXTURE.glob("agents/*/sessions/*.jsonl*"))


def compaction_request(path: Path, **kw: Any) -> SummaryRequest:
    return SummaryRequest("compaction", COMPACTION_PROMPT, entries_of(path), **kw)


def text_entry(role: str, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "00000001",
        "timestamp": "2026-11-22T09:00:00.000Z",
        "message": {"role": role, "content": [{"type": "text", "text": text}]},
    }


# ---------------------------------------------------------------------------------------------
# What counts as a summary


OPENCLAW_EMPTY_TEMPLATE = """## Decisions
No prior history.

## Open TODOs
None.

## Constraints/Rules
None.

## Pending user asks
None.

## Exact identifiers
None captured.
"""


def test_an_empty_template_is_not_a_summary() -> None:
    assert is_template_only(OPENCLAW_EMPTY_TEMPLATE)
    assert is_template_only("**Goal:**\n- (none)\n\n### Progress\n- [ ] N/A\n- Decisions: none")
    with pytest.raises(SummarizerFailed, match="template"):
        check_summary(OPENCLAW_EMPTY_TEMPLATE)


@pytest.mark.parametrize("answer", ["", "   \n\n", NO_REPLY, "`NO_REPLY`"])
def test_an_empty_answer_never_becomes_a_summary(answer: str) -> None:
    with pytest.raises(SummarizerFailed):
        check_summary(answer)


def test_the_summary_openclaw_wrote_in_the_fixture_is_a_summary() -> None:
    for line in JAPANESE.read_bytes().splitlines():
        obj = orjson.loads(line)
        if obj.get("type") == "compaction":
            assert check_summary(obj["summary"]).startswith("## Decisions")
            break
    else:
        pytest.fail("the fixture has a compaction entry")


def test_memory_notes_may_be_no_reply_but_not_empty() -> None:
    assert check_notes(f"  {NO_REPLY}\n") is None
    assert check_notes("- Alice is allergic to shrimp") == "- Alice is allergic to shrimp"
    with pytest.raises(SummarizerFailed):
        check_notes("")
    with pytest.raises(SummarizerFailed):
        check_notes("## Notes\nNone.")


def test_render_is_plain_text_without_thinking() -> None:
    text = render(entries_of(JAPANESE))
    assert "User: good morning ☀️ what did I tell you about food yesterday?" in text
    assert "[tool call: read" in text and "[tool result (read):" in text
    assert "Counters are a big topic" not in text  # a thinking block


# ---------------------------------------------------------------------------------------------
# builtin, on real conversations


async def test_builtin_keeps_the_facts_of_a_trip_planning_chat() -> None:
    text = await BuiltinSummarizer().summarize(compaction_request(KYOTO))
    check_summary(text)
    assert text.startswith("## Conversation summary")
    assert "- User: 6 messages" in text and "- Assistant: 9 messages" in text
    assert "Tools used: read ×1, write ×2" in text
    # Requests, decisions and facts, in the words that were used.
    assert "Swap day 2 and day 3 please — I want Fushimi Inari earlier." in text
    assert 'booked the ryokan "Hiiragiya" for 3 nights' in text
    for fact in ("Hiiragiya", "Alice Martin", "Fushimi Inari", "Kyoto"):
        assert fact in text
    for fact in ("notes/kyoto-trip.md", "memory/2026-11-18.md", "early April", "3 nights"):
        assert fact in text


async def test_builtin_keeps_identifiers_and_versions() -> None:
    text = await BuiltinSummarizer().summarize(compaction_request(RELEASE))
    assert "draft the release checklist for v2.4" in text  # the @bot mention is dropped
    assert "git tag -a v2.4.0" in text and "npm test -- --ci" in text
    assert "package.json" in text and "CHANGELOG.md" in text


async def test_builtin_keeps_windows_paths_whole() -> None:
    text = await BuiltinSummarizer().summarize(compaction_request(BACKSLASHES))
    assert r"C:\Users\jonas\Documents\Steuer 2025\belege.xlsx" in text


async def test_builtin_shows_open_questions() -> None:
    entries = (
        text_entry("user", "We decided on Lisbon for the offsite."),
        text_entry("assistant", "Great. Which week works for the team? TODO: check the budget."),
    )
    req = SummaryRequest("compaction", COMPACTION_PROMPT, entries)
    text = summary(req)
    assert "### Open questions" in text
    assert "Assistant asked: Which week works for the team? (waiting for the user)" in text
    assert "TODO: check the budget." in text
    assert "User: We decided on Lisbon for the offsite." in text


async def test_builtin_is_deterministic_and_usable_on_every_fixture_transcript() -> None:
    for path in all_transcripts():
        req = compaction_request(path)
        first = await BuiltinSummarizer().summarize(req)
        assert first == await BuiltinSummarizer().summarize(req), path.name
        check_summary(first)  # never an empty template
        assert len(first) < 6000, path.name


async def test_builtin_folds_the_previous_summary_in() -> None:
    entries = entries_of(JAPANESE)
    earlier = summary(SummaryRequest("compaction", COMPACTION_PROMPT, entries[:20]))
    later = summary(
        SummaryRequest("compaction", COMPACTION_PROMPT, entries[20:], previous_summary=earlier)
    )
    assert "folded into the previous summary" in later
    assert "what did I tell you about food yesterday?" in later  # from the earlier part
    assert "memory/2026-11-16.md" in later
    assert later.count("### Requests") == 1
    # Message counts add up across the two parts.
    users = sum(1 for e in entries if e["message"]["role"] == "user")
    assert f"- User: {users} messages" in later
    # A summary written by someone else is carried over, not parsed.
    other = summary(
        SummaryRequest(
            "compaction", COMPACTION_PROMPT, entries[20:], previous_summary="Alice likes tea."
        )
    )
    assert "### Earlier summary\nAlice likes tea." in other


async def test_builtin_instructions_pick_a_focus() -> None:
    text = summary(compaction_request(KYOTO, instructions="keep everything about Hiiragiya"))
    assert "Focus asked for: keep everything about Hiiragiya" in text
    focus = text.split("### Focus", 1)[1]
    assert "Hiiragiya" in focus


async def test_builtin_notes_keep_lasting_facts_or_say_no_reply() -> None:
    req = SummaryRequest("memoryFlush", DEFAULT_FLUSH_PROMPT, entries_of(KYOTO))
    text = notes(req)
    assert check_notes(text) is not None
    assert "Hiiragiya" in text and "notes/kyoto-trip.md" in text
    small_talk = (text_entry("user", "hi"), text_entry("assistant", "Hello! 😊"))
    assert notes(SummaryRequest("memoryFlush", DEFAULT_FLUSH_PROMPT, small_talk)) == NO_REPLY


# ---------------------------------------------------------------------------------------------
# command


def script(tmp_path: Path, body: str, name: str = "summarize.py") -> SummarizerSettings:
    path = tmp_path / name
    path.write_text("import json, os, sys, time\n" + body)
    cfg = SummarizerConfig(kind="command", command=(sys.executable, str(path)), timeoutSeconds=3)
    return cfg.settings()


async def test_command_gets_the_request_on_stdin_and_answers_on_stdout(tmp_path: Path) -> None:
    cfg = script(
        tmp_path,
        "req = json.load(sys.stdin)\n"
        "print(f\"{req['task']} of {len(req['entries'])} entries for {req['sessionKey']}\")\n"
        "print(req['instructions'])\n"
        "print(req['transcript'].splitlines()[0])\n",
    )
    s = make_summarizer(cfg)
    assert isinstance(s, CommandSummarizer)
    req = compaction_request(KYOTO, instructions="be brief", session_key="agent:main:x")
    out = await s.summarize(req)
    assert out.splitlines() == [
        f"compaction of {len(req.entries)} entries for agent:main:x",
        "be brief",
        "User: Morning. What is on my Kyoto list so far?",
    ]


async def test_command_exit_code_is_checked(tmp_path: Path) -> None:
    cfg = script(
        tmp_path,
        "sys.stdin.read()\nprint('half a summary')\nsys.stderr.write('boom')\nsys.exit(3)\n",
    )
    with pytest.raises(SummarizerFailed, match="exited with 3: boom"):
        await CommandSummarizer(cfg).summarize(compaction_request(KYOTO))


async def test_a_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    cfg = script(
        tmp_path,
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n",
    )
    cfg = dataclasses.replace(cfg, timeoutSeconds=1)
    started = time.monotonic()
    with pytest.raises(SummarizerFailed, match="did not finish within 1s"):
        await CommandSummarizer(cfg).summarize(compaction_request(KYOTO))
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await anyio.sleep(0.05)
    else:
        pytest.fail("the summarizer's child process outlived the timeout")


async def test_a_command_that_cannot_run_or_writes_garbage_fails(tmp_path: Path) -> None:
    missing = SummarizerConfig(kind="command", command=(str(tmp_path / "nope"),)).settings()
    with pytest.raises(SummarizerFailed, match="cannot run"):
        await CommandSummarizer(missing).summarize(compaction_request(KYOTO))
    garbage = script(tmp_path, "sys.stdout.buffer.write(b'\\xff\\xfe summary')\n")
    with pytest.raises(SummarizerFailed, match="not UTF-8"):
        await CommandSummarizer(garbage).summarize(compaction_request(KYOTO))


async def test_a_command_that_ignores_its_stdin_is_fine(tmp_path: Path) -> None:
    cfg = script(tmp_path, "print('## Summary\\nAlice booked Hiiragiya.')\n")
    out = await CommandSummarizer(cfg).summarize(compaction_request(JAPANESE))
    assert check_summary(out) == "## Summary\nAlice booked Hiiragiya."


# ---------------------------------------------------------------------------------------------
# openai, against a real server on loopback

Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


class ChatServer:
    """A chat-completions server on 127.0.0.1 that plays scripted behaviours, one per request
    (the last one repeats), and records what it was sent."""

    def __init__(self) -> None:
        self.behaviours: list[Behaviour] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append((dict(self.headers.items()), body))
                n = len(outer.requests) - 1
                outer.behaviours[min(n, len(outer.behaviours) - 1)](self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a hanging behaviour must not hold the teardown
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status: int, body: bytes | str, headers: dict[str, str] | None = None) -> Behaviour:
    data = body.encode() if isinstance(body, str) else body

    def play(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    return play


def completion(text: str) -> Behaviour:
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return reply(200, json.dumps(doc))


def hang(seconds: float) -> Behaviour:
    def play(h: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        completion("too late")(h)

    return play


@pytest.fixture
def server() -> Iterator[ChatServer]:
    s = ChatServer()
    try:
        yield s
    finally:
        s.close()


def openai_cfg(server: ChatServer, **kw: Any) -> SummarizerSettings:
    base = {"kind": "openai", "baseUrl": server.base_url, "model": "summarizer-1"}
    cfg = SummarizerConfig.model_validate({"timeoutSeconds": 2, "retries": 2, **base, **kw})
    return cfg.settings()


async def test_openai_sends_a_chat_completion_and_returns_the_content(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUMMARY_KEY", "sk-test-123")
    server.behaviours = [completion("## Summary\nAlice booked Hiiragiya for 3 nights.")]
    s = make_summarizer(openai_cfg(server, apiKeyEnv="SUMMARY_KEY", maxOutputTokens=300))
    assert isinstance(s, OpenAISummarizer)
    req = compaction_request(KYOTO, previous_summary="Earlier: Alice plans Kyoto.")
    assert await s.summarize(req) == "## Summary\nAlice booked Hiiragiya for 3 nights."
    headers, body = server.requests[0]
    assert headers["authorization"] == "Bearer sk-test-123"
    assert body["model"] == "summarizer-1" and body["max_tokens"] == 300
    assert body["messages"][0] == {"role": "system", "content": COMPACTION_PROMPT}
    user = body["messages"][1]["content"]
    assert user.startswith("Previous summary:\nEarlier: Alice plans Kyoto.")
    assert "User: Morning. What is on my Kyoto list so far?" in user


async def test_openai_retries_500s_with_backoff_then_succeeds(server: ChatServer) -> None:
    server.behaviours = [reply(500, "oops"), reply(503, "busy"), completion("fine")]
    started = time.monotonic()
    assert await OpenAISummarizer(openai_cfg(server)).summarize(compaction_request(KYOTO)) == "fine"
    assert len(server.requests) == 3
    assert time.monotonic() - started >= 0.5 + 1.0  # two backoffs


async def test_openai_gives_up_after_its_retries(server: ChatServer) -> None:
    server.behaviours = [reply(500, '{"error": "down"}')]
    with pytest.raises(SummarizerFailed, match=r"HTTP 500.*3 attempts"):
        await OpenAISummarizer(openai_cfg(server)).summarize(compaction_request(KYOTO))
    assert len(server.requests) == 3


async def test_openai_does_not_retry_a_request_the_server_refuses(server: ChatServer) -> None:
    server.behaviours = [reply(401, '{"error": {"message": "bad key"}}')]
    with pytest.raises(SummarizerFailed, match=r"HTTP 401.*bad key"):
        await OpenAISummarizer(openai_cfg(server)).summarize(compaction_request(KYOTO))
    assert len(server.requests) == 1


async def test_openai_times_out_a_server_that_hangs(server: ChatServer) -> None:
    server.behaviours = [hang(5)]
    started = time.monotonic()
    with pytest.raises(SummarizerFailed, match=r"no answer within 1s \(2 attempts"):
        cfg = openai_cfg(server, timeoutSeconds=1, retries=1)
        await OpenAISummarizer(cfg).summarize(compaction_request(KYOTO))
    assert time.monotonic() - started < 4.5


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"choices": []}',
        b'{"choices": [{"message": {"content": null}}]}',
        b"\xff\xfe\x00garbage",
    ],
)
async def test_openai_garbage_is_a_failure_not_a_summary(server: ChatServer, body: bytes) -> None:
    server.behaviours = [reply(200, body)]
    with pytest.raises(SummarizerFailed, match="unreadable answer"):
        await OpenAISummarizer(openai_cfg(server, retries=0)).summarize(compaction_request(KYOTO))


async def test_openai_honours_retry_after_and_text_parts(server: ChatServer) -> None:
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}
    server.behaviours = [
        reply(429, "slow down", {"retry-after": "1"}),
        reply(200, json.dumps(parts)),
    ]
    started = time.monotonic()
    out = await OpenAISummarizer(openai_cfg(server)).summarize(compaction_request(KYOTO))
    assert out == "ab"
    assert time.monotonic() - started >= 1.0


async def test_openai_without_its_api_key_fails_before_sending(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    server.behaviours = [completion("x")]
    with pytest.raises(SummarizerFailed, match="NO_SUCH_KEY_VAR"):
        cfg = openai_cfg(server, apiKeyEnv="NO_SUCH_KEY_VAR")
        await OpenAISummarizer(cfg).summarize(compaction_request(KYOTO))
    assert server.requests == []


async def test_openai_connection_refused_is_a_failure() -> None:
    cfg = SummarizerConfig(
        kind="openai", baseUrl="http://127.0.0.1:9/v1", model="m", retries=1, timeoutSeconds=2
    ).settings()
    with pytest.raises(SummarizerFailed, match="ConnectError"):
        await OpenAISummarizer(cfg).summarize(compaction_request(KYOTO))
