"""The router's own calls to workers (summaries, `/tokenize`): placed like any request without
a key, counted in flight by a lease, so load-aware policies see all the load the router causes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from router.fleet.workers import Worker, WorkerPool
from router.placement.place import Placement
from router.placement.session import RoutingKey

_UNKEYED = RoutingKey("")


class WorkerCalls:
    def __init__(self, placement: Placement, pool: WorkerPool) -> None:
        self._placement = placement
        self._pool = pool

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[Worker]:
        """A worker for one call, in flight until the block ends; NoHealthyWorker if none."""
        decision = await self._placement.place(_UNKEYED)
        with self._pool.lease(decision.worker) as worker:
            yield worker
