"""Compaction and memory flush end to end (SPEC 4.6, 4.7): the real daemon, small thresholds.

Checked from outside only: answers, events, the transcript's bytes, the memory file, logs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.client import RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, RawConnection, ingest_params, read_transcript

KEY = "agent:main:main"
FLUSH = "sessiond.memoryFlush"


def small(summarizer: dict[str, Any] | None = None, **compaction: Any) -> dict[str, Any]:
    """Thresholds a test reaches in a few dozen messages: flush at 3200, compaction at 3600."""
    cc: dict[str, Any] = {
        "contextWindow": 4000,
        "reserveTokensFloor": 400,
        "keepRecentTokens": 600,
        "retryBaseSeconds": 1,
        "memoryFlush": {"softThresholdTokens": 400},
        **compaction,
    }
    if summarizer is not None:
        cc["summarizer"] = summarizer
    return {"daemon": {"timezone": "UTC"}, "agents": {"defaults": {"compaction": cc}}}


def note(i: int) -> str:
    """About 400 characters (100 tokens) with facts a summary should keep."""
    head = (
        f"Note {i}: Alice Martin booked room {100 + i} at the Hiiragiya in Kyoto for "
        f"2026-04-{i % 28 + 1:02d}; details in notes/trip-{i}.md. "
    )
    return head + "The weather was mild and the garden was quiet. " * ((400 - len(head)) // 48)


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def registry_entry(d: Daemon, key: str = KEY) -> dict[str, Any]:
    entry = d.call("sessions.get", {"sessionKey": key})
    assert isinstance(entry, dict)
    return entry


def transcript_path(d: Daemon, key: str = KEY) -> Path:
    return Path(registry_entry(d, key)["sessionFile"])


def events_of(conn: RawConnection, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Every notification that has arrived, waiting until none came for `quiet` seconds."""
    out = []
    conn.sock.settimeout(quiet)
    while True:
        try:
            msg = conn.read()
        except (TimeoutError, EOFError):
            return out
        if "method" in msg:
            out.append(msg)


def subscribe(d: Daemon) -> RawConnection:
    conn = d.raw()
    conn.send_request("events.subscribe", {"events": ["compaction.done", "memory.flushed"]})
    assert conn.read()["result"]["subscribed"] == ["compaction.done", "memory.flushed"]
    return conn


def memory_file(d: Daemon) -> Path:
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    return d.state_dir / "workspace" / "memory" / f"{day}.md"


def log_events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.logs() if e.get("event") == name]


def entries(path: Path) -> list[dict[str, Any]]:
    return read_transcript(path)[1:]


def summarizer_script(tmp_path: Path, body: str) -> dict[str, Any]:
    path = tmp_path / "summarize.py"
    path.write_text("import json, os, sys, time\n" + body)
    return {"kind": "command", "command": [sys.executable, str(path)], "timeoutSeconds": 5}


# ---------------------------------------------------------------------------------------------


def test_one_flush_then_one_compaction_per_cycle_and_history_is_only_appended(
    launch: Launch,
) -> None:
    d = launch(small())
    sub = subscribe(d)
    c = d.client()
    answers = []
    snapshots: list[bytes] = []
    path: Path | None = None
    for i in range(200):
        answer = c.call("message.ingest", ingest_params("1", note(i)))
        answers.append(answer)
        path = path or transcript_path(d)
        snapshots.append(path.read_bytes())
        if answer["compaction"] is not None:
            # Each cycle's compaction ends before the next messages: on a busy machine the
            # worker may take longer than the rest of the messages would (no time bound here).
            cycle = sum(1 for a in answers if a["compaction"] is not None)
            wait_for(
                lambda cycle=cycle: registry_entry(d)["compactionCount"] >= cycle,
                120,
                f"compaction {cycle}",
            )
        if registry_entry(d)["compactionCount"] >= 2:
            break
        time.sleep(0.02)
    assert path is not None
    assert registry_entry(d)["compactionCount"] == 2
    events = events_of(sub)
    kinds = [(e["method"], e["params"].get("compactionCount")) for e in events]
    assert [k for k, _ in kinds[:4]] == [
        "memory.flushed",
        "compaction.done",
        "memory.flushed",
        "compaction.done",
    ], kinds
    assert [n for k, n in kinds[:4] if k == "compaction.done"] == [1, 2]
    # The answers of the messages that crossed the threshold say a compaction was scheduled.
    scheduled = [a["compaction"] for a in answers if a["compaction"] is not None]
    assert scheduled == [{"scheduled": True, "reason": "threshold"}] * 2
    # Earlier bytes are never rewritten: every state seen is a prefix of the file now.
    final = path.read_bytes()
    assert all(final.startswith(s) for s in snapshots)
    lines = entries(path)
    marks = [
        ("flush", e["data"]["compactionCount"])
        if e.get("customType") == FLUSH
        else ("compaction", e["details"]["compactionCount"])
        for e in lines
        if e.get("customType") == FLUSH or e["type"] == "compaction"
    ]
    assert marks[:4] == [("flush", 0), ("compaction", 1), ("flush", 1), ("compaction", 2)]
    ids = [e["id"] for e in lines]
    for e in lines:
        if e["type"] == "compaction":
            assert e["firstKeptEntryId"] in ids[: ids.index(e["id"])]
            assert "Alice Martin" in e["summary"] and "Hiiragiya" in e["summary"]
            assert e["tokensBefore"] >= 3600
    # Every message is still there, in order.
    texts = [e["message"]["content"][0]["text"] for e in lines if e["type"] == "message"]
    assert texts == [note(i) for i in range(len(answers))]
    # The notes of both flushes are in today's memory file, 0600.
    mem = memory_file(d)
    assert oct(os.stat(mem).st_mode & 0o777) == "0o600"
    text = mem.read_text()
    assert text.startswith(f"# {mem.stem}\n")
    assert text.count(f"memory flush ({KEY})") == 2
    assert "Alice Martin" in text and "notes/trip-0.md" in text
    reg = registry_entry(d)
    assert reg["memoryFlushCompactionCount"] == 1
    assert reg["contextTokens"] == 4000


def test_a_failing_summarizer_writes_nothing_retries_and_ingest_goes_on(
    launch: Launch, tmp_path: Path
) -> None:
    ok = tmp_path / "ok"
    script = summarizer_script(
        tmp_path,
        f"sys.stdin.read()\nif not os.path.exists({str(ok)!r}):\n"
        "    sys.stderr.write('model offline'); sys.exit(2)\n"
        "print('## Notes\\n- Alice Martin booked the Hiiragiya.')\n",
    )
    d = launch(small(script))
    c = d.client()
    for i in range(45):  # each answered although every summary fails (no latency bound)
        c.call("message.ingest", ingest_params("1", note(i)))
    path = transcript_path(d)
    before = path.read_bytes()
    wait_for(lambda: len(log_events(d, "memory.flush_failed")) >= 2, what="two failed attempts")
    failed = log_events(d, "memory.flush_failed")
    assert "model offline" in failed[0]["reason"] and failed[1]["attempt"] == 2
    # Nothing was written: no compaction, no marker, no memory file; history untouched.
    assert path.read_bytes().startswith(before)
    assert not any(e["type"] != "message" for e in entries(path))
    assert not memory_file(d).exists()
    assert registry_entry(d)["compactionCount"] == 0
    # The model comes back: the retry (with backoff) succeeds without another message.
    ok.write_text("")
    wait_for(lambda: registry_entry(d)["compactionCount"] == 1, timeout=40, what="compaction")
    # The entry is waited for too: the registry's count can be seen a moment before it.
    compaction = wait_for(
        lambda: [e for e in entries(path) if e["type"] == "compaction"], what="the entry"
    )
    assert path.read_bytes().startswith(before)
    assert "Alice Martin booked the Hiiragiya." in memory_file(d).read_text()
    assert compaction[0]["summary"] == "## Notes\n- Alice Martin booked the Hiiragiya."


def test_a_template_only_summary_is_refused(launch: Launch, tmp_path: Path) -> None:
    script = summarizer_script(
        tmp_path,
        "req = json.load(sys.stdin)\n"
        "print('NO_REPLY' if req['task'] == 'memoryFlush' else "
        "'## Decisions\\nNone.\\n\\n## Open TODOs\\nNone.')\n",
    )
    d = launch(small(script))
    c = d.client()
    for i in range(45):
        c.call("message.ingest", ingest_params("1", note(i)))
    wait_for(lambda: log_events(d, "compaction.failed"), what="the refused summary")
    assert "template" in log_events(d, "compaction.failed")[0]["reason"]
    path = transcript_path(d)
    assert not [e for e in entries(path) if e["type"] == "compaction"]
    # NO_REPLY to the flush: the cycle's flush is recorded, nothing is written to memory.
    flushes = [e for e in entries(path) if e.get("customType") == FLUSH]
    assert len(flushes) == 1 and flushes[0]["data"]["noReply"] is True
    assert not memory_file(d).exists()


def test_a_hanging_summarizer_never_holds_up_ingest_or_shutdown(
    launch: Launch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "summarizer.pid"
    script = summarizer_script(
        tmp_path, f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    )
    script["timeoutSeconds"] = 100
    d = launch(small(script))
    c = d.client()
    for i in range(40):
        c.call("message.ingest", ingest_params("1", note(i)))
    wait_for(pid_file.exists, what="the summarizer to start")
    # Answered while the summarizer hangs for 120 s (its timeout 100 s, the client's 60 s): no
    # latency bound, which a loaded machine would break.
    for i in range(40, 60):
        c.call("message.ingest", ingest_params("1", note(i)))
    assert len(c.call("sessions.history", {"sessionKey": KEY, "limit": 100})["entries"]) == 60
    # A caller waiting on a compaction behind the hanging one is answered at shutdown.
    waiting = RawConnection(d.socket)
    rid = waiting.send_request("sessions.compact", {"sessionKey": KEY})
    time.sleep(0.3)
    assert d.stop() == 0  # within STOP_TIMEOUT (30 s), long before the summarizer would end
    answer = waiting.read()
    waiting.close()
    assert answer["id"] == rid
    assert answer["result"] == {"compacted": False, "reason": "the daemon stopped"}
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_compact_command_and_sessions_context(launch: Launch) -> None:
    d = launch(small(keepRecentTokens=150, contextWindow=200_000))
    c = d.client()
    for i in range(10):
        answer = c.call("message.ingest", ingest_params("1", note(i)))
        assert answer["compaction"] is None
    c.call(
        "message.append",
        {
            "sessionKey": KEY,
            "message": {
                "role": "assistant",
                "content": [{"type": "text", "text": "We decided on the garden room."}],
                "usage": {"input": 1200, "output": 30, "totalTokens": 1230},
            },
        },
    )
    assert registry_entry(d)["totalTokens"] == 1230
    answer = c.call("message.ingest", ingest_params("1", "/compact keep the booking details"))
    assert answer["compaction"] == {"scheduled": True, "reason": "command"}
    assert answer["command"]["reply"].startswith(f"Compacting {KEY} in the background")
    wait_for(lambda: registry_entry(d)["compactionCount"] == 1, what="the /compact compaction")
    ctx = c.call("sessions.context", {"sessionKey": KEY})
    assert (
        "Alice Martin" in ctx["summary"]
        and "Focus asked for: keep the booking details" in (ctx["summary"])
    )
    first = ctx["compaction"]["firstKeptEntryId"]
    assert ctx["entries"][0]["id"] == first
    assert all(e["type"] == "message" for e in ctx["entries"])
    assert ctx["entries"][-1]["message"]["content"][0]["text"].startswith("/compact")
    assert ctx["tokens"] == ctx["totalTokens"] == registry_entry(d)["totalTokens"]
    assert ctx["tokens"] < 1230 + 20  # the summary replaced the older messages
    expected = math.ceil(len(ctx["summary"]) / 4) + sum(
        math.ceil(len(e["message"]["content"][0]["text"]) / 4) for e in ctx["entries"]
    )
    assert ctx["tokens"] == expected
    assert ctx["contextWindow"] == 200_000 and ctx["compactionCount"] == 1
    reply = c.call("message.ingest", ingest_params("1", "/context"))["command"]["reply"]
    assert f"Context of {KEY}" in reply and "compactions: 1" in reply
    assert "## Conversation summary" in reply
    # sessions.compact waits for the outcome; with nothing older than the kept tail, says so.
    res = c.call("sessions.compact", {"sessionKey": KEY})
    assert res["compacted"] is False and "nothing to compact" in res["reason"]
    for i in range(10, 16):
        c.call("message.ingest", ingest_params("1", note(i)))
    res = c.call("sessions.compact", {"sessionKey": KEY, "instructions": "dates only"})
    assert res["compacted"] is True and res["compactionCount"] == 2
    assert "Focus asked for: dates only" in res["summary"]
    path = transcript_path(d)
    compactions = [e for e in entries(path) if e["type"] == "compaction"]
    assert [e["details"]["reason"] for e in compactions] == ["command", "api"]
    assert compactions[1]["details"]["instructions"] == "dates only"
    # Each compaction was preceded by its cycle's flush.
    kinds = [e.get("customType") or e["type"] for e in entries(path) if e["type"] != "message"]
    assert kinds == [FLUSH, "compaction", FLUSH, "compaction"]
    with pytest.raises(RpcError) as err:
        c.call("sessions.compact", {"sessionKey": "agent:main:nope"})
    assert err.value.code == 1003
    with pytest.raises(RpcError) as err:
        c.call("sessions.context", {"sessionKey": KEY, "bogus": 1})
    assert err.value.code == -32602


def test_counts_are_right_after_a_restart_and_after_a_crash(launch: Launch) -> None:
    config = small()
    config["daemon"]["checkpointIntervalMs"] = 600_000  # the registry is never checkpointed
    d = launch(config)
    c = d.client()
    c.call("message.ingest", ingest_params("1", note(0)))
    i = 1
    while registry_entry(d)["compactionCount"] < 1:
        c.call("message.ingest", ingest_params("1", note(i)))
        i += 1
        time.sleep(0.02)
    c.call(
        "message.append",
        {
            "sessionKey": KEY,
            "message": {"role": "assistant", "content": "ok", "usage": {"totalTokens": 2100}},
        },
    )
    c.call("message.ingest", ingest_params("1", "x" * 401))
    before = registry_entry(d)
    assert before["totalTokens"] == 2100 + 101
    fields = ("totalTokens", "compactionCount", "memoryFlushCompactionCount", "contextTokens")
    assert d.stop() == 0
    d.start()
    after = registry_entry(d)
    assert {k: after[k] for k in fields} == {k: before[k] for k in fields}
    # Now a crash right after the second compaction: nothing was checkpointed since the start.
    c = d.client()
    while registry_entry(d)["compactionCount"] < 2:
        c.call("message.ingest", ingest_params("1", note(i)))
        i += 1
        time.sleep(0.02)
    wait_for(lambda: not _busy(d), what="background work to settle")
    before = registry_entry(d)
    d.kill()
    d.start()
    after = registry_entry(d)
    assert {k: after[k] for k in fields} == {k: before[k] for k in fields}
    assert after["compactionCount"] == 2 and after["memoryFlushCompactionCount"] == 1


def _busy(d: Daemon) -> bool:
    """True while a flush or compaction may still change the counts (tokens still moving)."""
    a = registry_entry(d)["totalTokens"]
    time.sleep(0.3)
    return bool(registry_entry(d)["totalTokens"] != a)


def test_a_reset_flushes_the_closed_session_into_memory(launch: Launch) -> None:
    d = launch(small())
    sub = subscribe(d)
    c = d.client()
    for text in (
        "We decided to book the Hiiragiya for 2026-04-03.",
        "Alice Martin arrives on Friday at 7 pm; the plan is in notes/kyoto.md.",
    ):
        c.call("message.ingest", ingest_params("1", text))
    first = registry_entry(d)["sessionId"]
    answer = c.call("message.ingest", ingest_params("1", "/new start over"))
    assert answer["reset"]["previousSessionId"] == first and answer["created"]
    flushed = wait_for(lambda: events_of(sub, quiet=0.2), what="memory.flushed")
    assert flushed[0]["method"] == "memory.flushed"
    params = flushed[0]["params"]
    assert params["reason"] == "reset" and params["sessionId"] == first
    text = memory_file(d).read_text()
    assert "Hiiragiya" in text and "notes/kyoto.md" in text and "2026-04-03" in text
    # The triggering message is in the new session, nothing of the old one is lost.
    hist = c.call("sessions.history", {"sessionKey": KEY})
    assert [
        e["message"]["content"][0]["text"] for e in hist["entries"] if e["type"] == "message"
    ] == ["/new start over"]
    old = c.call("sessions.history", {"sessionKey": KEY, "previous": 1})
    assert len([e for e in old["entries"] if e["type"] == "message"]) == 2


def test_the_openai_summarizer_end_to_end(launch: Launch) -> None:
    """A chat-completions server on loopback: one 500 first, then a summary."""
    import http.server
    import threading

    calls: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            calls.append(body)
            if len(calls) == 1:
                self.send_response(500)
                self.end_headers()
                return
            task = "notes" if "memory flush" in body["messages"][0]["content"] else "summary"
            text = "- Alice Martin: Hiiragiya" if task == "notes" else "## Summary\nAlice stays."
            data = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        d = launch(small({"kind": "openai", "baseUrl": base, "model": "m", "retries": 2}))
        c = d.client()
        for i in range(45):
            c.call("message.ingest", ingest_params("1", note(i)))
        path = transcript_path(d)
        # The entry itself is waited for: the registry's count can be seen a moment before it.
        compaction = wait_for(
            lambda: [e for e in entries(path) if e["type"] == "compaction"], what="the compaction"
        )
        wait_for(lambda: registry_entry(d)["compactionCount"] >= 1, what="the count")
        summary = compaction[0]["summary"]
        assert summary == "## Summary\nAlice stays."
        assert "- Alice Martin: Hiiragiya" in memory_file(d).read_text()
        assert calls[0]["model"] == "m" and len(calls) >= 3
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_compact_command_line(launch: Launch) -> None:
    import subprocess

    from e2e.harness import daemon_env

    d = launch(small(keepRecentTokens=150, contextWindow=200_000))
    c = d.client()
    for i in range(8):
        c.call("message.ingest", ingest_params("1", note(i)))

    def sessiond(*args: str) -> subprocess.CompletedProcess[str]:
        at = ["--state-dir", str(d.state_dir), "--config", str(d.config_path)]
        return subprocess.run(
            [sys.executable, "-m", "daemon", *args, *at],
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(),
        )

    r = sessiond("compact", KEY, "--instructions", "rooms")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"compacted {KEY}: ") and "(compaction 1)" in r.stdout
    r = sessiond("compact", KEY, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compacted"] is False  # nothing older than the kept tail
    r = sessiond("compact", "agent:main:nope")
    assert r.returncode == 1


def test_compact_with_nothing_to_summarise_changes_nothing(launch: Launch) -> None:
    d = launch(small())
    c = d.client()
    c.call("message.ingest", ingest_params("1", "hello"))
    res = c.call("sessions.compact", {"sessionKey": KEY})
    assert res == {
        "compacted": False,
        "sessionKey": KEY,
        "sessionId": registry_entry(d)["sessionId"],
        "reason": "nothing to compact: every entry is in the kept tail",
    }
    # Neither a compaction nor the flush it would have needed: the cycle's flush is still due.
    assert [e["type"] for e in entries(transcript_path(d))] == ["message"]
    assert "memoryFlushCompactionCount" not in registry_entry(d)
    assert not memory_file(d).exists()


def test_a_compaction_cut_short_by_shutdown_is_answered(launch: Launch, tmp_path: Path) -> None:
    pid_file = tmp_path / "summarizer.pid"
    script = summarizer_script(
        tmp_path, f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    )
    script["timeoutSeconds"] = 100
    d = launch(small(script, keepRecentTokens=150))
    c = d.client()
    for i in range(5):
        c.call("message.ingest", ingest_params("1", note(i)))
    path = transcript_path(d)
    before = path.read_bytes()
    waiting = RawConnection(d.socket)
    rid = waiting.send_request("sessions.compact", {"sessionKey": KEY})
    wait_for(pid_file.exists, what="the summarizer to start")
    assert d.stop() == 0
    answer = waiting.read()
    waiting.close()
    assert answer["id"] == rid
    assert answer["result"] == {"compacted": False, "reason": "the daemon stopped"}
    assert path.read_bytes() == before


def test_flushing_a_very_long_session_at_reset_holds_up_neither_answers_nor_a_stop(
    launch: Launch, tmp_path: Path
) -> None:
    """A session never flushed and tens of MB long (imported, say) is reset: its flush reads
    only the newest context window, off the event loop, so other sessions are answered
    meanwhile and SIGTERM still ends the daemon promptly.

    No latency is measured (a loaded machine makes any bound flaky): the flush is held in its
    summarizer until the test is done, so every answer below comes while it is in progress."""
    pid_file, request_size = tmp_path / "summarizer.pid", tmp_path / "request.size"
    script = summarizer_script(
        tmp_path,
        f"n = len(sys.stdin.read())\nopen({str(request_size)!r}, 'w').write(str(n))\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n",
    )
    script["timeoutSeconds"] = 100
    d = launch(
        {
            "daemon": {"timezone": "UTC"},
            "agents": {"defaults": {"compaction": {"summarizer": script}}},
        }
    )
    c = d.client()
    c.call("message.ingest", ingest_params("1", "the start of a long conversation"))
    assert d.stop() == 0
    [path] = [p for p in d.transcripts() if p.name.endswith(".jsonl")]
    last = read_transcript(path)[-1]
    lines, parent = [], last["id"]
    text = "Alice Martin booked room 12 at the Hiiragiya for 2026-04-03, see notes/kyoto.md. " * 4
    for i in range(100_000):  # about 40 MB
        eid = f"{0x10000000 + i:08x}"
        entry = {
            "type": "message",
            "id": eid,
            "parentId": parent,
            "timestamp": last["timestamp"],
            "message": {"role": "user", "content": [{"type": "text", "text": f"{i} {text}"}]},
        }
        lines.append(json.dumps(entry))
        parent = eid
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    size = path.stat().st_size
    d.start()
    c = d.client()
    answer = c.call("message.ingest", ingest_params("1", "/new"))
    assert answer["reset"]["reason"] == "new"
    wait_for(pid_file.exists, timeout=60, what="the flush to reach its summarizer")
    # Only the newest context window (200k tokens, about 800 KB) was read and sent, not 40 MB.
    assert 0 < int(request_size.read_text()) < size // 10
    # While the old session's flush is in progress, another conversation is answered.
    for i in range(40):
        c.call("message.ingest", ingest_params("2", f"ping {i}"))
    # A reset's flush is logged with its group (memory.group_flushed), its own line at debug.
    assert not log_events(d, "memory.flushed") and not log_events(d, "memory.group_flushed")
    # SIGTERM ends the daemon though the flush would take 100 s more (STOP_TIMEOUT is less).
    assert d.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
