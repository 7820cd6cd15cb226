"""Collect the assistant's reply from a chat completion relayed to the client, and hold back
the end of the stream until the reply is stored.

The response's content type decides how it is read, not how the relay framed it: an event
stream (fed chunk by chunk, events split anywhere) is assembled from its deltas, text and
tool calls; any other body is collected whole, however many chunks it came in, and parsed as
JSON. Only choice 0 is kept. The reply counts only when the relay finished. The stream's
closing `data: [DONE]` is held back from the client until `finish` has handed the reply on,
so a client that sends its next turn as soon as it sees the end reads this one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from router.proxy.sse import EventSplitter, json_of

SSE_DONE = b"data: [DONE]\n\n"
SSE_DONE_CRLF = b"data: [DONE]\r\n\r\n"
EVENT_STREAM = "text/event-stream"


class ReplyCollector:
    """A `ResponseObserver` that rebuilds the assistant message of a chat completion."""

    __slots__ = (
        "_body", "_events", "_finished", "_held", "_on_finish", "_status", "_stream", "_streamed",
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
        self._body: list[bytes] = []
        self._streamed = StreamedMessage()

    def start(self, status: int, content_type: str) -> None:
        self._status, self._stream = status, content_type == EVENT_STREAM

    def feed(self, chunk: bytes) -> bytes:
        """Watch `chunk`; returns what the client may see now (all but a final `[DONE]`)."""
        if not 200 <= self._status < 300:
            return chunk
        if not self._stream:
            self._body.append(chunk)
            return chunk
        for event in self._events.feed(chunk):
            self._read_event(event)
        for done in (SSE_DONE, SSE_DONE_CRLF):
            if chunk.endswith(done):
                self._held = done
                return chunk[: -len(done)]
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
            return self._streamed.message()
        return _message_of(b"".join(self._body))

    def _read_event(self, event: bytes) -> None:
        for document in json_of(event):
            delta = _choice0(document).get("delta")
            if isinstance(delta, dict):
                self._streamed.add(delta)


class StreamedMessage:
    """An assistant message assembled from streamed deltas: text concatenated, tool calls
    merged by `index` as OpenAI streams them (`id`, `function.name` and `function.arguments`
    concatenated, `type` replaced)."""

    __slots__ = ("_calls", "_content", "_role")

    def __init__(self) -> None:
        self._role = "assistant"
        self._content: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("role"), str):
            self._role = delta["role"]
        if isinstance(delta.get("content"), str):
            self._content.append(delta["content"])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._add_call(call)

    def _add_call(self, piece: dict[str, Any]) -> None:
        index = piece.get("index", len(self._calls))
        if not isinstance(index, int):
            return
        call = self._calls.setdefault(index, {"id": "", "type": "function", "function": {}})
        if isinstance(piece.get("id"), str):
            call["id"] += piece["id"]
        if isinstance(piece.get("type"), str):
            call["type"] = piece["type"]
        function = piece.get("function")
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    call["function"][key] = call["function"].get(key, "") + function[key]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self._role, "content": "".join(self._content)}
        if self._calls:
            message["tool_calls"] = [self._calls[i] for i in sorted(self._calls)]
            if not message["content"]:
                del message["content"]
        return message


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
