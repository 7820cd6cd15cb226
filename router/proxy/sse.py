"""Server-sent events split out of a byte stream that may be cut anywhere.

The one parser the relay's taps share (usage sniffing, reply collection): complete events come
out as they close (a blank line: `\\n\\n`, or `\\r\\n\\r\\n` as servers built on sse-starlette
frame them, the boundaries the transcript also takes), an unfinished one waits for the next
chunk, and an event that grows past `MAX_PENDING` without closing is dropped rather than
buffered without bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

MAX_PENDING = 64 * 1024
DONE = b"[DONE]"
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n")


class EventSplitter:
    """Feed chunks, get back the events they complete."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        events = _BOUNDARY.split(data) if b"\r\n\r\n" in data else data.split(b"\n\n")
        tail = events.pop()
        self._pending = tail if len(tail) <= MAX_PENDING else b""
        return events

    def flush(self) -> list[bytes]:
        """The unfinished last event, once the stream has ended."""
        tail, self._pending = self._pending, b""
        return [tail] if tail else []


def data_of(event: bytes) -> Iterator[bytes]:
    """The payload of each `data:` line of one event, `[DONE]` included."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip()


def json_of(event: bytes) -> Iterator[Any]:
    """The JSON document of each `data:` line of one event; `[DONE]` and payloads that are not
    JSON are passed over."""
    for data in data_of(event):
        if data == DONE:
            continue
        try:
            yield orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
