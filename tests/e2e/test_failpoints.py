"""Failpoints (issue 8): the daemon dies at every named step, restarts, and nothing is wrong.

For each name in `daemon.failpoints.NAMES`, a daemon runs with `SESSIOND_FAILPOINTS=<name>=exit`
under traffic that reaches the step; it ends there with exit code 86 (os._exit: no cleanup, no
flush, like SIGKILL at exactly that point). It then restarts without the failpoint, the adapters
retry what got no answer (same message ids), and the folder must hold:

- every acknowledged message exactly once, where its answer said (and retries as duplicates);
- complete transcripts (no torn line, parentId chains intact);
- a `sessions.json` that was valid JSON at the moment of death (the old or the new version,
  never a mix) and, after the restart, names exactly the active transcripts;
- archive moves complete or not started: each transcript in exactly one place, every archived
  file indexed;
- a replay that is idempotent: replaying the same crashed folder twice gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from reliability import tally

from daemon.failpoints import EXIT_CODE, NAMES
from daemon.store.store import Store
from e2e.conftest import Launch
from e2e.harness import (
    Daemon,
    PipelinedSender,
    RawConnection,
    check_chain,
    check_v3,
    ingest_params,
    read_transcript,
)

FIRE_TIMEOUT = 60.0  # generous: on a loaded machine the traffic reaches a step slowly
CONFIG = {
    "session": {"dmScope": "per-channel-peer"},
    "daemon": {
        "checkpointIntervalMs": 100,
        "dedupMaxPerAgent": 1_000_000,
        "spool": {"enabled": True},
    },
}
# Which hit of the step fires: later hits land in a running, loaded daemon.
ON_HIT = {
    "append.before_journal_write": 5,
    "append.after_journal_write": 5,
    "append.after_journal_sync": 5,
    "append.after_transcript_write": 5,
    "append.after_ack": 5,
    "journal.after_switch": 2,
    "checkpoint.after_sync": 2,
    "registry.temp_written": 2,
    "registry.temp_synced": 2,
    "registry.renamed": 2,
    "registry.folder_synced": 2,
    "spool.after_claim": 3,
    "spool.after_results": 2,
    "spool.after_move": 3,
}


class Traffic:
    """Adapters' traffic until the daemon dies: pipelined ingests from a few senders, resets of
    some sessions (archive steps), files dropped into the spool (spool steps)."""

    def __init__(self, d: Daemon, name: str, *, resets: bool, spool: bool) -> None:
        self.d = d
        self.senders = [
            PipelinedSender(d.socket, f"{name}-s{i}", peers=8, window=16) for i in range(3)
        ]
        self.resets = resets
        self.spool = spool
        self.spooled: dict[str, str] = {}  # file name -> its messageId
        self.reset_answers: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.extra = threading.Thread(target=self._extra, daemon=True)

    def start(self) -> None:
        for s in self.senders:
            s.start()
        self.extra.start()

    def _extra(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                if self.spool:
                    self._drop(n)
                if self.resets and n % 3 == 0:
                    with RawConnection(self.d.socket, timeout=5) as c:
                        a = c.call(
                            "sessions.reset",
                            {"sessionKey": f"agent:main:telegram:direct:peer{n % 8}"},
                        )
                    if "result" in a:
                        self.reset_answers.append(a["result"])
            except (OSError, EOFError):
                pass
            time.sleep(0.05)

    def _drop(self, n: int) -> None:
        root = self.d.state_dir / "spool"
        if not (root / "new").is_dir():
            return
        name = f"spooled-{n}.json"
        mid = f"spool-{n}"
        params = ingest_params("spooler", f"spooled {n}", messageId=mid)
        (root / "tmp" / name).write_bytes(orjson.dumps(params))
        os.rename(root / "tmp" / name, root / "new" / name)
        self.spooled[name] = mid

    def stop(self) -> None:
        self.stopping.set()
        for s in self.senders:
            s.stopping.set()
        for s in self.senders:
            s.join(20)
            assert s.failure is None, s.failure
        self.extra.join(20)

    def acked(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.senders:
            out.update(s.acked)
        return out

    def unanswered(self) -> list[dict[str, Any]]:
        return [p for s in self.senders for p in s.pending.values()]

    def sent(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.senders:
            out.update(s.sent)
        return out


def retry(d: Daemon, params: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What adapters do after a 1004 or a lost connection: send again, same message ids."""
    out: dict[str, dict[str, Any]] = {}
    with RawConnection(d.socket, timeout=30) as conn:
        for p in params:
            conn.send_request("message.ingest", p, rid=p["messageId"])
        for _ in params:
            a = conn.read()
            assert "result" in a, f"a retry after the restart failed: {a}"
            out[a["id"]] = a["result"]
    return out


def wait_for_exit(d: Daemon, timeout: float) -> int | None:
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            return d.proc.returncode
        time.sleep(0.02)
    return None


def all_transcripts(d: Daemon) -> dict[Path, bytes]:
    """Every transcript of every agent, active and archived (not side files)."""
    out: dict[Path, bytes] = {}
    agents = d.state_dir / "agents"
    for p in transcript_paths(agents):
        out[p] = p.read_bytes()
    return out


def transcript_paths(agents: Path) -> list[Path]:
    archived = [p for p in agents.glob("*/sessions/archive/*.jsonl") if p.name != "index.jsonl"]
    return sorted(agents.glob("*/sessions/*.jsonl")) + sorted(archived)


def registry_is_whole_json(d: Daemon) -> None:
    """At the moment of death: sessions.json is absent or a whole JSON object (old or new)."""
    for reg in d.state_dir.glob("agents/*/sessions/sessions.json"):
        doc = orjson.loads(reg.read_bytes())  # a mix of versions would not parse
        assert isinstance(doc, dict), reg
        for key, entry in doc.items():
            assert isinstance(entry, dict) and isinstance(entry.get("sessionId"), str), key


def copy_dead_folder(src: Path, dst: Path) -> None:
    """Copy the state folder of a daemon that died. Its child processes outlive it a moment
    (the search index worker closes its SQLite, whose -wal and -shm files then vanish; the
    mirror worker ends its round), so a file listed may be gone when it is copied: that file
    was the children's, never a transcript, journal or registry, which only the dead daemon
    wrote."""

    def copy(s: str, d: str) -> object:
        try:
            return shutil.copy2(s, d)
        except FileNotFoundError:
            return d

    shutil.copytree(
        src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.sock"), copy_function=copy
    )


def replay_twice(crashed: Path, work: Path) -> dict[str, bytes]:
    """Open a copy of the crashed folder in-process, keeping the journal (as if the start-up
    itself crashed right after replay), then open it again: the transcripts must come out the
    same as from one start-up."""
    copy = work / "replayed"
    shutil.copytree(crashed, copy, symlinks=True)
    first = Store(copy, dedup_max=1_000_000, dedup_window_ms=86_400_000)
    first.journal.start_fresh = lambda ahead=0: None  # type: ignore[method-assign]
    first.open()
    first.close()
    second = Store(copy, dedup_max=1_000_000, dedup_window_ms=86_400_000)
    second.open()
    second.close()
    agents = copy / "agents"
    return {str(p.relative_to(copy)): p.read_bytes() for p in transcript_paths(agents)}


def check_folder(d: Daemon, acked: dict[str, dict[str, Any]]) -> None:
    """The invariants after a restart (daemon stopped)."""
    counts: Counter[str] = Counter()
    found: dict[str, tuple[str, str]] = {}
    for folder in d.state_dir.glob("agents/*/sessions"):
        active = {p.stem: p for p in folder.glob("*.jsonl")}
        archived = {
            p.name.split(".jsonl")[0]: p
            for p in (folder / "archive").glob("*.jsonl*")
            if p.name != "index.jsonl"
        }
        both = sorted(set(active) & set(archived))
        assert not both, f"transcripts in two places at once: {both}"
        registry = orjson.loads((folder / "sessions.json").read_bytes()) if active else {}
        assert {e["sessionId"] for e in registry.values()} == set(active), (
            "sessions.json must name exactly the active transcripts"
        )
        index_file = folder / "archive" / "index.jsonl"
        index = index_file.read_bytes().splitlines() if index_file.exists() else []
        indexed = {orjson.loads(line)["file"] for line in index}
        for p in archived.values():
            assert p.name in indexed, f"{p.name} is in archive/ without an index line"
        for p in [*active.values(), *archived.values()]:
            lines = read_transcript(p)  # complete lines only, final newline
            if p.parent == folder:
                check_v3(p, lines)
            else:
                check_chain(p, lines[1:])
            for e in lines[1:]:
                mid = (e.get("origin") or {}).get("messageId")
                if isinstance(mid, str):
                    counts[mid] += 1
                    found[mid] = (lines[0]["id"], e["id"])
    doubled = sorted(m for m, n in counts.items() if n > 1)
    assert not doubled, f"stored twice: {doubled[:10]}"
    missing = sorted(m for m in acked if counts[m] == 0)
    assert not missing, f"acknowledged but lost: {missing[:10]}"
    for mid, answer in acked.items():
        assert found[mid] == (answer["sessionId"], answer["entryId"]), mid


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_dying_at_each_failpoint_loses_nothing_acknowledged(
    launch: Launch, tmp_path: Path, name: str
) -> None:
    d = launch(CONFIG, start=False)
    d.env = {"SESSIOND_FAILPOINTS": f"{name}=exit@{ON_HIT.get(name, 1)}"}
    d.start()
    traffic = Traffic(d, name, resets=name.startswith("archive."), spool=name.startswith("spool"))
    traffic.start()
    code = wait_for_exit(d, FIRE_TIMEOUT)
    traffic.stop()
    assert code == EXIT_CODE, f"{name} did not fire within {FIRE_TIMEOUT}s:\n{d.output()}"
    assert f"failpoint {name} fired" in (d.workdir / f"daemon-{d.runs}.err").read_text()
    registry_is_whole_json(d)
    crashed = tmp_path / "crashed"
    copy_dead_folder(d.state_dir, crashed)

    acked = traffic.acked()
    d.env = {}
    d.restart()
    for mid, answer in retry(d, traffic.unanswered()).items():
        assert mid not in acked
        acked[mid] = answer
    # A repeat of something acknowledged is a duplicate with the first answer.
    sent = traffic.sent()
    sample = sorted(acked)[:: max(1, len(acked) // 20)]
    for mid, answer in retry(d, [sent[m] for m in sample]).items():
        assert answer["duplicate"] is True, mid
        assert (answer["sessionId"], answer["entryId"]) == (
            acked[mid]["sessionId"],
            acked[mid]["entryId"],
        )
    if traffic.spooled:
        wait_spool_settled(d, traffic)
    assert d.call("status")["storage"] == "ok"
    assert d.stop() == 0
    check_folder(d, acked)
    if traffic.spooled:
        check_spool(d, traffic)
    # Replay is idempotent: the crashed folder replayed twice gives today's transcripts.
    today = {str(p.relative_to(d.state_dir)): b for p, b in all_transcripts(d).items()}
    twice = replay_twice(crashed, tmp_path)
    for rel, data in twice.items():
        assert today.get(rel, b"").startswith(data), f"{rel} differs after a double replay"
    tally("failpoints fired", 1)
    print(f"[reliability] failpoint {name}: {len(acked)} acknowledged messages checked")


def wait_spool_settled(d: Daemon, traffic: Traffic, timeout: float = 60.0) -> None:
    root = d.state_dir / "spool"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = list((root / "new").iterdir()) + list((root / "cur").iterdir())
        if not pending:
            return
        time.sleep(0.1)
    raise AssertionError(f"the spool did not settle: {sorted(p.name for p in pending)}")


def check_spool(d: Daemon, traffic: Traffic) -> None:
    """Every dropped file ends in done/ with its result beside it; its message once."""
    root = d.state_dir / "spool"
    done = {p.name for p in (root / "done").iterdir()}
    counts: Counter[str] = Counter()
    for lines in d.transcripts().values():
        for e in lines[1:]:
            mid = (e.get("origin") or {}).get("messageId")
            if isinstance(mid, str) and mid.startswith("spool-"):
                counts[mid] += 1
    for name, mid in traffic.spooled.items():
        assert name in done and f"{name}.result.json" in done, name
        assert counts[mid] == 1, (name, counts[mid])


def test_an_unknown_failpoint_name_is_refused() -> None:
    from daemon.failpoints import parse

    with pytest.raises(ValueError, match="unknown failpoint"):
        parse("append.after_jounral_sync=exit")
    with pytest.raises(ValueError, match="unknown action"):
        parse("append.after_journal_sync=crash")
    assert parse("") == {}
    armed = parse("registry.renamed=exit@3, archive.after_move=eio")
    assert (armed["registry.renamed"].on_hit, armed["archive.after_move"].action) == (3, "eio")
