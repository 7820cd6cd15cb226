"""Limits on client connections that aiohttp's server does not have: a whole request head within
`limits.header_timeout`, and at most `limits.max_client_connections` open at once.

aiohttp closes an idle keep-alive connection after its `keepalive_timeout` (set from
`limits.keepalive_timeout` when the server is built) and bounds header sizes, but nothing
bounds how long a request head may take: a client sending one header byte every few seconds
holds its connection, and a file descriptor, forever. Each accepted connection's protocol
(aiohttp's `RequestHandler`) is wrapped in a `GuardedConnection` that forwards every protocol
call to it unchanged and keeps a timer while a head is due:

- armed when the connection is accepted (the first head), and when bytes of a new head arrive
  on an idle keep-alive connection (bytes after the previous request's body);
- disarmed when a request starts (the `admission` middleware tells it);
- on expiry the connection is closed, without an answer: nothing was asked yet, and an
  unsolicited answer could be read as the answer to a later request.

A head sent while the previous answer is still being produced (HTTP pipelining) gets its
timer when that answer is done. While an answer is still being written out, the timer waits.

Past `max_client_connections`, a new connection is still accepted and read (so its client
gets an answer instead of a reset), but every request on it is answered `503` with
`Connection: close`, `Retry-After: 1` and the OpenAI error code `too_many_connections`
(`/healthz` excepted, so a liveness probe does not restart a busy router), and one log line
per second at most says so. The connections already open are served as usual.

The body of a request is bounded where it is read (`router.http.common.read_body`,
`limits.body_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import StreamReader, web

from router.config import LimitSettings
from router.http.client_errors import RateLimitedLog

if TYPE_CHECKING:
    from router.metrics import Metrics

log = logging.getLogger("kvrouter.clients")

FD_RESERVE = 512
"""File descriptors kept for everything but client connections: upstream pools, Redis, probes,
the listening sockets, logs."""


class GuardedConnection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the head timer around it."""

    __slots__ = (
        "_body", "_busy", "_due", "_guard", "_inner", "_loop", "_pipelined", "_timer",
        "_timer_at", "refused", "transport",
    )  # fmt: skip

    def __init__(self, guard: ClientGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: float | None = None  # when the head that is due must be whole (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._body: StreamReader | None = None  # the last request's (not the request: its
        self._busy = False  # body, once read, would stay in memory while the connection idles)
        self._pipelined = False
        self.refused = False

    # -- asyncio.Protocol, forwarded -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.refused = self._guard.joined(self)
        self._arm()  # the first head is due from the accept
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        body = self._body
        if body is None or body.is_eof():  # bytes of a new head, not of the last request's body
            if self._busy:
                self._pipelined = True
            elif self._due is None:
                self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.left(self)
        self._body = None
        self.transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- requests (from the middleware) ----------------------------------------------------
    def request_started(self, request: web.BaseRequest) -> None:
        self._disarm()
        self._body = request.content
        self._busy = True
        self._pipelined = False

    def request_finished(self) -> None:
        self._busy = False
        if self._pipelined:  # bytes of the next head came while this one was served
            self._arm()

    # -- the head timer --------------------------------------------------------------------
    # Armed and disarmed once per request, so it is lazy: arming sets when the head is due and
    # starts a timer only if none is running; disarming only forgets the due time. A timer that
    # fires with nothing due stops; with a head due later (armed again since) it waits for it.
    def _arm(self) -> None:
        loop = self._loop
        if self._due is None and self.transport is not None and loop is not None:
            self._due = due = loop.time() + self._guard.header_timeout
            timer = self._timer
            if timer is not None and self._timer_at > due:  # the timeout was shortened
                timer.cancel()
                timer = None
            if timer is None:
                self._timer, self._timer_at = loop.call_at(due, self._expired), due

    def _disarm(self) -> None:
        self._due = None

    def _expired(self) -> None:
        self._timer = None
        due, loop = self._due, self._loop
        if due is None or loop is None:
            return
        if due - loop.time() > _TIMER_SLACK:  # armed again since this timer was started
            self._timer, self._timer_at = loop.call_at(due, self._expired), due
            return
        self._due = None
        transport = self.transport
        if self._busy or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():  # an answer is still going out: wait for it
            self._arm()
            return
        self._guard.timed_out()
        transport.close()


_TIMER_SLACK = 0.001
"""The event loop's clock counts milliseconds: a timer may fire up to this early."""


class ClientGuard:
    """Counts client connections and holds the limits they are checked against; `reconfigure`
    applies new limits to connections accepted from then on (and to heads due from then)."""

    def __init__(self, limits: LimitSettings, metrics: Metrics) -> None:
        self.open = 0
        self._connections: dict[asyncio.Protocol, GuardedConnection] = {}
        self._metrics = metrics
        self._limited = RateLimitedLog(log)
        self.header_timeout = limits.header_timeout
        self.cap = 0
        self.reconfigure(limits)

    def reconfigure(self, limits: LimitSettings) -> None:
        self.header_timeout = limits.header_timeout
        self.cap = fd_budget(limits.max_client_connections)

    def protocol_factory(
        self, make: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """Wraps the server's protocol factory (aiohttp's `Server`)."""
        return lambda: GuardedConnection(self, make())

    def of(self, request: web.BaseRequest) -> GuardedConnection | None:
        """The guarded connection a request came on; None for a server built without one."""
        return self._connections.get(request.protocol)

    def joined(self, conn: GuardedConnection) -> bool:
        """Counts a new connection; True when it is past the cap (refused)."""
        self.open += 1
        self._connections[conn._inner] = conn
        self._metrics.client_connections.set(self.open)
        refused = 0 < self.cap < self.open
        if refused:
            self._limited.log(
                logging.WARNING, "cap",
                "refusing client connections: %d open, over limits.max_client_connections "
                "(%d); each request on them is answered 503", self.open, self.cap,
            )  # fmt: skip
        return refused

    def left(self, conn: GuardedConnection) -> None:
        if self._connections.pop(conn._inner, None) is not None:
            self.open -= 1
            self._metrics.client_connections.set(self.open)

    def timed_out(self) -> None:
        self._metrics.client_timeouts.labels("header").inc()
        self._limited.log(
            logging.INFO, "header",
            "closed a client connection: no whole request head within %ss "
            "(limits.header_timeout)", self.header_timeout,
        )  # fmt: skip


class ClientSite(web.BaseSite):
    """aiohttp's TCP site, with every accepted connection guarded by `guard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        guard: ClientGuard,
        host: str,
        port: int,
        backlog: int,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._guard = guard
        self._host = host
        self._port = port
        self._reuse_port = reuse_port  # several router processes on one port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.protocol_factory(server), self._host, self._port, backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )


def fd_budget(cap: int) -> int:
    """The connection cap the file-descriptor limit allows (0 = no cap). A client connection
    may hold an upstream connection too, so `cap` needs `2 * cap + FD_RESERVE` descriptors;
    the soft limit is raised toward the hard one when that is needed (as Go's runtime does),
    and when even the hard limit is too low a lower cap is used and logged. Without a cap the
    operating system's limit is the only one, and clients past it are reset."""
    try:
        import resource
    except ImportError:  # not POSIX
        return cap
    if cap == 0:
        return 0
    need = 2 * cap + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft != infinite and soft < need:
        target = need if hard == infinite else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != infinite and soft < need:
        allowed = max(1, (soft - FD_RESERVE) // 2)
        log.warning(
            "limits.max_client_connections %d needs %d file descriptors but the limit is %d "
            "(ulimit -n); refusing past %d connections instead",
            cap, need, soft, allowed,
        )  # fmt: skip
        return allowed
    return cap
