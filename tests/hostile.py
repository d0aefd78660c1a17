"""Hostile frames for the protocol fuzzers (tests/test_fuzz_protocol.py, the pure core) and the
end-to-end runs against a real socket (tests/e2e/test_hostile_clients.py).

Three sources of lines: JSON text with values the standard encoders never produce (integers
beyond 64 bits, lone surrogates, NUL, invalid UTF-8, 1000 levels of nesting), byte mutations of a
frame, and splices that replace one value of a decodable frame, so that the structure survives
and the frame reaches parameter validation (where the interesting bugs are).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson

from daemon.core import protocol
from daemon.errors import RequestError
from daemon.methods import METHODS

# Every method's parser, from the server's own table (daemon/methods.py).
PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {n: m.parse for n, m in METHODS.items()}
KEYS = sorted(
    {
        *protocol._INGEST_KEYS,
        "sessionKey",
        "sessionId",
        "message",
        "role",
        "content",
        "type",
        "text",
        "usage",
        "limit",
        "before",
        "after",
        "previous",
        "includeTools",
        "agentId",
        "activeMinutes",
        "reason",
        "events",
        "query",
        "instructions",
        "jsonrpc",
        "id",
        "method",
        "params",
    }
)

# JSON text the standard encoders never produce, but a hostile client can send.
HOSTILE_ATOMS = [
    b"1" * 30,  # beyond 64 bits: orjson reads it as a float
    b"-" + b"9" * 25,
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1" * 5000,  # more digits than Python's int-to-str limit
    b"1e999",
    b"-1e999",
    b"1.0e-400",
    b"-0",
    b"NaN",
    b"Infinity",
    b'"\\ud800"',  # lone high surrogate (escaped)
    b'"\\udc00x"',  # lone low surrogate
    b'"\\udbff\\udfff"',  # a valid pair
    b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8 (invalid)
    b'"\xff\xfe"',
    b'"\xc0\xaf"',  # overlong encoding
    b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
    b'"a\\u0000b"',  # NUL, escaped
    b'"a\x00b"',  # NUL, raw (invalid inside a JSON string)
    b'"\\u0000"',
    b'"  "',
    b'""',
    b'"direct"',
    b'"text"',
    b'"user"',
    b'"telegram"',
    b'"agent:main:main"',
    b'"0001-01-01T00:00:00+23:59"',
    b'"9999-12-31T23:59:59-23:59"',
    b'"2026-11-17T18:15:00.209Z"',
    b'"2026-13-45T99:99:99Z"',
    b'"../../etc/passwd"',
    b"true",
    b"false",
    b"null",
    b"{}",
    b"[]",
    b"0",
    b"99999999999999",
    b"100000000000000",
]


def nested(depth: int, opener: bytes, closer: bytes, core: bytes = b"1") -> bytes:
    return opener * depth + core + closer * depth


INGEST_BASE = {"channel": b'"telegram"', "chatType": b'"direct"', "peer": b'"42"', "text": b'"hi"'}
APPEND_BASE = {
    "sessionKey": b'"agent:main:main"',
    "message": b'{"role":"assistant","content":"x"}',
}
# Where a client's own structures go: the values most worth making hostile.
FREE_FORM = ["metadata", "content", "message", "text", "peer", "messageId", "timestamp"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three byte-level mutations: flip, insert, delete, duplicate, splice an atom."""
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        _mutate_once(rng, b)
    return bytes(b)


def _mutate_once(rng: random.Random, b: bytearray) -> None:
    op = rng.randrange(6)
    pos = rng.randrange(len(b) + 1)
    if op == 0 and b:
        b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[pos:pos] = bytes([rng.randrange(256)])
    elif op == 2 and b:
        del b[pos : pos + rng.randrange(1, 8)]
    elif op == 3 and b:
        end = min(len(b), pos + rng.randrange(1, 32))
        b[pos:pos] = b[pos:end]
    elif op == 4:
        b[pos:pos] = rng.choice(HOSTILE_ATOMS)[:64]
    else:
        b[pos:pos] = rng.choice([b"\x00", b"\xff", b"\xed\xa0\x80", b"\\u", b'"', b"\r", b"["])


HOLE = b'"@@hole-7f3a9c@@"'
DEEP_VALUES = [
    nested(300, b'{"a":', b"}"),
    nested(300, b"[", b"]"),
    nested(120, b'{"a":[', b"]}"),
    b'[{"type":"text","text":"x","n":' + nested(260, b"[", b"]") + b"}]",
]
SPLICE_VALUES = [
    *HOSTILE_ATOMS,
    b'[{"type":"text","text":"ok"},{"type":"image","data":"..."}]',
    b'{"role":"assistant","content":"x","usage":{"totalTokens":12}}',
    b'{"k":"v","n":[1,2,{"x":null}]}',
    b'"a perfectly ordinary value"',
    b"12345",
]


def containers(rng: random.Random, obj: Any, depth: int = 0) -> list[tuple[Any, Any]]:
    """(container, key) pairs of a decoded request, a few levels down: where to splice."""
    out: list[tuple[Any, Any]] = []
    if depth > 4:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            out.extend(containers(rng, v, depth + 1))
        out.append((obj, rng.choice(FREE_FORM if rng.random() < 0.5 else KEYS)))  # a new key
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            out.extend(containers(rng, v, depth + 1))
    return out


def splice(rng: random.Random, seed_frame: bytes) -> bytes | None:
    """Replace one value of a decodable frame (or add a key) with hostile JSON text: the
    structure stays valid, so the frame reaches parameter validation."""
    try:
        obj = orjson.loads(seed_frame)
    except orjson.JSONDecodeError:
        return None
    spots = containers(rng, obj)
    if not spots:
        return None
    container, key = rng.choice(spots)
    container[key] = HOLE.strip(b'"').decode()
    try:
        text = orjson.dumps(obj)
    except TypeError:  # deeper than orjson writes: leave this frame to the byte mutations
        return None
    value = rng.choice(DEEP_VALUES if rng.random() < 0.2 else SPLICE_VALUES)
    return text.replace(HOLE, value, 1)


BASE_FRAMES = [
    b'{"jsonrpc":"2.0","id":1,"method":"message.ingest","params":{"channel":"telegram",'
    b'"chatType":"direct","peer":"42","text":"hi","messageId":"m1","metadata":{"k":[1,{"x":2}]}}}',
    b'{"jsonrpc":"2.0","id":"a","method":"message.ingest","params":{"channel":"slack",'
    b'"chatType":"thread","groupId":"C1","threadId":"T1","peer":"U1",'
    b'"content":[{"type":"text","text":"x"}],"timestamp":"2026-11-17T18:15:00.209Z"}}',
    b'{"jsonrpc":"2.0","id":2,"method":"message.append","params":{"sessionKey":'
    b'"agent:main:main","message":{"role":"assistant","content":"x","usage":{"totalTokens":3}}}}',
    b'{"jsonrpc":"2.0","id":3,"method":"sessions.history","params":{"sessionKey":'
    b'"agent:main:main","limit":5,"includeTools":false}}',
    b'{"jsonrpc":"2.0","id":4,"method":"sessions.list","params":{"limit":3,"activeMinutes":5}}',
    b'{"jsonrpc":"2.0","id":5,"method":"sessions.get","params":{"sessionKey":"agent:main:main"}}',
    b'{"jsonrpc":"2.0","id":6,"method":"status"}',
    b'{"jsonrpc":"2.0","id":7,"method":"sessions.archived","params":{"limit":2}}',
    b'{"jsonrpc":"2.0","id":8,"method":"memory.search","params":{"query":"hi","limit":2}}',
    b'{"jsonrpc":"2.0","method":"status"}',
]


def hostile_lines(rng: random.Random, n: int) -> list[bytes]:
    """`n` single lines (no newline inside): spliced and mutated base frames, hostile atoms."""
    out: list[bytes] = []
    while len(out) < n:
        base = rng.choice(BASE_FRAMES)
        r = rng.random()
        if r < 0.45:
            line = splice(rng, base) or base
        elif r < 0.9:
            line = mutate(rng, base)
        else:
            line = rng.choice(HOSTILE_ATOMS + DEEP_VALUES)
        out.append(line.replace(b"\n", b" "))
    return out


def answer_expected(line: bytes) -> tuple[bool, protocol.RequestId]:
    """Whether the server answers this line, and with which id (as server.handle_line does:
    a trailing CR is dropped, blank lines and notifications get no answer)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return False, None
    try:
        req = protocol.parse_request(line)
    except RequestError as e:
        return True, protocol.request_id_of(e)
    return (not req.notification), req.id
