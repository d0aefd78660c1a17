"""Every error sessiond raises on purpose, with the JSON-RPC code it maps to.

Caller mistakes (bad params, unknown sessions, senders not allowed) are
`RequestError`s; failures of ours or of the disk are `StorageUnavailable`. Third-party
exceptions are translated where they enter.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAUTHENTICATED = 1001
FORBIDDEN = 1002
NOT_FOUND = 1003
STORAGE_UNAVAILABLE = 1004
SENDER_NOT_ALLOWED = 1005
TOO_LARGE = 1006
WRONG_SHARD = 1007
SERVER_BUSY = -32000


class SessiondError(Exception):
    """Base of every error sessiond raises on purpose."""


class ConfigError(SessiondError):
    """The config file cannot be read, parsed or validated; the message names file and key."""


class StateLocked(SessiondError):
    """Another daemon holds the exclusive lock on the state folder."""


class ListenFailed(SessiondError):
    """A socket of `daemon.listeners` cannot be opened (address in use, path taken)."""


class RequestError(SessiondError):
    """A request cannot be served; carries the JSON-RPC error code and optional data."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ParseError(RequestError):
    """The line is not valid JSON (or not valid UTF-8)."""

    code = PARSE_ERROR


class InvalidRequest(RequestError):
    """The JSON is not a JSON-RPC 2.0 request object."""

    code = INVALID_REQUEST


class MethodNotFound(RequestError):
    """The method name is not one sessiond serves."""

    code = METHOD_NOT_FOUND


class InvalidParams(RequestError):
    """A parameter is missing, of the wrong type or out of range; `data.field` names it."""

    code = INVALID_PARAMS

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", data={"field": field})
        self.field = field


class Unauthenticated(RequestError):
    """The connection has not presented a valid token."""

    code = UNAUTHENTICATED


class Forbidden(RequestError):
    """The caller's role does not allow this method or this agent's data."""

    code = FORBIDDEN


class NotFound(RequestError):
    """The session (or other object) named in the request does not exist."""

    code = NOT_FOUND


class StorageUnavailable(RequestError):
    """Nothing was stored (the disk failed or is full); the caller should retry later."""

    code = STORAGE_UNAVAILABLE


NOTHING_STORED = "nothing was stored, retry"


def storage_unavailable(
    cause: OSError | str, doing: str | None = None, hint: str | None = NOTHING_STORED
) -> StorageUnavailable:
    """The one translation of a failed disk (an OSError, or the store's own word for why it
    stopped) into the answer a request gets: "storage unavailable: [doing: ]why[; hint]"."""
    why = os_reason(cause) if isinstance(cause, OSError) else cause
    if doing:
        why = f"{doing}: {why}"
    return StorageUnavailable(f"storage unavailable: {why}" + (f"; {hint}" if hint else ""))


class SenderNotAllowed(RequestError):
    """The access policy does not allow this sender (or group) on this channel."""

    code = SENDER_NOT_ALLOWED


class TooLarge(RequestError):
    """A request line exceeds the configured maximum size."""

    code = TOO_LARGE


class ServerBusy(RequestError):
    """The connection limit is reached; the connection is closed right after this answer."""

    code = SERVER_BUSY


class SummarizerFailed(SessiondError):
    """A summarizer gave no usable text (timeout, exit code, HTTP error, garbage, an empty or
    template-only summary): the flush or compaction is skipped and retried; nothing is written."""


class WrongShard(RequestError):
    """The message is for an agent another shard (another daemon) owns; `data` names it."""

    code = WRONG_SHARD


def os_reason(e: BaseException) -> str:
    """Why a system call failed, for people: the OSError's strerror ("No space left on device"),
    else the exception's own text."""
    strerror = e.strerror if isinstance(e, OSError) else None
    return strerror or str(e)
