"""A summarizer's settings as plain data: what the config checks and a worker is handed.

Here, below the config and the summarizers both: the config builds them
(`SummarizerConfig.settings()`), the summarizers (daemon/summarizers) run on them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SummarizerSettings:
    """A summarizer's settings as plain data (daemon/config.py `SummarizerConfig.settings()`,
    where they are checked): what a worker process is handed. Unpickling the config's model
    there imported pydantic and the whole config, a third of a flush worker's start."""

    kind: str
    command: tuple[str, ...]
    baseUrl: str | None
    model: str | None
    apiKeyEnv: str | None
    timeoutSeconds: int
    retries: int
    maxOutputTokens: int
