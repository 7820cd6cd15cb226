"""The placement step around the pure balancer: read a session's pin, choose, record a move.

A session served away from its ring home (a spill or a fallback) has its cache on the new
worker now; a pin in the store keeps it there until it has been idle for `routing.pins.ttl`.
Pins are read before the choice, within `routing.pins.store_timeout`, and written after it in
background tasks, off the request's path (an in-process store answers at once, so it is read
and written inline, with no timer). Only this module touches pins, and only through the
SessionStore protocol, so the in-memory store and a shared store work the same. When the store
fails or is slow, routing carries on with the ring alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine
from typing import Any

from router.balancer import Balancer
from router.config import PinSettings
from router.metrics import Metrics
from router.policies import Decision, Route
from router.session import RoutingKey
from router.store import SessionStore

log = logging.getLogger("kvrouter.placement")

WRITE_TIMEOUT = 2.0


class Placement:
    """Chooses a worker for each attempt of a request; owns its pending pin writes."""

    def __init__(
        self, balancer: Balancer, store: SessionStore, settings: PinSettings, metrics: Metrics
    ) -> None:
        self._balancer = balancer
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._pins = settings.enabled and balancer.keyed
        self._writes: set[asyncio.Task[None]] = set()
        metrics.routing_policy.labels(balancer.name).set(1)
        self._placed = {r: metrics.placements.labels(balancer.name, r.value) for r in Route}

    async def place(self, key: RoutingKey, exclude: Collection[str] = ()) -> Decision:
        """The decision for one attempt; `exclude` names the workers already tried."""
        pinned = None
        if self._pins and key.session is not None:
            pinned = await self._read_pin(key.tenant, key.session)
        decision = self._balancer.choose(key.hash_key, exclude, pinned)
        self._placed[decision.route].inc()
        if decision.rehomed is not None:
            self._metrics.rehomed.labels(decision.rehomed.value).inc()
        if self._pins and key.session is not None:
            await self._record(key, decision, pinned)
        return decision

    async def _read_pin(self, tenant: str, session: str) -> str | None:
        try:
            if self._store.in_process:  # nothing to wait for: no timer needed
                return await self._store.get_pin(tenant, session)
            async with asyncio.timeout(self._settings.store_timeout):
                return await self._store.get_pin(tenant, session)
        except Exception as err:  # any store failure: route on the ring alone
            self._metrics.pin_operations.labels("read", "error").inc()
            log.debug("pin read for %s/%s failed: %r", tenant, session, err)
            return None

    async def _record(self, key: RoutingKey, decision: Decision, pinned: str | None) -> None:
        """Keep the pin in step with where the session's cache now is."""
        tenant, session = key.tenant, key.session or ""
        worker = decision.worker.name
        ttl = self._settings.ttl
        if worker == pinned:
            await self._write("refresh", self._store.set_pin(tenant, session, worker, ttl))
        elif pinned is None and decision.route is Route.AFFINITY:
            return
        elif decision.worker is self._balancer.home(key.hash_key or ""):
            if pinned is not None:
                await self._write("delete", self._store.delete_pin(tenant, session))
        else:
            await self._write("set", self._store.set_pin(tenant, session, worker, ttl))

    async def _write(self, action: str, write: Coroutine[Any, Any, None]) -> None:
        """An in-process store's write is done now (it cannot block); any other runs in the
        background, off the request's path."""
        if self._store.in_process:
            await self._guarded(action, write, timed=False)
            return
        task = asyncio.get_running_loop().create_task(self._guarded(action, write))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _guarded(
        self, action: str, write: Coroutine[Any, Any, None], *, timed: bool = True
    ) -> None:
        try:
            if timed:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await write
            else:
                await write
        except Exception as err:  # a lost pin costs one recompute, never a request
            self._metrics.pin_operations.labels(action, "error").inc()
            log.debug("pin %s failed: %r", action, err)
            return
        self._metrics.pin_operations.labels(action, "ok").inc()

    async def close(self) -> None:
        """Let pending pin writes finish (bounded by their timeout)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=WRITE_TIMEOUT)
