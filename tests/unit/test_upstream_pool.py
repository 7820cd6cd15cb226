"""The upstream pool and its leases, with connections on in-memory transports (no sockets)."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.proxy.upstream.connection import ACTIVE, CLOSED, HIGH_WATER, IDLE, Connection
from router.proxy.upstream.pool import IDLE_KEEPALIVE, OriginPool
from router.proxy.upstream.request import Origin

ORIGIN = Origin("127.0.0.1", 8000, False, "127.0.0.1:8000")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


class MemoryTransport(asyncio.Transport):
    """Records what the connection does to its transport; aborting reports the loss as a
    real transport does, on the next loop turn."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn
        self.written: list[bytes] = []
        self.aborted = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            asyncio.get_running_loop().call_soon(self._conn.connection_lost, None)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def connected() -> tuple[Connection, MemoryTransport]:
    conn = Connection(asyncio.get_running_loop())
    transport = MemoryTransport(conn)
    conn.connection_made(transport)
    return conn, transport


async def answered(conn: Connection, raw: bytes) -> None:
    """Run one exchange on `conn` with `raw` as the worker's whole answer."""
    exchange = asyncio.ensure_future(conn.exchange(REQUEST, False))
    await asyncio.sleep(0)
    conn.data_received(raw)
    await exchange


async def pooled(pool: OriginPool) -> tuple[Connection, MemoryTransport]:
    """A connection that served one clean exchange and was given back to `pool`."""
    lease = await pool.lease()
    conn, transport = connected()
    lease.connection = conn
    await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    lease.release(True)
    assert conn.state is IDLE
    return conn, transport


def new_pool(limit: int = 0, max_idle: int = 8) -> OriginPool:
    return OriginPool(ORIGIN, asyncio.get_running_loop(), limit, max_idle)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_second_release_wakes_no_second_waiter():
    pool = new_pool(limit=1)
    first = await pool.lease()
    second = asyncio.ensure_future(pool.lease())
    third = asyncio.ensure_future(pool.lease())
    await settle()
    first.release(False)
    first.release(False)
    await settle()
    assert second.done() and not third.done()
    assert pool.active == 1
    second.result().release(False)
    (await third).release(False)
    assert pool.active == 0


async def test_a_second_release_leaves_the_connection_alone_once_it_serves_another():
    pool = new_pool()
    before = await pool.lease()
    conn, transport = connected()
    before.connection = conn
    await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    before.release(True)
    after = await pool.lease()
    assert after.connection is conn
    before.release(False)
    before.release(True)
    assert not transport.aborted and conn.state is IDLE
    assert pool.active == 1
    after.release(False)
    assert pool.active == 0 and transport.aborted


async def test_a_connection_the_worker_closed_while_idle_is_not_handed_out():
    pool = new_pool()
    conn, _ = await pooled(pool)
    conn.connection_lost(None)
    assert pool.idle_count() == 0
    lease = await pool.lease()
    assert lease.connection is None
    lease.release(False)


async def test_a_connection_that_speaks_while_idle_is_closed_and_not_handed_out():
    pool = new_pool()
    conn, transport = await pooled(pool)
    conn.data_received(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
    assert transport.aborted and conn.state is CLOSED
    lease = await pool.lease()
    assert lease.connection is None
    lease.release(False)


async def test_an_idle_connection_past_keepalive_is_closed_not_handed_out():
    pool = new_pool()
    conn, transport = await pooled(pool)
    conn.idle_since = time.monotonic() - IDLE_KEEPALIVE - 1
    lease = await pool.lease()
    assert lease.connection is None and transport.aborted
    lease.release(False)


async def test_a_waiter_cancelled_as_its_turn_came_hands_the_turn_on():
    pool = new_pool(limit=1)
    holder = await pool.lease()
    woken = asyncio.ensure_future(pool.lease())
    next_in_line = asyncio.ensure_future(pool.lease())
    await settle()
    holder.release(False)  # the turn goes to `woken`...
    woken.cancel()  # ...which is cancelled before it runs
    lease = await asyncio.wait_for(next_in_line, 1.0)
    assert woken.cancelled()
    assert pool.active == 1
    lease.release(False)
    assert pool.active == 0


async def test_a_waiter_cancelled_while_queued_keeps_the_others_in_order():
    pool = new_pool(limit=1)
    holder = await pool.lease()
    waiters = [asyncio.ensure_future(pool.lease()) for _ in range(3)]
    await settle()
    waiters[0].cancel()
    await settle()
    holder.release(False)
    await settle()
    assert waiters[1].done() and not waiters[2].done()
    waiters[1].result().release(False)
    (await waiters[2]).release(False)
    assert pool.active == 0


async def test_closed_idle_connections_do_not_count_toward_max_idle():
    pool = new_pool(max_idle=1)
    leases = [await pool.lease() for _ in range(2)]
    for lease in leases:
        lease.connection, _ = connected()
        await answered(lease.connection, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    gone, kept = leases[0].connection, leases[1].connection
    assert gone is not None and kept is not None
    leases[0].release(True)
    gone.connection_lost(None)  # the worker closed it while it sat idle
    leases[1].release(True)
    assert kept.state is IDLE and pool.idle_count() == 1


async def test_a_body_released_unread_does_not_leave_the_connection_paused():
    pool = new_pool()
    lease = await pool.lease()
    conn, transport = connected()
    lease.connection = conn
    body = b"x" * (HIGH_WATER + 1)
    await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert transport.paused and conn.state is ACTIVE and conn.complete
    lease.release(True)
    assert conn.state is IDLE and not transport.paused


async def test_a_released_pool_keeps_nothing_once_closed():
    pool = new_pool()
    lease = await pool.lease()
    conn, transport = connected()
    lease.connection = conn
    await answered(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    pool.close()
    lease.release(True)
    assert transport.aborted and pool.idle_count() == 0 and pool.active == 0


@pytest.mark.parametrize("reusable", [True, False])
async def test_a_slot_without_a_connection_goes_back_once(reusable: bool):
    pool = new_pool(limit=2)
    lease = await pool.lease()
    lease.release(reusable)
    lease.release(reusable)
    assert pool.active == 0
