"""The proxy's HTTP/1.1 client: pooled keep-alive connections to workers, parsed by httptools.

A general-purpose client pays for features a reverse proxy never uses on its hot path (cookie
jars, redirects, decompression, per-request timer objects, several layers of stream readers).
This one sends a request it is handed as bytes and parses the answer with `httptools` (llhttp,
the parser Node.js uses) straight into a `Response`: status, headers, and the body as chunks,
de-chunked when the worker used chunked encoding. Reading pauses when a slow client lets more
than `HIGH_WATER` bytes pile up, so a stream never buffers without bound.

Errors say where the exchange failed, which is what the retry decision needs:
`ConnectFailed` (nothing was sent; `refused` when nothing listens), `ClosedBeforeHead` (the
worker took the request and closed without a status line), `ProtocolError`, and
`BodyBroken` (the body stopped short). Waiting for the head is bounded by the caller's
timeout; waiting between body chunks by `idle`.

A pooled connection the worker closed while it sat idle fails the same way as a worker that
dies; such a request is sent once more on a fresh connection before anything is reported.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

HIGH_WATER = 256 * 1024
IDLE_KEEPALIVE = 30.0
_ENC = ("utf-8", "surrogateescape")


class UpstreamFailure(Exception):
    """Base of the client's errors."""


class ConnectFailed(UpstreamFailure):
    """No connection: nothing was sent. `refused` when the port had no listener."""

    def __init__(self, message: str, *, refused: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.timed_out = timed_out


class ClosedBeforeHead(UpstreamFailure):
    """The connection closed or reset before any byte of a response arrived."""


class ProtocolError(UpstreamFailure):
    """The worker's answer is not valid HTTP/1.1."""


class BodyBroken(UpstreamFailure):
    """The response body stopped before its end (connection lost or garbled)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a worker listens: what connections are pooled by."""

    host: str
    port: int
    tls: bool
    host_header: str

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls else 80)
        return cls(host, port, tls, parts.netloc.rpartition("@")[2] or host)


def encode_request(
    method: str, target: str, origin: Origin, headers: CIMultiDict[str], body: bytes
) -> bytes:
    """The request as it goes on the wire: the caller's headers, Host and Content-Length set
    here (the caller must have removed hop-by-hop ones)."""
    text = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    text.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        text.append(f"Content-Length: {len(body)}\r\n")
    text.append("\r\n")
    return "".join(text).encode(*_ENC) + body


class Response:
    """One response read off a pooled connection. Call `release()` (or `close()`) once done."""

    __slots__ = ("_conn", "content_length", "content_type", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        ctype = headers.get("content-type", "")
        self.content_type = ctype.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body (the caller bounds the wait)."""
        conn = self._conn
        parts: list[bytes] = []
        while True:
            parts.extend(conn.take())
            if conn.complete:
                return b"".join(parts)
            await conn.wait_body(None)

    async def chunks(self, idle: float) -> AsyncIterator[bytes]:
        """Body data as it arrives; raises TimeoutError after `idle` seconds with none."""
        conn = self._conn
        while True:
            pending = conn.take()
            if pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                continue
            if conn.complete:
                return
            await conn.wait_body(idle)

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived already."""
        return self._conn.complete

    def release(self) -> None:
        """Give the connection back for reuse if the exchange ended cleanly, else close it."""
        self._conn.finish()

    def close(self) -> None:
        """Drop the connection now (the worker sees it close)."""
        self._conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    def __init__(self, pool: _OriginPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.in_use = False
        self.idle_since = 0.0
        self._head: asyncio.Future[Response] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._framed = True
        self._head_only = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamFailure | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("worker switched protocols; not supported through the proxy"))
        except httptools.HttpParserError as err:
            self._fail(ProtocolError(f"invalid HTTP response: {err}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._head is not None and not self._head.done():
            reason = f": {exc}" if exc else ""
            self._head.set_exception(
                ClosedBeforeHead(f"connection closed before a response{reason}")
            )
            return
        if self._head is not None and not self.complete:
            if not self._framed and exc is None:
                self.complete = True  # a body delimited by the connection's end
            elif self.error is None:
                self.error = BodyBroken(f"connection lost mid-body{f': {exc}' if exc else ''}")
            self.keep_alive = False
            self._wake()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode(*_ENC), value.decode(*_ENC)))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and other interim answers: wait for the real one
            self._headers = []
            return
        headers = CIMultiDict(self._headers)
        self._headers = []
        self._framed = (
            "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        )
        response = Response(self, status, headers)
        if self._head is not None and not self._head.done():
            self._head.set_result(response)
        if self._head_only:
            self.complete = True
            self.keep_alive = False

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
        self.keep_alive = self._parser.should_keep_alive() and not self._head_only
        self._wake()

    # -- used by the pool and the Response -------------------------------------------------
    async def exchange(self, request: bytes, head_only: bool) -> Response:
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._head_only = head_only
        self.transport.write(request)
        try:
            return await self._head
        except BaseException:  # refused, timed out or cancelled: this connection is done
            self.abort()
            raise

    def take(self) -> list[bytes]:
        if self.error is not None:
            raise self.error
        if not self._body:
            return []
        chunks = list(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    async def wait_body(self, idle: float | None) -> None:
        waiter = self._waiter = self._loop.create_future()
        if idle is None:
            await waiter
            return
        handle = self._loop.call_later(idle, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()

    def finish(self) -> None:
        if self.complete and self.keep_alive and not self.closed and self.error is None:
            self._reset()
            self._pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()
        self.closed = True
        self._pool.forget(self)
        self._pool.release_slot(self)

    def _reset(self) -> None:
        self._head = None
        self._waiter = None
        self._body.clear()
        self._buffered = 0
        self.complete = False
        self.keep_alive = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamFailure) -> None:
        self.keep_alive = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        else:
            self.error = BodyBroken(str(error))
            self._wake()
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _OriginPool:
    """The connections to one worker: idle ones most recently used first, and a cap on the
    exchanges in progress (`limit`, 0 for none) that later requests queue behind."""

    def __init__(
        self, origin: Origin, loop: asyncio.AbstractEventLoop, limit: int, max_idle: int
    ) -> None:
        self.origin = origin
        self.loop = loop
        self.limit = limit
        self.max_idle = max_idle
        self.idle: list[_Connection] = []
        self.active = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire_slot(self) -> None:
        while self.limit and self.active >= self.limit:
            ticket = self.loop.create_future()
            self._queue.append(ticket)
            try:
                await ticket
            except BaseException:
                if not ticket.cancelled() and ticket.done():
                    self._pass_on()  # woken and cancelled at once: hand the turn on
                raise
        self.active += 1

    def release_slot(self, conn: _Connection | None = None) -> None:
        if conn is not None:
            if not conn.in_use:
                return
            conn.in_use = False
        self.active -= 1
        self._pass_on()

    def _pass_on(self) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return

    def forget(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def put_back(self, conn: _Connection) -> None:
        self.release_slot(conn)
        if len(self.idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > IDLE_KEEPALIVE:
                conn.abort()
                continue
            return conn
        return None


class UpstreamClient:
    """Keep-alive connections to every worker; one per app, closed with it."""

    def __init__(
        self, *, connect_timeout: float, max_per_worker: int = 0, max_idle_per_worker: int = 256
    ) -> None:
        self._connect_timeout = connect_timeout
        self._limit = max_per_worker
        self._max_idle = max_idle_per_worker
        self._pools: dict[str, _OriginPool] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(
        self, url: str, method: str, target: str, headers: CIMultiDict[str], body: bytes
    ) -> Response:
        """Send one request to the worker at `url` and return once the response head is in.

        The caller bounds the whole wait (connect + head) with its own timeout."""
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = _OriginPool(
                Origin.from_url(url), asyncio.get_running_loop(), self._limit, self._max_idle
            )
        wire = encode_request(method, target, pool.origin, headers, body)
        head_only = method == "HEAD"
        await pool.acquire_slot()
        conn = pool.take_idle()
        if conn is not None:
            conn.in_use = True
            try:
                return await conn.exchange(wire, head_only)
            except ClosedBeforeHead:
                await pool.acquire_slot()  # closed while idle: the worker never saw the request
        try:
            conn = await self._connect(pool)
        except BaseException:
            pool.release_slot()
            raise
        conn.in_use = True
        return await conn.exchange(wire, head_only)

    async def _connect(self, pool: _OriginPool) -> _Connection:
        origin = pool.origin
        tls = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await pool.loop.create_connection(
                    lambda: _Connection(pool), origin.host, origin.port, ssl=tls
                )
        except TimeoutError:
            raise ConnectFailed(
                f"no connection within {self._connect_timeout}s", refused=False, timed_out=True
            ) from None
        except ConnectionRefusedError:
            raise ConnectFailed("connection refused", refused=True) from None
        except OSError as err:
            raise ConnectFailed(err.strerror or str(err), refused=False) from None
        return conn

    async def close(self) -> None:
        for pool in self._pools.values():
            for conn in list(pool.idle):
                conn.abort()
            pool.idle.clear()
        self._pools.clear()
