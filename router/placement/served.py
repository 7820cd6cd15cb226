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
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from router.placement.session import RoutingKey
from router.store import SessionStore

REFRESH_FRACTION = 0.25


class _Served(NamedTuple):
    worker: str
    at: float  # last placed (monotonic)
    written: float  # last written to the store (monotonic)


class ServedLog:
    def __init__(self, store: SessionStore, idle: float, capacity: int, clock: Callable[[], float]):
        self._store = store
        self._idle = idle
        self._capacity = capacity
        self._clock = clock
        self._served: OrderedDict[str, _Served] = OrderedDict()

    def reconfigure(self, idle: float) -> None:
        self._idle = idle

    def note(self, key: RoutingKey, hash_key: str, worker: str, now: float) -> bool:
        """Note that `worker` serves this turn; True when the shared record should be written
        now (then call `write`). With an in-process store this map is the record."""
        served = self._served.pop(hash_key, None)
        share = (
            key.session is not None
            and not self._store.in_process
            and (
                served is None
                or served.worker != worker
                or now - served.written >= self._idle * REFRESH_FRACTION
            )
        )
        written = now if share else served.written if served is not None else -1e18
        self._served[hash_key] = _Served(worker, now, written)
        if len(self._served) > self._capacity:
            self._served.popitem(last=False)
        return share

    async def write(self, key: RoutingKey, worker: str) -> None:
        await self._store.set_served(key.tenant, key.session or "", worker, self._idle)

    async def served_by(self, key: RoutingKey, hash_key: str, timeout: float) -> str | None:
        """The worker that served the session within the last `drain.idle` seconds, if any."""
        served = self._served.get(hash_key)
        if served is not None and self._clock() - served.at < self._idle:
            return served.worker
        if key.session is None or self._store.in_process:
            return None
        async with asyncio.timeout(timeout):
            return await self._store.get_served(key.tenant, key.session)
