"""Shards (SPEC 9): which daemon owns an agent, the same answer in every process and language."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config_load import parse_config
from daemon.core.shards import ShardMap
from daemon.errors import ConfigError


def test_the_hash_is_crc32_of_the_agent_id_as_every_language_computes_it() -> None:
    # zlib.crc32("main") = 3207122276 is the IEEE CRC-32 that Go, Node and Java also give.
    assert zlib.crc32(b"main") == 3207122276
    two = ShardMap(count=2, index=0)
    assert [two.owner(a) for a in ("main", "work", "ops", "a", "b")] == [0, 0, 1, 1, 1]


def test_an_explicit_owner_wins_over_the_hash() -> None:
    m = ShardMap(count=2, index=1, agents={"work": 1})
    assert m.owner("work") == 1 and m.owns("work")
    assert m.owner("main") == 0 and not m.owns("main")


@given(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=64))
def test_every_agent_has_exactly_one_owner(agent: str, count: int) -> None:
    owners = [i for i in range(count) if ShardMap(count, i).owns(agent)]
    assert len(owners) == 1


@pytest.mark.parametrize(
    ("shards", "says"),
    [
        ({"count": 2, "index": 2}, "index must be below count (2), got 2"),
        ({"count": 0, "index": 0}, "count"),
        ({"count": 2, "index": 0, "agents": {"work": 5}}, "agents.work: shard must be below"),
    ],
)
def test_a_shard_config_out_of_range_is_an_error_naming_the_key(
    shards: dict[str, object], says: str
) -> None:
    import json

    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps({"shards": shards}), "config.json5")
    assert says in str(e.value) and "shards" in str(e.value)
