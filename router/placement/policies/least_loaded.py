"""`least_loaded`: the worker with the least load as the workers report it (requests running
plus waiting, per unit of weight; the router's own in-flight count where a worker's figures are
stale). Ignores keys: a load-only baseline on the workers' own signals."""

from __future__ import annotations

from collections.abc import Sequence

from router.fleet.load import Loads
from router.fleet.workers import Worker
from router.placement.policies.least_inflight import LeastInflight
from router.placement.policies.slow_start import SlowStart


class LeastLoaded(LeastInflight):
    name = "least_loaded"

    def __init__(self, slow_start: SlowStart, loads: Loads) -> None:
        super().__init__(slow_start)
        self._loads = loads

    def loads(self, pool: Sequence[Worker]) -> list[float]:
        """(running + waiting + 1) / weight, from each worker's own figures."""
        weight, estimate = self._slow_start.weight, self._loads.estimate
        scores = []
        for worker in pool:
            load = estimate(worker)
            scores.append((load.running + load.waiting + 1) / weight(worker))
        return scores
