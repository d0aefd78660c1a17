"""Token accounting and compaction thresholds (SPEC 4.6): pure functions, plain data."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import Config
from daemon.config_load import parse_config
from daemon.core import tokens
from daemon.core.tokens import Due, Thresholds
from daemon.errors import ConfigError


def msg(role: str, text: str = "", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}], **extra}


def entry(role: str, text: str = "", eid: str = "00000001", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "id": eid, "message": msg(role, text, **extra)}


# ---------------------------------------------------------------------------------------------
# Counting


def test_an_estimate_is_characters_over_four_rounded_up() -> None:
    assert tokens.estimate(0) == 0
    assert tokens.estimate(1) == 1
    assert tokens.estimate(4) == 1
    assert tokens.estimate(5) == 2
    assert tokens.message_tokens(msg("user", "x" * 401)) == 101


def test_an_image_counts_as_4800_characters() -> None:
    content = [{"type": "image", "data": "AAAA" * 10_000}, {"type": "text", "text": "abcd"}]
    assert tokens.content_chars(content) == 4804
    assert tokens.message_tokens({"role": "user", "content": content}) == 1201


def test_tool_calls_thinking_and_results_are_counted() -> None:
    content = [
        {"type": "thinking", "thinking": "abcd"},
        {"type": "toolCall", "name": "read", "arguments": {"path": "a.md"}},
    ]
    assert tokens.content_chars(content) == 4 + len("read") + len(repr({"path": "a.md"}))
    result = [{"type": "toolResult", "content": [{"type": "text", "text": "12345678"}]}]
    assert tokens.content_chars(result) == 8
    assert tokens.content_chars("plain string") == len("plain string")
    assert tokens.content_chars(None) == 0


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input": 8573, "output": 14, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 8587}, 8587),
        ({"input": 100, "output": 20, "cacheRead": 5}, 125),
        ({"prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100}, 100),
        ({"prompt_tokens": 90, "completion_tokens": 10}, 100),
        ({"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 10}, 20),
        ({"totalTokens": True}, None),
        ({"cost": 0.1}, None),
        ("lots", None),
        (None, None),
    ],
)
def test_provider_usage_in_every_common_spelling(usage: Any, expected: int | None) -> None:
    assert tokens.usage_tokens(usage) == expected


def test_the_latest_assistant_usage_replaces_the_running_count() -> None:
    assert tokens.after_message(50_000, msg("assistant", "hi", usage={"totalTokens": 9000})) == 9000
    # An assistant entry without usage, and any user entry, add their estimate.
    assert tokens.after_message(9000, msg("assistant", "x" * 8)) == 9002
    assert tokens.after_message(9000, msg("user", "x" * 9, usage={"totalTokens": 1})) == 9003
    assert tokens.after_message(-5, msg("user", "abcd")) == 1


def test_the_context_is_usage_plus_later_entries_else_summary_plus_kept_plus_after() -> None:
    kept = [entry("user", "k" * 40), entry("assistant", "k" * 40)]
    after = [
        entry("user", "a" * 400),
        entry("assistant", "b" * 4, usage={"totalTokens": 5000}),
        entry("user", "c" * 40),
        {"type": "custom", "customType": "x", "data": {"big": "z" * 4000}},
    ]
    assert tokens.context_tokens("s" * 400, kept, after) == 5000 + 10
    # Usage before the compaction (in the kept part) is stale: it counted the old history.
    stale = [entry("assistant", "k" * 40, usage={"totalTokens": 190_000})]
    assert tokens.context_tokens("s" * 400, stale, after[:1]) == 100 + 10 + 100
    assert tokens.context_tokens(None, [], []) == 0


# ---------------------------------------------------------------------------------------------
# Thresholds


def th(**kw: Any) -> Thresholds:
    base = {
        "context_window": 200_000,
        "reserve_floor": 20_000,
        "keep_recent": 20_000,
        "soft": 4_000,
        "flush_enabled": True,
        "flush_on_reset": True,
    }
    return Thresholds(**{**base, **kw})


def test_default_thresholds_are_the_spec_s() -> None:
    t = Config().agents.defaults.compaction.thresholds()
    assert t == th()
    assert t.compact_at == 180_000
    assert t.flush_at == 176_000


def test_below_the_flush_threshold_nothing_is_due() -> None:
    assert tokens.due(175_999, th(), 0, None) == Due(flush=False, compact=False)


def test_the_flush_is_due_once_per_cycle() -> None:
    assert tokens.due(176_000, th(), 0, None) == Due(flush=True, compact=False)
    assert tokens.due(177_000, th(), 0, 0) == Due(flush=False, compact=False)
    # The next cycle (one compaction later) flushes again.
    assert tokens.due(177_000, th(), 1, 0) == Due(flush=True, compact=False)


def test_a_compaction_brings_its_flush_when_the_cycle_has_none_yet() -> None:
    assert tokens.due(180_000, th(), 2, 1) == Due(flush=True, compact=True)
    assert tokens.due(180_000, th(), 2, 2) == Due(flush=False, compact=True)
    assert tokens.due(180_000, th(flush_enabled=False), 2, 1) == Due(flush=False, compact=True)


def test_the_threshold_does_not_compact_again_without_new_material() -> None:
    t = th()
    assert t.min_new_tokens == (180_000 - 20_000) // 4
    assert not tokens.due(190_000, t, 1, 1, new_tokens=100).compact
    assert tokens.due(190_000, t, 1, 1, new_tokens=t.min_new_tokens).compact
    assert tokens.due(190_000, t, 1, 1, new_tokens=None).compact


def test_the_kept_tail_fits_keep_recent_and_holds_at_least_the_last_entry() -> None:
    roles: list[str | None] = ["user", "assistant"] * 5
    assert tokens.split_kept([10] * 10, roles, 30) == 7
    assert tokens.split_kept([10] * 10, roles, 0) == 9
    assert tokens.split_kept([500, 10], ["user", "assistant"], 0) == 1
    assert tokens.split_kept([10] * 10, roles, 1000) == 0  # everything fits: nothing to do
    assert tokens.split_kept([], [], 10) == 0


def test_the_kept_tail_never_begins_with_a_tool_result() -> None:
    roles: list[str | None] = ["user", "assistant", "toolResult", "toolResult", "assistant"]
    assert tokens.split_kept([10, 10, 10, 10, 10], roles, 25) == 1


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=5000), max_size=60),
    keep=st.integers(min_value=0, max_value=20_000),
    data=st.data(),
)
def test_split_kept_invariants(sizes: list[int], keep: int, data: st.DataObject) -> None:
    roles = data.draw(
        st.lists(
            st.sampled_from(["user", "assistant", "toolResult", None]),
            min_size=len(sizes),
            max_size=len(sizes),
        )
    )
    i = tokens.split_kept(sizes, roles, keep)
    if not sizes:
        assert i == 0
        return
    # The longest tail within keep_recent (sizes are never negative), at least the last entry...
    fits = [j for j in range(len(sizes)) if sum(sizes[j:]) <= keep]
    i0 = min([*fits, len(sizes) - 1])
    # ...moved back over tool results so that their call stays with them.
    while i0 > 0 and roles[i0] == "toolResult":
        i0 -= 1
    assert i == i0


@given(st.lists(st.text(max_size=200), max_size=20))
def test_estimates_only_grow(texts: list[str]) -> None:
    count = 0
    for t in texts:
        nxt = tokens.after_message(count, msg("user", t))
        assert nxt - count == tokens.estimate(len(t))
        count = nxt


# ---------------------------------------------------------------------------------------------
# Configuration


def test_an_agent_overrides_only_the_keys_it_names() -> None:
    cfg = parse_config(
        """{agents: {
            defaults: {compaction: {
                contextWindow: 100000,
                memoryFlush: {softThresholdTokens: 500},
                summarizer: {kind: "command", command: ["x"], timeoutSeconds: 9},
            }},
            list: [{id: "Work", compaction: {reserveTokensFloor: 5000,
                                             memoryFlush: {onReset: false},
                                             summarizer: {timeoutSeconds: 3}}},
                   {id: "other", compaction: {summarizer: {kind: "builtin"}}}],
        }}"""
    )
    work = cfg.compaction_for("work")
    assert (work.contextWindow, work.reserveTokensFloor, work.keepRecentTokens) == (
        100_000,
        5000,
        20_000,
    )
    assert work.memoryFlush.softThresholdTokens == 500 and not work.memoryFlush.onReset
    assert work.summarizer.kind == "command" and work.summarizer.command == ("x",)
    assert work.summarizer.timeoutSeconds == 3
    # A summarizer that names its kind replaces the inherited one.
    other = cfg.compaction_for("other")
    assert other.summarizer.kind == "builtin" and other.summarizer.timeoutSeconds == 120
    assert cfg.compaction_for("main") == cfg.agents.defaults.compaction


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{agents: {defaults: {compaction: {contextWindow: 1000}}}}",
            "reserveTokensFloor (20000) must be less than contextWindow (1000)",
        ),
        (
            "{agents: {list: [{id: 'a', compaction: {reserveTokensFloor: 190000}}]}}",
            "agents.list[0].compaction: keepRecentTokens (20000) must be less than",
        ),
        (
            "{agents: {defaults: {compaction: {memoryFlush: {softThresholdTokens: 180000}}}}}",
            "softThresholdTokens (180000) must be less than",
        ),
        (
            "{agents: {defaults: {compaction: {summarizer: {kind: 'openai'}}}}}",
            'kind "openai" needs baseUrl and model',
        ),
        (
            "{agents: {defaults: {compaction: {summarizer: {kind: 'command'}}}}}",
            'kind "command" needs command',
        ),
    ],
)
def test_thresholds_that_make_no_sense_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "config.json5")
    assert message in str(e.value)
