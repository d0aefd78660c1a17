"""The openai summarizer: any OpenAI-compatible chat-completions endpoint, through httpx.

POST `<baseUrl>/chat/completions` with {model, messages: [system: the prompt, user: previous
summary + transcript + instructions], max_tokens, temperature 0}; the answer is
`choices[0].message.content`. The API key, when one is needed, is read from the environment
variable named by `apiKeyEnv` at each call (never from the config file, never logged).

Each attempt has `timeoutSeconds` in all (httpx's own timeouts are per phase; a server that
trickles bytes would never trip them). Timeouts, connection errors, 408/409/425/429/5xx and
unreadable answers are retried `retries` times with exponential backoff (a Retry-After header
is honoured up to a limit); other 4xx are not (the request itself is wrong). httpx errors are
translated into SummarizerFailed here, where they enter.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import httpx
import orjson

from daemon.errors import SummarizerFailed
from daemon.summarizers import SummarizerSettings, SummaryRequest

RETRY_STATUS = frozenset({408, 409, 425, 429})
BACKOFF_BASE = 0.5  # seconds before the first retry; doubled for each further one
BACKOFF_MAX = 8.0
RETRY_AFTER_MAX = 30.0
EXCERPT = 200


class OpenAISummarizer:
    kind = "openai"

    def __init__(self, cfg: SummarizerSettings) -> None:
        assert cfg.baseUrl is not None and cfg.model is not None  # checked by the config
        self.url = cfg.baseUrl.rstrip("/") + "/chat/completions"
        self.model = cfg.model
        self.key_env = cfg.apiKeyEnv
        self.timeout = float(cfg.timeoutSeconds)
        self.retries = cfg.retries
        self.max_tokens = cfg.maxOutputTokens

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.key_env:
            key = os.environ.get(self.key_env)
            if not key:
                raise SummarizerFailed(
                    f"the environment variable {self.key_env} (summarizer.apiKeyEnv) is not set"
                )
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def summarize(self, req: SummaryRequest) -> str:
        headers = self._headers()
        body = orjson.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": req.prompt},
                    {"role": "user", "content": req.user_text()},
                ],
                "max_tokens": self.max_tokens,
                "temperature": 0,
            }
        )
        problem = "no attempt was made"
        delay = 0.0
        attempts = self.retries + 1
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for attempt in range(attempts):
                if attempt:
                    await anyio.sleep(delay)
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
                try:
                    with anyio.fail_after(self.timeout):
                        resp = await client.post(self.url, content=body, headers=headers)
                        content = await resp.aread()
                except TimeoutError:
                    problem = f"no answer within {self.timeout:g}s"
                    continue
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                    continue
                status = resp.status_code
                if status in RETRY_STATUS or status >= 500:
                    problem = f"HTTP {status}{_excerpt(content)}"
                    delay = max(delay, _retry_after(resp.headers.get("retry-after")))
                    continue
                if status >= 400:
                    raise SummarizerFailed(f"HTTP {status} from {self.url}{_excerpt(content)}")
                try:
                    return parse_answer(content)
                except ValueError as e:
                    problem = f"unreadable answer: {e}"
                    continue
        raise SummarizerFailed(
            f"{problem} ({attempts} attempt{'s' if attempts != 1 else ''} to {self.url})"
        )


def parse_answer(content: bytes) -> str:
    """`choices[0].message.content` of a chat-completions answer (a string, or text parts).
    Raises ValueError saying what is missing."""
    try:
        doc: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise ValueError(f"not JSON{_excerpt(content)}") from None
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("choices[0] has no message")
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(
            p["text"] for p in text if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if not isinstance(text, str):
        raise ValueError("choices[0].message.content is not text")
    return text


def _excerpt(content: bytes) -> str:
    text = " ".join(content[:EXCERPT].decode("utf-8", "replace").split())
    return f": {text}" if text else ""


def _retry_after(value: str | None) -> float:
    try:
        return min(RETRY_AFTER_MAX, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0
