"""Read token usage out of worker responses.

The proxy never parses bodies for routing; this looks only at bodies and events that mention
"usage", so the real KV reuse ratio (cached / prompt tokens) is a Prometheus query away. For a
tenant's tokens per minute (`router.limits`) a request also carries a `ReplyMeter`: it reads
usage the same way and, for a stream that never reports it (the client did not ask with
`stream_options.include_usage`), counts the text relayed, from which the tokens are estimated.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from router.proxy.sse import EventSplitter, json_of

CHARS_PER_TOKEN = 4.0
"""Characters of reply text per token, for replies without usage: OpenAI's rule of thumb for
English text."""


class Usage(NamedTuple):
    """A reply's token counts: prompt, of which served from cache, and completion."""

    prompt: int
    cached: int
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_of(document: Any) -> Usage | None:
    """The usage of an OpenAI-shaped response or stream chunk."""
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
    return Usage(prompt, _count(cached), _count(usage.get("completion_tokens")))


def usage_from_json(body: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def text_length(document: Any) -> int:
    """Characters of text a response or stream chunk carries: each choice's message or delta
    content (and reasoning content), or its `text` (completions)."""
    if not isinstance(document, dict):
        return 0
    choices = document.get("choices")
    if not isinstance(choices, list):
        return 0
    found = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        for part in (choice.get("delta"), choice.get("message"), choice):
            if isinstance(part, dict):
                for key in ("content", "reasoning_content", "text"):
                    value = part.get(key)
                    if isinstance(value, str):
                        found += len(value)
    return found


class UsageSniffer:
    """Finds the usage chunk in a server-sent event stream fed chunk by chunk; with
    `count_text`, also the length of the text the stream carries."""

    __slots__ = ("_count_text", "_events", "text_chars", "usage")

    def __init__(self, count_text: bool = False) -> None:
        self._events = EventSplitter()
        self._count_text = count_text
        self.usage: Usage | None = None
        self.text_chars = 0

    def feed(self, chunk: bytes) -> None:
        events = self._events
        if self._count_text:
            for event in events.feed(chunk):
                self._read(event)
            return
        if not events.pending and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return  # the common case: whole events, none about usage
        for event in events.feed(chunk):
            if b'"usage"' in event:
                self._read(event)

    def _read(self, event: bytes) -> None:
        for document in json_of(event):
            found = usage_of(document)
            if found is not None:
                self.usage = found
            if self._count_text:
                self.text_chars += text_length(document)

    def whole(self, body: bytes) -> None:
        """A whole (not streamed) JSON answer."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        self.usage = usage_of(document) or self.usage
        if self._count_text:
            self.text_chars += text_length(document)


class ReplyMeter:
    """The tokens one request's reply used, as the relay saw them: its usage when the worker
    reported it, else an estimate (`tokens`). Set on the request (`METER`) by whoever counts
    tokens; the forwarder notes the size of the body it sent."""

    __slots__ = ("sent_bytes", "sniffer")

    def __init__(self) -> None:
        self.sniffer = UsageSniffer(count_text=True)
        self.sent_bytes = 0

    def tokens(self, bytes_per_token: float) -> tuple[int, bool]:
        """(tokens, whether they are the worker's own count). Without usage: the prompt as
        the body's bytes at `bytes_per_token`, the completion as the relayed text's characters
        at `CHARS_PER_TOKEN`."""
        usage = self.sniffer.usage
        if usage is not None:
            return usage.total, True
        prompt = math.ceil(self.sent_bytes / bytes_per_token)
        completion = math.ceil(self.sniffer.text_chars / CHARS_PER_TOKEN)
        return prompt + completion, False


METER = web.RequestKey("reply_meter", ReplyMeter)
