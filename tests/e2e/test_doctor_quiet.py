"""`doctor` is silent on every healthy state sessiond makes (issue 13): a fresh default install
with the daemon running (its search index's WAL included), a stopped one, right after an import,
and right after `doctor --repair` re-created a transcript."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import orjson
from ops_harness import wait_for

from daemon.client import RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params
from e2e.test_backup import config, sessiond

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def doctor(d: Daemon, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    r = sessiond("doctor", "--state-dir", str(d.state_dir), "--json", *extra, *config(d))
    doc = orjson.loads(r.stdout)
    problems = [f for f in doc["findings"] if f["level"] in ("warning", "error")]
    return r.returncode, problems


def test_a_fresh_default_install_passes_doctor_running_and_stopped(launch: Launch) -> None:
    d = launch({})
    with d.client() as c:
        for i in range(5):
            c.call("message.ingest", ingest_params(str(i), f"hello number {i}"))
        # The search index is written (its WAL exists) once a search finds the messages.

        def found() -> Any:
            try:
                return c.call("memory.search", {"query": "hello"}).get("hits")
            except RpcError:  # the index is still opening
                return None

        wait_for("the index", found, timeout=60)

        def at_rest() -> bool:  # a running daemon between bursts: mirrored and checkpointed
            st = c.call("status", {})
            return bool(st["backup"].get("lagSessions") == 0 and st.get("lastCheckpointAt"))

        wait_for("the mirror and a checkpoint", at_rest, timeout=60)
    wal = d.state_dir / "index" / "search.sqlite3-wal"
    assert wal.exists()
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert doctor(d) == (0, [])
    assert d.stop() == 0
    assert doctor(d) == (0, [])


def test_doctor_passes_right_after_an_import(launch: Launch, tmp_path: Path) -> None:
    d = launch({}, start=False)
    for era in ("openclaw-2026.6", "openclaw-2026.9"):
        shutil.copytree(FIXTURES / era, tmp_path / era)
        r = sessiond(
            "import-openclaw", str(tmp_path / era), "--state-dir", str(d.state_dir), *config(d)
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert doctor(d) == (0, []), era


def test_doctor_passes_after_repair_re_creates_a_transcript(launch: Launch) -> None:
    d = launch({})
    with d.client() as c:
        c.call("message.ingest", ingest_params("1", "a message"))
    assert d.stop() == 0
    # A registry entry whose transcript is gone (e.g. moved away by hand) and never mirrored.
    doc = d.registry()
    key = next(iter(doc))
    lost = d.sessions_dir() / f"{doc[key]['sessionId']}.jsonl"
    lost.rename(d.workdir / "moved-away.jsonl")
    shutil.move(str(d.state_dir / "backup"), str(d.workdir / "old-backup"))
    code, problems = doctor(d)
    assert code == 1 and problems
    code, _ = doctor(d, "--repair")
    assert code == 0
    assert lost.exists() and lost.stat().st_size > 0
    assert doctor(d) == (0, [])
