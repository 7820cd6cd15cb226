"""Read token usage (prompt and cached prompt tokens) out of worker responses.

The proxy never parses bodies for routing; this looks only at bodies that mention "usage", so the
real KV reuse ratio (cached / prompt tokens) is a Prometheus query away.
"""

from __future__ import annotations

from typing import Any

import orjson

Usage = tuple[int, int]
MAX_PENDING = 64 * 1024


def usage_of(document: Any) -> Usage | None:
    """(prompt_tokens, cached_tokens) from an OpenAI-shaped response or stream chunk."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    if not isinstance(prompt, int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return prompt, cached if isinstance(cached, int) else 0


def usage_from_json(body: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


class UsageSniffer:
    """Finds the usage chunk in a server-sent event stream fed chunk by chunk."""

    __slots__ = ("_pending", "usage")

    def __init__(self) -> None:
        self._pending = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if not self._pending and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return
        events = (self._pending + chunk).split(b"\n\n")
        tail = events.pop()
        self._pending = tail if len(tail) <= MAX_PENDING else b""
        for event in events:
            if b'"usage"' in event:
                self._read_event(event)

    def _read_event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                found = usage_from_json(line[5:].strip())
                if found is not None:
                    self.usage = found
