"""JSON-RPC framing and parameter validation: every input gives a request or the right error."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core import protocol
from daemon.errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    InvalidParams,
    RequestError,
)


def req(method: str = "status", params: Any = None, rid: Any = 1) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        obj["params"] = params
    return orjson.dumps(obj)


def test_a_well_formed_request_parses() -> None:
    r = protocol.parse_request(req("sessions.list", {"limit": 3}, rid="a"))
    assert (r.id, r.method, r.params, r.notification) == ("a", "sessions.list", {"limit": 3}, False)


def test_a_request_without_id_is_a_notification() -> None:
    r = protocol.parse_request(b'{"jsonrpc":"2.0","method":"status"}')
    assert r.notification


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", PARSE_ERROR),
        (b"\xff\xfe{}", PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"t":"\xed\xa0\x80"}}', PARSE_ERROR),
        (b"[]", INVALID_REQUEST),
        (b"[1,2]", INVALID_REQUEST),
        (b"42", INVALID_REQUEST),
        (b'{"id":1,"method":"status"}', INVALID_REQUEST),
        (b'{"jsonrpc":"1.0","id":1,"method":"status"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":{},"method":"status"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"status"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"status","params":[1]}', INVALID_REQUEST),
        (b"1" * 400, PARSE_ERROR),
        (b"[" * 5000 + b"]" * 5000, PARSE_ERROR),
    ],
)
def test_malformed_lines_get_the_right_code(line: bytes, code: int) -> None:
    with pytest.raises(RequestError) as e:
        protocol.parse_request(line)
    assert e.value.code == code


def test_an_invalid_request_keeps_its_id_when_readable() -> None:
    with pytest.raises(RequestError) as e:
        protocol.parse_request(b'{"jsonrpc":"2.0","id":7}')
    assert protocol.request_id_of(e.value) == 7


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_make_the_parser_raise_anything_but_a_request_error(data: bytes) -> None:
    with contextlib.suppress(RequestError):
        protocol.parse_request(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(protocol._INGEST_KEYS), "x"]), json_values))
def test_ingest_params_either_validate_or_name_the_field(params: dict[str, Any]) -> None:
    try:
        p = protocol.parse_ingest(params)
    except InvalidParams as e:
        assert e.code == INVALID_PARAMS
        assert e.data is not None and isinstance(e.data["field"], str)
        return
    assert p.channel and p.chat_type in protocol.CHAT_TYPES


BASE = {"channel": "telegram", "chatType": "direct", "peer": "1", "text": "hi"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channel": 5}, "channel"),
        ({"channel": ""}, "channel"),
        ({"chatType": "dm"}, "chatType"),
        ({"text": 3}, "text"),
        ({"content": [{"type": "text", "text": "a"}]}, "content"),
        ({"peer": {"id": 1}}, "peer"),
        ({"peer": "  "}, "peer"),
        ({"peer": "a\x00b"}, "peer"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2026-01-01T00:00:00"}, "timestamp"),
        ({"metadata": [1]}, "metadata"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_ingest_params_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as e:
        protocol.parse_ingest({**BASE, **change})
    assert e.value.field == field


def test_numeric_ids_are_accepted_as_strings() -> None:
    p = protocol.parse_ingest({**BASE, "peer": 123456789, "messageId": 42})
    assert (p.peer, p.message_id) == ("123456789", "42")


def test_the_fast_and_the_thorough_reader_agree() -> None:
    params = {**BASE, "messageId": "m1", "senderName": "Ann", "metadata": {"k": 1}}
    fast = protocol._fast_ingest(params)
    assert fast is not None
    slow = protocol.parse_ingest({**params, "timestamp": None})
    assert fast == slow


def test_content_blocks_and_iso_timestamps() -> None:
    p = protocol.parse_ingest(
        {
            "channel": "slack",
            "chatType": "channel",
            "groupId": "C1",
            "peer": "U1",
            "content": [{"type": "text", "text": "x"}, {"type": "image", "data": "..."}],
            "timestamp": "2026-11-17T18:15:00.209Z",
        }
    )
    assert p.timestamp_ms == 1794939300209
    assert isinstance(p.content, list)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sessionKey": "k", "message": {"role": "system", "content": "x"}}, "message.role"),
        ({"sessionKey": "k", "message": {"role": "assistant"}}, "message.content"),
        (
            {"sessionKey": "k", "message": {"role": "assistant", "content": [1]}},
            "message.content[0]",
        ),
        ({"message": {"role": "assistant", "content": "x"}}, "sessionKey"),
        (
            {"sessionKey": "k", "message": {"role": "user", "content": "x", "usage": 3}},
            "message.usage",
        ),
    ],
)
def test_bad_append_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as e:
        protocol.parse_append(params)
    assert e.value.field == field


def test_history_params_have_bounds() -> None:
    with pytest.raises(InvalidParams) as e:
        protocol.parse_history({"sessionKey": "k", "limit": 0})
    assert e.value.field == "limit"
    with pytest.raises(InvalidParams) as e:
        protocol.parse_history({})
    assert e.value.field == "sessionKey"
    h = protocol.parse_history({"sessionId": "x", "before": 10, "includeTools": False})
    assert (h.before, h.include_tools, h.limit) == (10, False, 50)
