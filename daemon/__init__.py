"""sessiond: a durable, lossless session store for chat-agent gateways."""

from __future__ import annotations

__version__ = "0.1.0"
