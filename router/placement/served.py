"""Which worker served each session's last turn: how a draining worker tells the sessions it
holds from new ones.

A session is *existing* on a worker when that worker served one of its turns within the last
`drain.idle` seconds. Every keyed placement is noted here, in a bounded in-process map (one
dict update: nothing on the request's path waits); for requests with a session id the record is
also written where pins are kept, so every router replica sees it, but only when the worker
changed or the stored record is more than a quarter of `drain.idle` old: a session writes at
most one record per `drain.idle / 4` seconds, and most turns write nothing. The stored record
expires `drain.idle` after it was written, so "idle" means idle for between three quarters of
`drain.idle` and all of it.

The record is read only while some drain keeps sessions, and only for a request whose cache
holder is draining: in-process first, then the store (within `routing.pins.store_timeout`).
Requests keyed by prompt prefix (no session id) are judged by this replica's own map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from router.placement.session import RoutingKey
from router.store import SessionStore

REFRESH_FRACTION = 0.25


class ServedLog:
    """The in-process record, and the shared one's writes and reads. Each entry is
    `[worker, last placed, last refreshed]` (monotonic times), updated in place on every turn
    and moved to the back of the map only when refreshed (at most every `drain.idle / 4`),
    so the map evicts the entries refreshed longest ago."""

    def __init__(self, store: SessionStore, idle: float, capacity: int, clock: Callable[[], float]):
        self._store = store
        self._shared = not store.in_process
        self._idle = idle
        self._refresh = idle * REFRESH_FRACTION
        self._capacity = capacity
        self._clock = clock
        self._served: dict[str, list[Any]] = {}

    def reconfigure(self, idle: float) -> None:
        self._idle = idle
        self._refresh = idle * REFRESH_FRACTION

    def note(self, key: RoutingKey, hash_key: str, worker: str, now: float) -> bool:
        """Note that `worker` serves this turn; True when the shared record should be written
        now (then call `write`). With an in-process store this map is the record."""
        served = self._served.get(hash_key)
        if served is not None and served[0] == worker and now - served[2] < self._refresh:
            served[1] = now
            return False
        if served is not None:
            del self._served[hash_key]
        elif len(self._served) >= self._capacity:
            del self._served[next(iter(self._served))]
        self._served[hash_key] = [worker, now, now]
        return self._shared and key.session is not None

    async def write(self, key: RoutingKey, worker: str) -> None:
        await self._store.set_served(key.tenant, key.session or "", worker, self._idle)

    async def served_by(self, key: RoutingKey, hash_key: str, timeout: float) -> str | None:
        """The worker that served the session within the last `drain.idle` seconds, if any."""
        served = self._served.get(hash_key)
        if served is not None and self._clock() - served[1] < self._idle:
            return served[0]
        if key.session is None or self._store.in_process:
            return None
        async with asyncio.timeout(timeout):
            return await self._store.get_served(key.tenant, key.session)
