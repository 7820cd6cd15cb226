"""The proxy's upstream client: one pool per worker, connections opened on demand.

A pooled connection the worker closed while it sat idle fails the same way as a worker that
dies; such a request is sent once more on a fresh connection before anything is reported.
"""

from __future__ import annotations

import asyncio
import ssl

from multidict import CIMultiDict

from router.proxy.upstream.connection import Connection
from router.proxy.upstream.errors import ClosedBeforeHead, ConnectFailed
from router.proxy.upstream.exchange import Response
from router.proxy.upstream.pool import OriginPool
from router.proxy.upstream.request import Origin, encode_request


class UpstreamClient:
    """Keep-alive connections to every worker; one per app, closed with it."""

    def __init__(
        self, *, connect_timeout: float, max_per_worker: int = 0, max_idle_per_worker: int = 256
    ) -> None:
        self._connect_timeout = connect_timeout
        self._limit = max_per_worker
        self._max_idle = max_idle_per_worker
        self._pools: dict[str, OriginPool] = {}
        self._tls: ssl.SSLContext | None = None

    def reconfigure(self, connect_timeout: float) -> None:
        """A new connect timeout, from the next connection opened."""
        self._connect_timeout = connect_timeout

    def forget(self, url: str) -> None:
        """A worker left the pool: close its idle connections now; the ones in use close when
        their exchanges end."""
        pool = self._pools.pop(url, None)
        if pool is not None:
            pool.close()

    async def request(
        self,
        url: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Send one request to the worker at `url` and return once the response head is in.

        `timeout` bounds the whole wait (a free slot, connecting, the head) in seconds:
        TimeoutError past it. None leaves the bound to the caller."""
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = OriginPool(
                Origin.from_url(url), asyncio.get_running_loop(), self._limit, self._max_idle
            )
        wire = encode_request(method, target, pool.origin, headers, body)
        head_only = method == "HEAD"
        deadline = None if timeout is None else pool.loop.time() + timeout
        lease = pool.lease_now()
        if lease is None:
            async with asyncio.timeout_at(deadline):
                lease = await pool.lease()
        try:
            conn = lease.connection
            if conn is not None:
                try:
                    head = await conn.exchange(wire, head_only, deadline)
                    return Response(lease, conn.status, head)
                except ClosedBeforeHead:
                    pass  # closed while idle: the worker never saw the request
            async with asyncio.timeout_at(deadline):
                conn = lease.connection = await self._connect(pool)
            head = await conn.exchange(wire, head_only, deadline)
            return Response(lease, conn.status, head)
        except BaseException:
            lease.release(False)
            raise

    def active_connections(self) -> dict[str, int]:
        """Exchanges in progress (slots held) per worker URL."""
        return {url: pool.active for url, pool in self._pools.items()}

    def idle_connections(self) -> dict[str, int]:
        """Open connections waiting for reuse per worker URL."""
        return {url: pool.idle_count() for url, pool in self._pools.items()}

    async def _connect(self, pool: OriginPool) -> Connection:
        origin = pool.origin
        tls = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = pool.loop
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop), origin.host, origin.port, ssl=tls
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
            pool.close()
        self._pools.clear()
