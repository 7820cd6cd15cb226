"""Read token usage (prompt and cached prompt tokens) out of worker responses.

The proxy never parses bodies for routing; this looks only at bodies and events that mention
"usage", so the real KV reuse ratio (cached / prompt tokens) is a Prometheus query away.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.proxy.sse import EventSplitter, data_of

Usage = tuple[int, int]


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

    __slots__ = ("_events", "usage")

    def __init__(self) -> None:
        self._events = EventSplitter()
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        events = self._events
        if not events.pending and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return  # the common case: whole events, none about usage
        for event in events.feed(chunk):
            if b'"usage"' in event:
                for data in data_of(event):
                    found = usage_from_json(data)
                    if found is not None:
                        self.usage = found
