"""JSON-RPC 2.0 framing and parameter validation: bytes in, typed requests or errors out.

Pure: no sockets. The server feeds it one line at a time; whatever the bytes, the result is a
request or a `RequestError` carrying the right code, never an unexpected exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from daemon.errors import InvalidParams, InvalidRequest, ParseError, RequestError

RequestId = str | int | None

CHAT_TYPES = ("direct", "group", "channel", "thread")
ROLES = ("user", "assistant", "toolResult")
MAX_ID_LEN = 256
# Levels of arrays and objects in a client's own values (content, metadata, an appended message).
# orjson reads 1024 levels but writes at most 254: a deeper value would pass validation and then
# fail in the committer, when its transcript line is written.
MAX_NESTING = 128


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which costs
# more than the rest of parsing a request (one of these is built per message).
@dataclass(slots=True)
class Request:
    """A well-formed JSON-RPC request; `notification` requests get no answer."""

    id: RequestId
    method: str
    params: dict[str, Any]
    notification: bool = False


def parse_request(line: bytes) -> Request:
    """Parse one line. Raises RequestError; `.request_id` on it is the id when one was readable."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ParseError(f"parse error: {_decode_reason(e)}") from None
    if not isinstance(obj, dict):
        what = "a batch (array)" if isinstance(obj, list) else type(obj).__name__
        raise InvalidRequest(f"expected one JSON-RPC request object per line, got {what}")
    rid = obj.get("id")
    valid_id = rid is None or (isinstance(rid, (str, int)) and not isinstance(rid, bool))
    if not valid_id:
        raise InvalidRequest("id must be a string, an integer or null")
    try:
        if obj.get("jsonrpc") != "2.0":
            raise InvalidRequest('jsonrpc must be "2.0"')
        method = obj.get("method")
        if not isinstance(method, str) or not method:
            raise InvalidRequest("method must be a non-empty string")
        params = obj.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidRequest("params must be an object (named parameters)")
    except RequestError as e:
        e.request_id = rid  # type: ignore[attr-defined]
        raise
    return Request(rid, method, params, notification="id" not in obj)


def _decode_reason(e: orjson.JSONDecodeError) -> str:
    msg = str(e)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        return "the line is not valid UTF-8 JSON"
    return msg.split(":")[0] if msg else "invalid JSON"


def request_id_of(e: BaseException) -> RequestId:
    rid = getattr(e, "request_id", None)
    return rid if isinstance(rid, (str, int)) else None


_NEWLINE = orjson.OPT_APPEND_NEWLINE  # one buffer per answer, not a copy to add the newline


def encode_result(rid: RequestId, result: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result}, option=_NEWLINE)


def encode_error(rid: RequestId, err: RequestError) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": err.to_json()}, option=_NEWLINE)


# ---------------------------------------------------------------------------------------------
# Parameter readers: each names the field it rejects.


class Params:
    """Typed access to a params object; every getter raises InvalidParams naming the field."""

    __slots__ = ("_p", "_seen")

    def __init__(self, params: dict[str, Any]) -> None:
        self._p = params
        self._seen: set[str] = set()

    def text(self, name: str, *, required: bool = False, max_len: int = 4096) -> str | None:
        self._seen.add(name)
        v = self._p.get(name)
        if v is None:
            if required:
                raise InvalidParams(name, "is required (a string)")
            return None
        if not isinstance(v, str):
            raise InvalidParams(name, f"must be a string, got {_kind(v)}")
        if "\x00" in v:
            raise InvalidParams(name, "must not contain NUL characters")
        if len(v) > max_len:
            raise InvalidParams(name, f"must be at most {max_len} characters, got {len(v)}")
        if required and not v:
            raise InvalidParams(name, "must not be empty")
        return v

    def ident(self, name: str, *, required: bool = False) -> str | None:
        """An id that adapters may send as a string or a number (Telegram, Discord ids)."""
        self._seen.add(name)
        v = self._p.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        s = self.text(name, required=required, max_len=MAX_ID_LEN)
        if s is not None and not s.strip():
            raise InvalidParams(name, "must not be blank")
        return s

    def integer(
        self, name: str, *, default: int | None = None, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        self._seen.add(name)
        v = self._p.get(name)
        if v is None:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidParams(name, f"must be an integer, got {_kind(v)}")
        if lo is not None and v < lo:
            raise InvalidParams(name, f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise InvalidParams(name, f"must be at most {hi}, got {v}")
        return v

    def flag(self, name: str, default: bool) -> bool:
        self._seen.add(name)
        v = self._p.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise InvalidParams(name, f"must be true or false, got {_kind(v)}")
        return v

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        """One of `allowed`, or None when absent."""
        v = self.text(name, max_len=64)
        if v is not None and v not in allowed:
            raise InvalidParams(name, f"must be one of {', '.join(allowed)}, got {v!r}")
        return v

    def obj(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        self._seen.add(name)
        v = self._p.get(name)
        if v is None:
            if required:
                raise InvalidParams(name, "is required (an object)")
            return None
        if not isinstance(v, dict):
            raise InvalidParams(name, f"must be an object, got {_kind(v)}")
        return v

    def raw(self, name: str) -> Any:
        self._seen.add(name)
        return self._p.get(name)

    def done(self) -> None:
        """Reject parameters nobody asked for: a typo should not be silently ignored."""
        extra = sorted(set(self._p) - self._seen)
        if extra:
            raise InvalidParams(extra[0], "unknown parameter")


def nesting_ok(value: Any, limit: int = MAX_NESTING) -> bool:
    """True when `value` has at most `limit` levels of arrays and objects (iterative: a deep
    value must not exhaust the Python stack either)."""
    if not isinstance(value, (dict, list)):
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return False
        for c in v.values() if isinstance(v, dict) else v:
            if isinstance(c, (dict, list)):
                stack.append((c, depth + 1))
    return True


def check_nesting(field: str, value: Any) -> None:
    """Raise InvalidParams naming `field` when `value` is nested deeper than MAX_NESTING."""
    if not nesting_ok(value):
        raise InvalidParams(field, f"must not be nested more than {MAX_NESTING} levels deep")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


# ---------------------------------------------------------------------------------------------
# message.ingest


@dataclass(slots=True)
class IngestParams:
    channel: str
    chat_type: str
    peer: str | None
    account_id: str | None
    group_id: str | None
    thread_id: str | None
    agent_id: str | None
    message_id: str | None
    content: str | list[Any]
    timestamp_ms: int | None
    sender_name: str | None
    metadata: dict[str, Any] | None


_INGEST_KEYS = frozenset(
    (
        "channel",
        "chatType",
        "peer",
        "accountId",
        "groupId",
        "threadId",
        "agentId",
        "messageId",
        "text",
        "content",
        "timestamp",
        "senderName",
        "metadata",
    )
)


def _fast_ingest(params: dict[str, Any]) -> IngestParams | None:
    """The common shape (text message, string ids) checked in one pass; None means "let the
    thorough reader decide", which also words any error."""
    g = params.get
    channel, chat_type, text = g("channel"), g("chatType"), g("text")
    if not (params.keys() <= _INGEST_KEYS and type(text) is str and "content" not in params):
        return None
    if type(channel) is not str or not 0 < len(channel) <= 64 or "\x00" in channel:
        return None
    if chat_type not in CHAT_TYPES or "timestamp" in params:
        return None
    peer, account, group = g("peer"), g("accountId"), g("groupId")
    thread, agent, mid = g("threadId"), g("agentId"), g("messageId")
    for v in (peer, account, group, thread, agent, mid):
        if v is not None and (
            type(v) is not str or not 0 < len(v) <= MAX_ID_LEN or "\x00" in v or v.isspace()
        ):
            return None
    sender, metadata = g("senderName"), g("metadata")
    if sender is not None and (type(sender) is not str or len(sender) > 256 or "\x00" in sender):
        return None
    if metadata is not None and (type(metadata) is not dict or not nesting_ok(metadata)):
        return None
    return IngestParams(
        channel, chat_type, peer, account, group, thread, agent, mid, text, None, sender, metadata
    )


def parse_ingest(params: dict[str, Any]) -> IngestParams:
    fast = _fast_ingest(params)
    if fast is not None:
        return fast
    p = Params(params)
    channel = p.text("channel", required=True, max_len=64)
    assert channel is not None
    chat_type = p.text("chatType", required=True, max_len=16)
    if chat_type not in CHAT_TYPES:
        raise InvalidParams(
            "chatType", f"must be one of {', '.join(CHAT_TYPES)}, got {chat_type!r}"
        )
    text = p.raw("text")
    content = p.raw("content")
    if text is not None and content is not None:
        raise InvalidParams("content", "give either text or content, not both")
    body: str | list[Any]
    if text is not None:
        if not isinstance(text, str):
            raise InvalidParams("text", f"must be a string, got {_kind(text)}")
        body = text
    elif content is not None:
        body = validate_content("content", content)
    else:
        raise InvalidParams("text", "is required (a string), or give content blocks")
    ts = p.raw("timestamp")
    out = IngestParams(
        channel=channel,
        chat_type=chat_type,
        peer=p.ident("peer"),
        account_id=p.ident("accountId"),
        group_id=p.ident("groupId"),
        thread_id=p.ident("threadId"),
        agent_id=p.ident("agentId"),
        message_id=p.ident("messageId"),
        content=body,
        timestamp_ms=parse_timestamp("timestamp", ts),
        sender_name=p.text("senderName", max_len=256),
        metadata=p.obj("metadata"),
    )
    p.done()
    check_nesting("metadata", out.metadata)
    return out


def validate_content(field: str, content: Any) -> str | list[Any]:
    """A message body: a string, or a list of blocks each with a string `type`."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParams(field, f"must be a string or an array of blocks, got {_kind(content)}")
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidParams(f"{field}[{i}]", 'must be an object with a string "type"')
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise InvalidParams(f"{field}[{i}].text", "must be a string")
    check_nesting(field, content)
    return content


def parse_timestamp(field: str, v: Any) -> int | None:
    """Epoch milliseconds, or an ISO-8601 string with a zone."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v < 10**14:
            raise InvalidParams(field, f"must be epoch milliseconds, got {v}")
        return v
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParams(field, f"must be epoch ms or ISO-8601, got {v[:40]!r}") from None
        if dt.tzinfo is None:
            raise InvalidParams(field, "an ISO-8601 timestamp needs a zone (e.g. Z)")
        return int(dt.timestamp() * 1000)
    raise InvalidParams(field, f"must be epoch ms or an ISO-8601 string, got {_kind(v)}")


# ---------------------------------------------------------------------------------------------
# message.append


@dataclass(frozen=True, slots=True)
class AppendParams:
    session_key: str
    message: dict[str, Any]


def parse_append(params: dict[str, Any]) -> AppendParams:
    p = Params(params)
    key = p.text("sessionKey", required=True, max_len=1024)
    msg = p.obj("message", required=True)
    p.done()
    assert key is not None and msg is not None
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidParams("message.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if "content" not in msg:
        raise InvalidParams("message.content", "is required (a string or an array of blocks)")
    validate_content("message.content", msg["content"])
    usage = msg.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise InvalidParams("message.usage", f"must be an object, got {_kind(usage)}")
    check_nesting("message", msg)
    return AppendParams(key, msg)


# ---------------------------------------------------------------------------------------------
# reads


@dataclass(frozen=True, slots=True)
class SessionRef:
    session_key: str | None
    session_id: str | None


def parse_session_ref(p: Params) -> SessionRef:
    key = p.text("sessionKey", max_len=1024)
    sid = p.text("sessionId", max_len=128)
    if key is None and sid is None:
        raise InvalidParams("sessionKey", "give sessionKey or sessionId")
    return SessionRef(key, sid)


@dataclass(frozen=True, slots=True)
class HistoryParams:
    ref: SessionRef
    previous: int | None
    limit: int
    before: int | None
    include_tools: bool


def parse_history(params: dict[str, Any]) -> HistoryParams:
    p = Params(params)
    ref = parse_session_ref(p)
    out = HistoryParams(
        ref=ref,
        previous=p.integer("previous", lo=1),
        limit=p.integer("limit", default=50, lo=1, hi=1000) or 50,
        before=p.integer("before", lo=0),
        include_tools=p.flag("includeTools", True),
    )
    p.done()
    return out


@dataclass(frozen=True, slots=True)
class ListParams:
    agent_id: str | None
    active_minutes: int | None
    limit: int


def parse_list(params: dict[str, Any]) -> ListParams:
    p = Params(params)
    out = ListParams(
        agent_id=p.text("agentId", max_len=128),
        active_minutes=p.integer("activeMinutes", lo=1),
        limit=p.integer("limit", default=1000, lo=1, hi=100_000) or 1000,
    )
    p.done()
    return out


def parse_get(params: dict[str, Any]) -> SessionRef:
    p = Params(params)
    ref = parse_session_ref(p)
    p.done()
    return ref


def parse_empty(params: dict[str, Any]) -> dict[str, Any]:
    """For methods without parameters: reject any that are given."""
    Params(params).done()
    return params


# ---------------------------------------------------------------------------------------------
# lifecycle methods


@dataclass(frozen=True, slots=True)
class ArchivedParams:
    agent_id: str | None
    session_key: str | None
    after: int | None
    before: int | None
    limit: int


def parse_archived(params: dict[str, Any]) -> ArchivedParams:
    p = Params(params)
    out = ArchivedParams(
        agent_id=p.text("agentId", max_len=128),
        session_key=p.text("sessionKey", max_len=1024),
        after=parse_timestamp("after", p.raw("after")),
        before=parse_timestamp("before", p.raw("before")),
        limit=p.integer("limit", default=100, lo=1, hi=10_000) or 100,
    )
    p.done()
    return out


@dataclass(frozen=True, slots=True)
class ResetParams:
    session_key: str
    reason: str


RESET_REASONS = ("reset", "new", "daily", "idle", "deleted")


def parse_reset(params: dict[str, Any]) -> ResetParams:
    p = Params(params)
    key = p.text("sessionKey", required=True, max_len=1024)
    reason = p.text("reason", max_len=32) or "reset"
    p.done()
    if reason not in RESET_REASONS:
        raise InvalidParams("reason", f"must be one of {', '.join(RESET_REASONS)}, got {reason!r}")
    assert key is not None
    return ResetParams(key, reason)


def parse_subscribe(params: dict[str, Any], known: tuple[str, ...]) -> frozenset[str]:
    p = Params(params)
    events = p.raw("events")
    p.done()
    if events is None:
        return frozenset(known)
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise InvalidParams("events", "must be an array of event names")
    unknown = sorted(set(events) - set(known))
    if unknown:
        raise InvalidParams("events", f"unknown event {unknown[0]!r}; known: {', '.join(known)}")
    return frozenset(events)


# ---------------------------------------------------------------------------------------------
# memory.search


@dataclass(frozen=True, slots=True)
class SearchParams:
    query: str  # plain language, or FTS5 syntax (words, "phrases", AND/OR/NOT, prefix*)
    agent_id: str | None
    include_sessions: bool
    include_memory: bool
    after: int | None  # epoch ms, inclusive
    before: int | None  # epoch ms, exclusive
    session_id: str | None
    session_key: str | None
    limit: int
    syntax: str = "plain"  # plain | fts5
    recency: bool = True  # newer hits score up to 1.5x (daemon/search/query.py)


SEARCH_SYNTAXES = ("plain", "fts5")


def parse_search(params: dict[str, Any]) -> SearchParams:
    p = Params(params)
    query = p.text("query", required=True, max_len=1000)
    assert query is not None
    if not query.strip():
        raise InvalidParams("query", "must not be blank")
    out = SearchParams(
        query=query,
        agent_id=p.text("agentId", max_len=128),
        include_sessions=p.flag("includeSessions", True),
        include_memory=p.flag("includeMemory", True),
        after=parse_timestamp("after", p.raw("after")),
        before=parse_timestamp("before", p.raw("before")),
        session_id=p.text("sessionId", max_len=128),
        session_key=p.text("sessionKey", max_len=1024),
        limit=p.integer("limit", default=20, lo=1, hi=200) or 20,
        syntax=p.choice("syntax", SEARCH_SYNTAXES) or "plain",
        recency=p.flag("recency", True),
    )
    p.done()
    if not (out.include_sessions or out.include_memory):
        raise InvalidParams(
            "includeSessions", "includeSessions and includeMemory are both false: nothing to search"
        )
    return out


# ---------------------------------------------------------------------------------------------
# compaction methods


@dataclass(frozen=True, slots=True)
class CompactParams:
    session_key: str
    instructions: str | None


def parse_compact(params: dict[str, Any]) -> CompactParams:
    p = Params(params)
    key = p.text("sessionKey", required=True, max_len=1024)
    instructions = p.text("instructions", max_len=4096)
    p.done()
    assert key is not None
    return CompactParams(key, (instructions or "").strip() or None)


def parse_context(params: dict[str, Any]) -> SessionRef:
    """sessions.context {sessionKey | sessionId}: an active session."""
    p = Params(params)
    ref = parse_session_ref(p)
    p.done()
    return ref
