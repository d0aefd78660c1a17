"""The registry entry is the store's: typed setters mark sessions.json for the next checkpoint,
and every field OpenClaw wrote that sessiond does not know goes back to disk untouched."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.core.ingest import ROUTE_FIELD
from daemon.store.registry import SESSIONS_JSON, load_agent

FIXTURE = Path(__file__).parent / "fixtures" / "openclaw-2026.6" / "agents" / "main" / "sessions"
KEY = "agent:main:telegram:direct:123456789"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dest = tmp_path / "agents" / "main" / "sessions"
    dest.mkdir(parents=True)
    shutil.copy(FIXTURE / SESSIONS_JSON, dest / SESSIONS_JSON)
    return dest


def on_disk(folder: Path) -> dict[str, Any]:
    doc = orjson.loads((folder / SESSIONS_JSON).read_bytes())
    assert isinstance(doc, dict)
    return doc


def test_changing_one_field_keeps_every_unknown_openclaw_field_identical(
    folder: Path,
) -> None:
    before = on_disk(folder)
    reg, rebuilt = load_agent(folder.parents[2], "main", folder)
    assert rebuilt is None and not reg.pending
    st = reg.sessions[KEY]
    st.entry.total_tokens = st.entry.total_tokens + 123
    assert reg.changed_keys == {KEY}  # the setter marked its entry for the next checkpoint
    reg.save_if_changed()
    after = on_disk(folder)
    assert after[KEY]["totalTokens"] == before[KEY]["totalTokens"] + 123
    assert {k: v for k, v in after[KEY].items() if k != "totalTokens"} == {
        k: v for k, v in before[KEY].items() if k != "totalTokens"
    }
    # skillsSnapshot, systemPromptReport, usageFamilySessionIds, ...: sessiond knows none of them
    assert after[KEY]["skillsSnapshot"] == before[KEY]["skillsSnapshot"]
    assert {k: v for k, v in after.items() if k != KEY} == {
        k: v for k, v in before.items() if k != KEY
    }


def test_every_setter_marks_its_entry_changed_and_writes_its_openclaw_field(folder: Path) -> None:
    reg, _ = load_agent(folder.parents[2], "main", folder)
    e = reg.sessions[KEY].entry
    cases: list[tuple[str, str, Any]] = [
        ("updated_at", "updatedAt", 1_800_000_000_000),
        ("last_interaction_at", "lastInteractionAt", 1_800_000_000_001),
        ("total_tokens", "totalTokens", 4242),
        ("context_tokens", "contextTokens", 128_000),
        ("compaction_count", "compactionCount", 7),
        ("memory_flush_compaction_count", "memoryFlushCompactionCount", 7),
        ("route_to", ROUTE_FIELD, "agent:main:main"),
    ]
    for prop, field, value in cases:
        reg.changed_keys.clear()
        setattr(e, prop, value)
        assert reg.changed_keys == {KEY}, prop
        assert e[field] == value and getattr(e, prop) == value
    reg.changed_keys.clear()
    e.route_to = None  # back to the chat's own session: the field goes
    assert reg.changed_keys == {KEY} and ROUTE_FIELD not in e


def test_an_entry_cannot_be_written_as_a_dict(folder: Path) -> None:
    reg, _ = load_agent(folder.parents[2], "main", folder)
    e: Any = reg.sessions[KEY].entry
    with pytest.raises(TypeError):
        e["totalTokens"] = 1


def test_counters_that_are_missing_or_not_numbers_read_as_zero(folder: Path) -> None:
    reg, _ = load_agent(folder.parents[2], "main", folder)
    e = reg.sessions[KEY].entry
    e.update({"totalTokens": "many", "compactionCount": True}, drop=("contextTokens",))
    assert (e.total_tokens, e.compaction_count, e.context_tokens) == (0, 0, None)
