"""Collect the assistant's reply from a chat completion relayed to the client, and hold back
the end of the stream until the reply is stored.

Works on a buffered JSON body or on a server-sent event stream fed chunk by chunk (events may
be split anywhere); only choice 0 is kept. The reply counts only when the relay finished. The
stream's closing `data: [DONE]` is held back from the client until `finish` has handed the
reply on, so a client that sends its next turn as soon as it sees the end reads this one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from router.proxy.sse import DONE, EventSplitter, data_of

SSE_DONE = b"data: [DONE]\n\n"


class ReplyCollector:
    """A `ResponseObserver` that rebuilds the assistant message of a chat completion."""

    __slots__ = (
        "_buffer", "_content", "_events", "_finished", "_held", "_on_finish", "_role",
        "_status", "_stream",
    )  # fmt: skip

    def __init__(
        self, on_finish: Callable[[dict[str, Any] | None], Awaitable[None]] | None = None
    ) -> None:
        self._on_finish = on_finish
        self._status = 0
        self._stream = False
        self._finished = False
        self._held = b""
        self._events = EventSplitter()
        self._buffer: list[bytes] = []
        self._content: list[str] = []
        self._role = "assistant"

    def start(self, status: int, streaming: bool) -> None:
        self._status, self._stream = status, streaming

    def feed(self, chunk: bytes) -> bytes:
        """Watch `chunk`; returns what the client may see now (all but a final `[DONE]`)."""
        if not 200 <= self._status < 300:
            return chunk
        if not self._stream:
            self._buffer.append(chunk)
            return chunk
        for event in self._events.feed(chunk):
            self._read_event(event)
        if chunk.endswith(SSE_DONE):
            self._held = SSE_DONE
            return chunk[: -len(SSE_DONE)]
        return chunk

    async def finish(self) -> bytes:
        """The answer is complete: hand the reply (None if it failed) to `on_finish`, then
        give back what was held."""
        self._finished = True
        if self._on_finish is not None:
            await self._on_finish(self.message())
        held, self._held = self._held, b""
        return held

    def message(self) -> dict[str, Any] | None:
        """The assistant message, or None if the response failed or never completed."""
        if not self._finished or not 200 <= self._status < 300:
            return None
        if self._stream:
            for event in self._events.flush():
                self._read_event(event)
            return {"role": self._role, "content": "".join(self._content)}
        return _message_of(b"".join(self._buffer))

    def _read_event(self, event: bytes) -> None:
        for data in data_of(event):
            if data == DONE:
                continue
            try:
                document = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            delta = _choice0(document).get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("role"), str):
                    self._role = delta["role"]
                if isinstance(delta.get("content"), str):
                    self._content.append(delta["content"])


def _choice0(document: Any) -> dict[str, Any]:
    choices = document.get("choices") if isinstance(document, dict) else None
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                return choice
    return {}


def _message_of(body: bytes) -> dict[str, Any] | None:
    try:
        message = _choice0(orjson.loads(body)).get("message")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    kept = ("role", "content", "tool_calls", "name")
    return {k: v for k, v in message.items() if k in kept and v not in (None, [])}
