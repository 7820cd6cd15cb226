"""The connections to one worker: idle ones kept for reuse, and a cap on exchanges in progress.

Everything the pool gives out is a `ConnectionLease`: a slot under the cap and, once one is
attached, a connection. `ConnectionLease.release()` is the only way either comes back; it drops
its references as it does, so a second call finds nothing to give back. Connections never call
into the pool: the pool reads their `state` when it hands one out or keeps one.
"""

from __future__ import annotations

import asyncio
import collections
import time

from router.proxy.upstream.connection import IDLE, Connection
from router.proxy.upstream.request import Origin

IDLE_KEEPALIVE = 30.0
"""Seconds an idle connection is trusted to still be open at the worker's end."""


class ConnectionLease:
    """One slot under the pool's cap, with the connection attached to it (None until then)."""

    __slots__ = ("_pool", "connection")

    def __init__(self, pool: OriginPool, connection: Connection | None) -> None:
        self._pool: OriginPool | None = pool
        self.connection = connection

    def release(self, reusable: bool) -> None:
        """Give the slot back, and the connection: kept for reuse when `reusable` and its
        exchange ended cleanly, else closed. Later calls do nothing."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        connection, self.connection = self.connection, None
        pool._give_back(connection, reusable)


class OriginPool:
    """Idle connections to one origin, most recently used first, and a cap on the exchanges in
    progress (`limit`, 0 for none) that later requests queue behind in arrival order."""

    def __init__(
        self, origin: Origin, loop: asyncio.AbstractEventLoop, limit: int, max_idle: int
    ) -> None:
        self.origin = origin
        self.loop = loop
        self.limit = limit
        self.max_idle = max_idle
        self.active = 0
        self._idle: list[Connection] = []
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    async def lease(self) -> ConnectionLease:
        """A slot (waiting for one in turn when at the cap), with an idle connection if one is
        still fit for use."""
        found = self.lease_now()
        if found is not None:
            return found
        await self._wait_turn()
        return ConnectionLease(self, self._take_idle())

    def lease_now(self) -> ConnectionLease | None:
        """`lease()` when a slot is free now (no coroutine to run); None at the cap."""
        if self.full:
            return None
        self.active += 1
        return ConnectionLease(self, self._take_idle())

    @property
    def full(self) -> bool:
        """Whether `lease()` would wait for a slot now."""
        return bool(self.limit) and self.active >= self.limit

    def idle_count(self) -> int:
        return sum(1 for conn in self._idle if conn.state is IDLE)

    def close(self) -> None:
        """Close the idle connections; leased ones close when their leases are released, as
        nothing is kept from then on."""
        self.max_idle = 0
        for conn in self._idle:
            conn.abort()
        self._idle.clear()

    async def _wait_turn(self) -> None:
        ticket = self.loop.create_future()
        self._queue.append(ticket)
        try:
            await ticket  # done with a result: a released slot was handed to us
        except BaseException:
            if ticket.done() and not ticket.cancelled():
                self._free_slot()  # handed a slot and cancelled at once: hand it on
            raise

    def _free_slot(self) -> None:
        queue = self._queue
        while queue:
            ticket = queue.popleft()
            if not ticket.done():  # a waiter cancelled while queued left its ticket done
                ticket.set_result(None)
                return
        self.active -= 1

    def _take_idle(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.state is not IDLE:  # closed by the worker while it sat here
                continue
            if now - conn.idle_since > IDLE_KEEPALIVE:
                conn.abort()
                continue
            return conn
        return None

    def _give_back(self, conn: Connection | None, reusable: bool) -> None:
        if conn is not None:
            if reusable and conn.reusable:
                self._keep(conn)
            else:
                conn.abort()
        self._free_slot()

    def _keep(self, conn: Connection) -> None:
        idle = self._idle
        if len(idle) >= self.max_idle:
            idle[:] = [kept for kept in idle if kept.state is IDLE]
            if len(idle) >= self.max_idle:
                conn.abort()
                return
        conn.reset()
        idle.append(conn)
