"""One response as the caller sees it: status, headers, the body, and the lease to end it with."""

from __future__ import annotations

from collections.abc import AsyncIterator

from multidict import CIMultiDict

from router.proxy.upstream.pool import ConnectionLease


class Response:
    """One response read off a leased connection. Call `release()` (or `close()`) once done;
    either may be called again, or after the other, and does nothing then."""

    __slots__ = ("_lease", "content_length", "content_type", "headers", "status")

    def __init__(self, lease: ConnectionLease, status: int, headers: CIMultiDict[str]) -> None:
        self._lease = lease
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        ctype = headers.get("content-type", "")
        self.content_type = ctype.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body (the caller bounds the wait)."""
        conn = self._lease.connection
        if conn is None:
            raise RuntimeError("the response was released before its body was read")
        parts: list[bytes] = []
        while True:
            parts.extend(conn.take())
            if conn.complete:
                return b"".join(parts)
            await conn.wait_body(None)

    def read_complete(self) -> bytes:
        """The whole body of a response that is `complete` already: `read()` without a
        coroutine."""
        conn = self._lease.connection
        if conn is None or not conn.complete:
            raise RuntimeError("the response's body has not all arrived")
        parts = conn.take()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self, idle: float) -> AsyncIterator[bytes]:
        """Body data as it arrives; raises TimeoutError after `idle` seconds with none."""
        conn = self._lease.connection
        if conn is None:
            raise RuntimeError("the response was released before its body was read")
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
        """Whether the whole body has arrived already (False once released)."""
        conn = self._lease.connection
        return conn is not None and conn.complete

    def release(self) -> None:
        """Give the connection back for reuse if the exchange ended cleanly, else close it."""
        self._lease.release(True)

    def close(self) -> None:
        """Drop the connection now (the worker sees it close)."""
        self._lease.release(False)
