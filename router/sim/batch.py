"""The batch limit of a simulated worker (vLLM's `max_num_seqs`): who runs and who waits."""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress


class BatchSlots:
    """At most `limit` requests hold a slot (0: no limit); the rest wait in arrival order.

    A deque of futures rather than `asyncio.Semaphore`: the semaphore's FIFO order is a recent
    guarantee (CPython gh-90155) and its waiter count is private. Here `release` hands the
    slot straight to the head waiter, so a newcomer can never overtake anyone, and `waiting`
    is exact. A waiter that is cancelled leaves the queue; one cancelled
    just after being handed a slot passes it on.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self._limit = limit
        self._holders = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return self._holders

    @property
    def waiting(self) -> int:
        """Requests queued for a slot (a cancelled one stops counting at once)."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self) -> None:
        """Returns once the caller holds a slot; it must `release` it exactly once."""
        if not self._waiters and (self._limit == 0 or self._holders < self._limit):
            self._holders += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                self._forget(waiter)
            else:
                self.release()
            raise

    def release(self) -> None:
        """Gives the slot to the longest waiter still waiting, or frees it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._holders -= 1

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with suppress(ValueError):
            self._waiters.remove(waiter)
