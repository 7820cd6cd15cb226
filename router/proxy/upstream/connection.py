"""One keep-alive HTTP/1.1 connection to a worker, parsed by httptools, one exchange at a time.

The connection knows nothing of any pool: it writes a request, parses the answer into a head and
body chunks, and says through `state` whether it is idle, busy or gone. Reading pauses when
more than `HIGH_WATER` bytes of body wait unread, and resumes when they are taken, so a slow
reader never makes a stream buffer without bound. A response head (interim 1xx heads
included) over `MAX_HEAD_BYTES` is a protocol error: httptools itself has no bound, and would
buffer a header line as long as the worker sends it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from typing import Any

import httptools
from multidict import CIMultiDict

from router.proxy.upstream.errors import (
    BodyBroken,
    ClosedBeforeHead,
    HeadTooLarge,
    ProtocolError,
    UpstreamFailure,
)
from router.proxy.upstream.request import WIRE_TEXT

HIGH_WATER = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
"""The most a response head may take: status line and headers, counted as on the wire."""


class ConnectionState(enum.Enum):
    IDLE = "idle"
    """Open, no exchange in progress: a request may be written."""
    ACTIVE = "active"
    """A request was written; the exchange lasts until whoever holds the connection ends it."""
    CLOSED = "closed"
    """Aborted here or closed by the worker: never usable again."""


# the members as plain names: an Enum attribute lookup costs ~10x a global on Python 3.11
IDLE = ConnectionState.IDLE
ACTIVE = ConnectionState.ACTIVE
CLOSED = ConnectionState.CLOSED


class Connection(asyncio.Protocol):
    """An asyncio protocol carrying one exchange at a time: `exchange()` for the head, then
    `take()` / `wait_body()` for the body, then `reset()` to reuse it or `abort()` to drop it.

    `reusable` is True only while a response has ended cleanly and the worker keeps the
    connection open; it turns False when the connection closes or the next exchange starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.state = IDLE
        self.idle_since = 0.0
        self.status = 0
        self._head: asyncio.Future[CIMultiDict[str]] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._framed = True
        self._head_only = False
        self._head_bytes = 0
        self._unanswered = 0
        self.complete = False
        self.reusable = False
        self.error: UpstreamFailure | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.state is IDLE:  # nothing was asked: the worker is out of step (a 408 say)
            self.abort()
            return
        head = self._head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("worker switched protocols; not supported through the proxy"))
            return
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, HeadTooLarge):
                self._fail(err.__context__)
            else:
                self._fail(ProtocolError(f"invalid HTTP response: {err}"))
            return
        if head is not None and not head.done():
            # every byte so far belongs to a head (interim ones included): this bounds what
            # httptools buffers of a header line that never ends
            self._unanswered += len(data)
            if self._unanswered > MAX_HEAD_BYTES:
                self._fail(HeadTooLarge(f"response head over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.reusable = False
        head = self._head
        if head is None:
            return
        if not head.done():
            reason = f": {exc}" if exc else ""
            head.set_exception(ClosedBeforeHead(f"connection closed before a response{reason}"))
            return
        if not self.complete:
            if not self._framed and exc is None:
                self.complete = True  # a body delimited by the connection's end
            elif self.error is None:
                self.error = BodyBroken(f"connection lost mid-body{f': {exc}' if exc else ''}")
            self._wake()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head_bytes += 17  # "HTTP/1.1 200 ", CRLF, and the blank line's CRLF

    def on_status(self, reason: bytes) -> None:
        self._head_bytes += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_bytes > MAX_HEAD_BYTES:  # raised into the parser: feed_data stops
            raise HeadTooLarge(f"response head over {MAX_HEAD_BYTES} bytes")
        self._headers.append((name.decode(*WIRE_TEXT), value.decode(*WIRE_TEXT)))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and other interim answers: wait for the real one
            self._headers = []
            return
        headers = CIMultiDict(self._headers)
        self._headers = []
        self._head_bytes = 0  # chunked trailers, if any, are held to the same bound
        self._framed = (
            "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        )
        self.status = status
        head = self._head
        if head is not None and not head.done():
            head.set_result(headers)
        if self._head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        self.complete = True
        self.reusable = (
            self.state is ACTIVE and self._parser.should_keep_alive() and not self._head_only
        )
        self._wake()

    # -- one exchange ----------------------------------------------------------------------
    async def exchange(
        self, request: bytes, head_only: bool, deadline: float | None = None
    ) -> CIMultiDict[str]:
        """Write `request` and return the response's headers (`status` is set with them);
        TimeoutError when they are not in by `deadline` (loop time, None: no bound).

        If the wait ends any other way (closed, garbled, timed out, cancelled) the connection
        aborts itself, since it would be out of step with the worker."""
        if self.state is not IDLE or self.transport is None:
            raise ClosedBeforeHead("connection closed before the request was sent")
        self.state = ACTIVE
        head = self._head = self._loop.create_future()
        self._head_only = head_only
        self._head_bytes = self._unanswered = 0
        self.transport.write(request)
        # one timer on the head's future: a tenth of what `asyncio.timeout` costs per request
        timer = None if deadline is None else self._loop.call_at(deadline, _expire, head)
        try:
            return await head
        except BaseException:
            self.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def take(self) -> list[bytes]:
        """The body chunks that arrived since the last call; raises the body's error if any."""
        if self.error is not None:
            raise self.error
        if not self._body:
            return []
        chunks = list(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and self.state is not CLOSED:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    async def wait_body(self, idle: float | None) -> None:
        """Until more body, its end or its failure; TimeoutError after `idle` seconds."""
        waiter = self._waiter = self._loop.create_future()
        if idle is None:
            await waiter
            return
        handle = self._loop.call_later(idle, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()

    def reset(self) -> None:
        """Ready for the next exchange; only after one that was `reusable`."""
        self.state = IDLE
        self.idle_since = time.monotonic()
        if self._paused and self.transport is not None:  # released with its body unread
            self._paused = False
            self.transport.resume_reading()
        self._head = None
        self._waiter = None
        self._body.clear()
        self._buffered = 0
        self.complete = False
        self.reusable = False

    def abort(self) -> None:
        """Close now (the worker sees a reset); any later call is a no-op."""
        self.reusable = False
        if self.state is not CLOSED:
            self.state = CLOSED
            if self.transport is not None:
                self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamFailure) -> None:
        self.reusable = False
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        else:
            self.error = BodyBroken(str(error))
            self._wake()
        self.abort()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
