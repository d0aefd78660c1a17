"""Hostile bytes against the pure protocol core (issue 8, "Hostile input"; STYLE: property tests
for parsers fed hostile bytes).

Whatever line arrives, the core must give a typed request or a `RequestError` with the right code,
never another exception (which the server would answer with -32603 at best and which, inside the
committer, would end the daemon). Beyond "no crash", three oracles:

- an error answer is one line of valid JSON-RPC, whatever the input;
- params that validate can be written into a transcript line (orjson writes 254 levels of
  nesting but reads 1024: a deeper value once validated, then failed in the committer);
- the fast and the thorough `message.ingest` readers agree.

Frames come from hypothesis (structure-aware: JSON text with deep nesting, integers beyond 64
bits, lone surrogates, NUL bytes, invalid UTF-8, duplicate keys, giant strings) and from byte
mutations of those frames. Each example expands into `MUTATIONS` frames, so that the run passes
100,000 frames in a few seconds; the count is printed and added to the run's summary.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hostile import (
    APPEND_BASE,
    FREE_FORM,
    HOSTILE_ATOMS,
    INGEST_BASE,
    KEYS,
    PARSERS,
    mutate,
    nested,
    splice,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import tally

from daemon.core import protocol
from daemon.errors import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, RequestError
from daemon.store.transcript import message_line

EXAMPLES = 2_000  # hypothesis examples
MUTATIONS = 50  # variants (splices and byte mutations) derived from each example's frame
FRAMES_PER_RUN = 100_000


@st.composite
def json_text(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A JSON-ish value as text: mostly valid, with hostile atoms and very deep nesting."""
    kind = draw(st.integers(0, 11 if depth < 3 else 4))
    if kind == 0:
        return draw(st.sampled_from(HOSTILE_ATOMS))
    if kind == 1:
        v = draw(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()))
        return str(v).encode() if isinstance(v, int) else orjson.dumps(v)
    if kind == 2:
        return orjson.dumps(draw(st.text(max_size=20)))
    if kind == 3:
        # A long string (lines up to the 1 MiB cap: test_a_line_at_the_size_cap_parses).
        n = draw(st.sampled_from([10, 1000, 65_536]))
        return b'"' + b"x" * n + b'"'
    if kind in (4, 10, 11):
        d = draw(st.sampled_from([63, 64, 65, 200, 254, 255, 256, 1000, 1023, 1024, 1025, 5000]))
        shape = draw(st.integers(0, 3))
        if shape == 0:
            return nested(d, b"[", b"]")
        if shape == 1:
            return nested(d, b'{"text":', b"}")
        if shape == 2:
            return nested(d // 2, b'{"a":[', b"]}")
        # content blocks whose extra field is deep
        return b'[{"type":"text","text":"x","n":' + nested(d, b"[", b"]") + b"}]"
    if kind in (5, 6):
        items = draw(st.lists(json_text(depth + 1), max_size=4))
        return b"[" + b",".join(items) + b"]"
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=5))
    values = [draw(json_text(depth + 1)) for _ in keys]
    return (
        b"{"
        + b",".join(orjson.dumps(k) + b":" + v for k, v in zip(keys, values, strict=True))
        + b"}"
    )


@st.composite
def params_text(draw: st.DrawFn) -> bytes:
    """Params close to what a method expects, with one or more hostile values."""
    base = dict(draw(st.sampled_from([INGEST_BASE, APPEND_BASE, {}])))
    if base is INGEST_BASE or base is APPEND_BASE:
        base = dict(base)
    for key in draw(st.lists(st.sampled_from(FREE_FORM), max_size=2)):
        base[key] = draw(json_text())
    if draw(st.integers(0, 3)) == 0:
        base[draw(st.sampled_from(KEYS))] = draw(json_text())
    if "content" in base and "text" in base and draw(st.booleans()):
        del base["text"]
    return b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in base.items()) + b"}"


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One line as a client might send it (without the newline)."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(json_text())
    method = orjson.dumps(draw(st.sampled_from([*PARSERS, "nope", ""])))
    rid = draw(st.sampled_from([b"1", b'"a"', b"null", b"1.5", b"true", b"{}", *HOSTILE_ATOMS]))
    params = draw(params_text()) if kind < 5 else draw(json_text())
    parts = [b'"jsonrpc":"2.0"', b'"method":' + method, b'"params":' + params]
    if draw(st.booleans()):
        parts.append(b'"id":' + rid)
    if draw(st.integers(0, 9)) == 0:
        parts.append(b'"jsonrpc":"1.0"')  # a duplicate key: the last one counts
    draw(st.randoms(use_true_random=False)).shuffle(parts)
    return b"{" + b",".join(parts) + b"}"


# ---------------------------------------------------------------------------------------------
# The oracle: what the server does with a line, minus the socket


def serve_line(line: bytes) -> str:
    """Parse and validate one line as the server does; return the outcome's kind. Fails the test
    on any exception that is not a RequestError with a proper code and a writable answer."""
    try:
        req = protocol.parse_request(line)
    except RequestError as e:
        assert e.code in (PARSE_ERROR, INVALID_REQUEST), (e.code, line[:200])
        check_answer(protocol.encode_error(protocol.request_id_of(e), e))
        return "malformed"
    assert isinstance(req.params, dict) and isinstance(req.method, str) and req.method
    parser = PARSERS.get(req.method)
    if parser is None:
        return "unknown method"
    try:
        parsed = parser(req.params)
    except RequestError as e:
        assert e.code == INVALID_PARAMS, (e.code, line[:200])
        assert e.data is not None and isinstance(e.data.get("field"), str), e.data
        check_answer(protocol.encode_error(req.id, e))
        return "invalid params"
    if isinstance(parsed, protocol.IngestParams):
        check_ingest_is_writable(parsed)
        check_fast_and_thorough_agree(req.params, parsed)
    elif isinstance(parsed, protocol.AppendParams):
        message_line("00000001", None, "2026-01-01T00:00:00.000Z", dict(parsed.message))
    return "valid"


def check_answer(data: bytes) -> None:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    obj = orjson.loads(data)
    assert obj["jsonrpc"] == "2.0" and isinstance(obj["error"]["code"], int)
    assert obj["id"] is None or isinstance(obj["id"], (str, int))


def check_ingest_is_writable(p: protocol.IngestParams) -> None:
    """What the committer will write for this message: it must serialise."""
    message = {
        "role": "user",
        "content": [{"type": "text", "text": p.content}]
        if isinstance(p.content, str)
        else p.content,
        "timestamp": p.timestamp_ms or 0,
    }
    origin = {"channel": p.channel, "peer": p.peer, "metadata": p.metadata}
    message_line("00000001", None, "2026-01-01T00:00:00.000Z", message, origin)


def check_fast_and_thorough_agree(params: dict[str, Any], parsed: protocol.IngestParams) -> None:
    if "timestamp" in params:
        return
    thorough = protocol.parse_ingest({**params, "timestamp": None})
    assert thorough == parsed


OUTCOMES: dict[str, int] = {}


def run_frames(seed_frame: bytes, seed: int) -> int:
    """The frame, then MUTATIONS variants of it: half spliced values, half mutated bytes."""
    rng = random.Random(seed)
    lines = [seed_frame]
    for i in range(MUTATIONS):
        spliced = splice(rng, seed_frame) if i % 2 == 0 else None
        lines.append(spliced if spliced is not None else mutate(rng, seed_frame))
    count = 0
    for line in lines:
        # The server splits on newlines before the core sees a line.
        for part in line.split(b"\n"):
            kind = serve_line(part)
            OUTCOMES[kind] = OUTCOMES.get(kind, 0) + 1
            count += 1
    return count


FRAMES = [0]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames(), st.integers(0, 1 << 30))
def test_no_line_makes_the_core_fail_or_validate_what_cannot_be_stored(
    frame: bytes, seed: int
) -> None:
    FRAMES[0] += run_frames(frame, seed)


def test_the_fuzzer_ran_its_frames_through_every_outcome() -> None:
    """Runs after the property test (file order): the count is reported, and the generator
    really reached every branch of the server's decision (a fuzzer that only ever produced
    parse errors would prove little)."""
    if FRAMES[0] == 0:
        pytest.skip("the property test did not run (selected alone)")
    tally("fuzzed frames (pure core)", FRAMES[0], test="protocol fuzz")
    print(f"[reliability] outcomes: {OUTCOMES}")
    assert FRAMES[0] >= FRAMES_PER_RUN, f"only {FRAMES[0]} frames"
    for kind in ("malformed", "unknown method", "invalid params", "valid"):
        assert OUTCOMES.get(kind, 0) > 100, OUTCOMES


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", nested(300, b'{"a":', b"}")),
        ("content", b'[{"type":"text","text":"x","n":' + nested(300, b"[", b"]") + b"}]"),
    ],
)
def test_a_value_too_deep_to_store_is_invalid_params_naming_the_field(
    field: str, value: bytes
) -> None:
    line = (
        b'{"jsonrpc":"2.0","id":1,"method":"message.ingest","params":{"channel":"telegram",'
        b'"chatType":"direct","peer":"1",'
        + (b'"text":"x",' if field != "content" else b"")
        + b'"'
        + field.encode()
        + b'":'
        + value
        + b"}}"
    )
    req = protocol.parse_request(line)
    with pytest.raises(RequestError) as e:
        protocol.parse_ingest(req.params)
    assert e.value.code == INVALID_PARAMS and e.value.data == {"field": field}


def test_an_appended_message_too_deep_to_store_is_invalid_params() -> None:
    msg = b'{"role":"assistant","content":"x","details":' + nested(300, b"[", b"]") + b"}"
    req = protocol.parse_request(
        b'{"jsonrpc":"2.0","id":1,"method":"message.append","params":{"sessionKey":"k",'
        b'"message":' + msg + b"}}"
    )
    with pytest.raises(RequestError) as e:
        protocol.parse_append(req.params)
    assert e.value.code == INVALID_PARAMS and e.value.data == {"field": "message"}


def test_a_line_at_the_size_cap_parses() -> None:
    """Giant lines: the server refuses lines over `daemon.maxLineBytes` (1 MiB) unread; lines
    under it reach the core whole, valid or not."""
    cap = 1024 * 1024
    head = b'{"jsonrpc":"2.0","id":1,"method":"message.ingest","params":{"channel":"t",'
    head += b'"chatType":"direct","peer":"1","text":"'
    line = head + b"a" * (cap - len(head) - 3) + b'"}}'
    assert len(line) == cap
    assert serve_line(line) == "valid"
    for junk in (b"\xff" * cap, b"[" * cap, b'"' + b"\\u0000" * (cap // 6)):
        assert serve_line(junk) == "malformed"
