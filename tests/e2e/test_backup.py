"""The backup mirror, retention, doctor, verify and restore against the real daemon (issue 4's
"done when"): a lost state folder comes back with every acknowledged message; a crash and a lost
mirror disk are caught up; and a whole scenario under strace removes nothing but temporary files
and originals whose verified compressed copy is in place."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.store.backup import compressed_segments
from daemon.store.transcript import custom_line, header_line, message_line
from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env, ingest_params, read_transcript

PER_PEER = {"session": {"dmScope": "per-channel-peer"}}


def sessiond(
    *args: str, prefix: list[str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=120,
        check=False,
        cwd=cwd,
    )


def config(d: Daemon) -> list[str]:
    return ["--config", str(d.config_path)]


def traffic(d: Daemon, peers: int = 5, per_peer: int = 8) -> list[dict[str, Any]]:
    """Messages from several peers, replies, and resets; every answer that came back."""
    acks = []
    with d.client() as c:
        for i in range(per_peer):
            for p in range(peers):
                text = f"peer {p} says number {i}" if i != 4 else "/new starting over"
                ack = c.call("message.ingest", ingest_params(str(p), text, messageId=f"{p}-{i}"))
                acks.append({**ack, "messageId": f"{p}-{i}"})
                if i % 3 == 0:
                    reply = {"role": "assistant", "content": [{"type": "text", "text": "noted"}]}
                    r = c.call(
                        "message.append", {"sessionKey": ack["sessionKey"], "message": reply}
                    )
                    acks.append({**r, "messageId": None})
        c.call("sessions.reset", {"sessionKey": acks[0]["sessionKey"], "reason": "reset"})
    return acks


def all_entries(state: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(sessionId, entryId) -> entry, over every transcript, active and archived (also .gz)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for p in sorted((state / "agents").rglob("*.jsonl*")):
        if p.name == "index.jsonl" or ".torn-" in p.name:
            continue
        data = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        lines = [orjson.loads(x) for x in data.splitlines()]
        for e in lines[1:]:
            key = (lines[0]["id"], e["id"])
            assert key not in out, f"entry {key} is in two places"
            out[key] = e
    return out


def assert_everything_acknowledged_is_there_once(state: Path, acks: list[dict[str, Any]]) -> None:
    entries = all_entries(state)
    for a in acks:
        assert (a["sessionId"], a["entryId"]) in entries, a
    mids = [
        e["origin"]["messageId"]
        for e in entries.values()
        if isinstance(e.get("origin"), dict) and "messageId" in e["origin"]
    ]
    assert sorted(mids) == sorted(a["messageId"] for a in acks if a["messageId"])


def wait_backup(d: Daemon, state: str = "ok", seconds: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        b: dict[str, Any] = d.call("status")["backup"]
        if b["state"] == state and (state != "ok" or b["lagSessions"] == 0):
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.05)


@pytest.mark.parametrize("sync", ["async", "ack"])
def test_a_lost_state_folder_comes_back_with_every_acknowledged_message(
    launch: Launch, tmp_path: Path, sync: str
) -> None:
    bk = tmp_path / "mirror-disk"
    d = launch({**PER_PEER, "sessions": {"backup": {"path": str(bk), "sync": sync}}})
    acks = traffic(d)
    if sync == "ack":
        d.kill()  # every answer waited for the mirror: even a crash right now loses nothing
    else:
        wait_backup(d)  # the mirror follows within about a second
        assert d.stop() == 0
    d.state_dir.rename(tmp_path / "the-disk-that-died")  # the state folder is lost
    new = tmp_path / "new-state"
    r = sessiond("backup", "restore", "--from", str(bk), "--state-dir", str(new), *config(d))
    assert r.returncode == 0, r.stderr
    assert "restored" in r.stdout
    r = sessiond("backup", "verify", "--from", str(bk), "--state-dir", str(new), *config(d))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_everything_acknowledged_is_there_once(new, acks)
    # The restored folder serves: history, and a retried message is recognised.
    d2 = launch({**PER_PEER, "sessions": {"backup": {"path": str(bk)}}}, state_dir=new)
    last = acks[-1]
    hist = d2.call("sessions.history", {"sessionKey": acks[-2]["sessionKey"]})
    assert hist["entries"]
    again = d2.call("message.ingest", ingest_params("1", "peer 1 says number 7", messageId="1-7"))
    assert again["duplicate"] is True
    assert d2.stop() == 0
    r = sessiond("backup", "verify", "--from", str(bk), "--state-dir", str(new), *config(d))
    assert r.returncode == 0, r.stdout + r.stderr
    assert last["entryId"]


def test_after_a_crash_the_mirror_catches_up_nothing_missing_nothing_doubled(
    launch: Launch,
) -> None:
    d = launch(PER_PEER)
    acks = traffic(d, peers=8, per_peer=6)
    d.kill()  # the mirror may be a moment behind
    d.start()
    wait_backup(d)
    assert d.stop() == 0
    r = sessiond("backup", "verify", "--state-dir", str(d.state_dir), *config(d), "--json")
    assert r.returncode == 0, r.stdout
    report = orjson.loads(r.stdout)
    assert report["ok"] and report["sessions"] >= 8
    assert_everything_acknowledged_is_there_once(d.state_dir, acks)


def test_the_mirror_disk_going_away_degrades_status_and_it_catches_up(
    launch: Launch, tmp_path: Path
) -> None:
    bk = tmp_path / "usb"
    d = launch({"sessions": {"backup": {"path": str(bk)}}})
    c = d.client()
    c.call("message.ingest", ingest_params("1", "before"))
    wait_backup(d)
    bk.rename(tmp_path / "usb-unplugged")
    for i in range(5):
        ack = c.call("message.ingest", ingest_params("1", f"while unplugged {i}"))
        assert ack["entryId"]  # ingest does not notice
    b = wait_backup(d, "degraded")
    assert b["lagSessions"] == 1 and b["lagBytes"] > 0 and b["error"]
    (tmp_path / "usb-unplugged").rename(bk)
    wait_backup(d, "ok", seconds=45)
    assert d.stop() == 0
    r = sessiond("backup", "verify", "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 0, r.stdout


def test_sync_ack_answers_only_once_the_mirror_has_the_entry(launch: Launch) -> None:
    d = launch({"sessions": {"backup": {"sync": "ack"}}})
    c = d.client()
    for i in range(5):
        ack = c.call("message.ingest", ingest_params("1", f"m{i}"))
        live = d.state_dir / "backup" / ack["sessionId"] / "history.jsonl"
        last = orjson.loads(live.read_bytes().splitlines()[-1])
        assert last["metadata"]["entryId"] == ack["entryId"]
        assert last["role"] == "user" and last["content"][0]["text"] == f"m{i}"


def test_verify_reports_a_difference_with_exit_1(launch: Launch) -> None:
    d = launch()
    ack = d.call("message.ingest", ingest_params("1", "hello"))
    wait_backup(d)
    assert d.stop() == 0
    live = d.state_dir / "backup" / ack["sessionId"] / "history.jsonl"
    lines = live.read_bytes().splitlines(keepends=True)
    live.write_bytes(b"".join(lines[:-1]))  # the mirror lost its last record
    r = sessiond("backup", "verify", "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 1
    assert ack["entryId"] in r.stdout and "missing from the mirror" in r.stdout


# ---------------------------------------------------------------------------------------------
# The whole scenario, watched by strace: traffic, resets, a retention sweep that compresses,
# doctor --repair on a damaged folder, and the daemon again.

TRACE = ["-f", "-qq", "-e", "trace=unlink,unlinkat,rmdir"]
REMOVAL = re.compile(r'\b(unlink|unlinkat|rmdir)\((?:(AT_FDCWD|\d+), )?"((?:[^"\\]|\\.)*)"')
TEMP = re.compile(r"^\..+\.(?:tmp|import)-\d+$")


def strace_missing() -> str | None:
    if shutil.which("strace") is None:
        return "strace is not installed (CI installs it: apt-get install strace)"
    probe = subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlink", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"strace cannot trace here: {probe.stderr.strip()[:200]}"
    return None


def removals(trace: Path, cwd: Path) -> list[Path]:
    out = []
    for line in trace.read_text(errors="replace").splitlines():
        m = REMOVAL.search(line)
        if m is None:
            continue
        path = m.group(3).encode().decode("unicode_escape")
        out.append(Path(path) if os.path.isabs(path) else cwd / path)
    return out


def file_hashes(root: Path) -> dict[Path, str]:
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_socket()
    }


def verified_copy_exists(path: Path, digest: str) -> bool:
    """A `.gz` beside it (archives) or in <backup>/archive/<sid>/ (mirrors) holds its bytes."""
    candidates = [path.with_name(path.name + ".gz")]
    if path.name == "history.jsonl":
        candidates += sorted((path.parent.parent / "archive" / path.parent.name).glob("*.gz"))
    for c in candidates:
        if c.is_file() and hashlib.sha256(gzip.decompress(c.read_bytes())).hexdigest() == digest:
            return True
    return False


def damage(d: Daemon, workdir: Path) -> dict[str, Path]:
    """A torn tail, an orphan, a registry entry without its file, a half-done archive move."""
    folder = d.sessions_dir()
    reg = d.registry()
    active = sorted(folder.glob("*.jsonl"))
    torn, lost = active[0], active[1]
    with open(torn, "ab") as f:
        f.write(b'{"type":"message","id":"00')
    lost.rename(workdir / "lost-transcript.jsonl")
    orphan = folder / "0e0e0e0e-0000-4000-8000-00000000000a.jsonl"
    key = next(iter(reg))
    lines = [header_line(orphan.stem, key, 1_795_000_000_000, "/w")]
    msg = {"role": "user", "content": [{"type": "text", "text": "an orphan"}], "timestamp": 1}
    lines.append(message_line("00000001", None, "2026-11-22T09:15:00.209Z", msg))
    orphan.write_bytes(b"".join(x + b"\n" for x in lines))
    half = folder / "0f0f0f0f-0000-4000-8000-00000000000b.jsonl"
    closing = custom_line(
        "00000002", "00000001", "2026-11-22T09:16:00.000Z", "sessiond.closed", {"reason": "idle"}
    )
    head = header_line(half.stem, "agent:main:gone", 1_795_000_000_000, "/w")
    half.write_bytes(b"".join(x + b"\n" for x in [head, lines[1], closing]))
    for p in (orphan, half):
        os.chmod(p, 0o600)
    return {"torn": torn, "lost": lost, "orphan": orphan, "half": half}


@pytest.mark.slow
@pytest.mark.parametrize("traced", [False, True], ids=["plain", "strace"])
def test_the_whole_scenario_removes_only_temporary_files_and_verified_originals(
    launch: Launch, tmp_path: Path, traced: bool
) -> None:
    if traced and (why := strace_missing()) is not None:
        pytest.skip(why)
    traces: list[Path] = []

    def wrap(name: str) -> list[str]:
        if not traced:
            return []
        traces.append(tmp_path / f"{name}.strace")
        return ["strace", *TRACE, "-o", str(traces[-1])]

    cfg = {
        **PER_PEER,
        "retention": {"compressAfterDays": 0},
        "sessions": {"backup": {"retention_days": 0}},
    }
    d = launch(cfg, wrapper=wrap("daemon-1"))
    acks = traffic(d)
    d.call("message.ingest", ingest_params("3", "the word zeppelin before compression"))
    assert d.stop() == 0
    workdir = d.workdir
    before = file_hashes(d.state_dir)
    archived = sorted((d.sessions_dir() / "archive").glob("*-*.jsonl"))  # not index.jsonl
    assert len(archived) >= 6

    # 1. the retention sweep compresses every archive and the mirrors of ended sessions
    r = sessiond("retention", "--state-dir", str(d.state_dir), *config(d), "--json",
                 prefix=wrap("retention"), cwd=workdir)  # fmt: skip
    assert r.returncode == 0, r.stderr
    swept = orjson.loads(r.stdout)
    assert swept["archivesCompressed"] == len(archived) and swept["failed"] == []
    assert swept["backupsCompressed"] >= len(archived)
    assert not list((d.sessions_dir() / "archive").glob("*-*.jsonl"))

    # 2. doctor finds the damage and repairs it
    hurt = damage(d, workdir)
    torn_bytes = hurt["torn"].read_bytes()
    r = sessiond("doctor", "--state-dir", str(d.state_dir), *config(d), prefix=wrap("doctor"))
    assert r.returncode == 1
    for p in hurt.values():
        assert p.name in r.stdout, (p.name, r.stdout)
    r = sessiond("doctor", "--repair", "--state-dir", str(d.state_dir), *config(d),
                 prefix=wrap("doctor-repair"), cwd=workdir)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (side,) = d.sessions_dir().glob(f"{hurt['torn'].name}.torn-*")
    assert hurt["torn"].read_bytes() + side.read_bytes() == torn_bytes
    assert hurt["lost"].read_bytes() == (workdir / "lost-transcript.jsonl").read_bytes()
    for name in ("orphan", "half"):
        assert (d.sessions_dir() / "archive" / hurt[name].name).exists()

    # 3. the daemon again: compressed archives read and searched, every message there once
    d.wrapper = wrap("daemon-2")
    d.start()
    key = acks[0]["sessionKey"]
    old = d.call("sessions.history", {"sessionKey": key, "previous": 1})
    assert (
        old["entries"]
        and old["sessionId"] != d.call("sessions.get", {"sessionKey": key})["sessionId"]
    )
    hits = d.call("memory.search", {"query": "zeppelin"})["hits"]
    assert hits
    wait_backup(d)
    assert d.stop() == 0
    assert_everything_acknowledged_is_there_once(d.state_dir, acks)
    r = sessiond("backup", "verify", "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 0, r.stdout
    for p in d.sessions_dir().glob("*.jsonl"):
        read_transcript(p)

    # 4. what strace saw removed: temporary files, the socket, verified originals (and SQLite's
    # own journal in the derived search index); nothing else
    for trace in traces:
        for path in removals(trace, workdir):
            if TEMP.match(path.name) or path.name == "sessiond.sock":
                continue
            if path.is_relative_to(d.state_dir / "index"):
                continue  # the search index: derived, "can be deleted and rebuilt" (SPEC 2)
            backup_root = d.state_dir / "backup"
            if path.parent == backup_root and compressed_segments(backup_root, path.name):
                # A mirror's folder the sweep emptied, taken away with rmdir (which refuses a
                # folder with anything in it); its history is in <backup>/archive/<sid>/.
                assert path not in before and not path.is_file()
                continue
            assert path in before, f"{trace.name}: removed {path}, which was no original"
            assert verified_copy_exists(path, before[path]), f"{trace.name}: removed {path}"
    if traced:
        seen = [p for t in traces for p in removals(t, workdir)]
        assert any(p.name.endswith(".jsonl") and p.parent.name == "archive" for p in seen)
        assert any(p.name == "history.jsonl" for p in seen)
