"""`least_loaded`: the worker with the least load as the workers report it (requests running
plus waiting, per unit of weight; the router's own in-flight count where a worker's figures are
stale). Ignores keys: a load-only baseline on the workers' own signals."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from router.fleet.load import Loads
from router.fleet.workers import Worker
from router.placement.policies.least_inflight import LeastInflight
from router.placement.policies.slow_start import SlowStart

Clock = Callable[[], float]


class LeastLoaded(LeastInflight):
    name = "least_loaded"

    def __init__(self, slow_start: SlowStart, loads: Loads, clock: Clock = time.monotonic) -> None:
        super().__init__(slow_start)
        self._loads = loads
        self._clock = clock

    def loads(self, pool: Sequence[Worker]) -> list[float]:
        """(running + waiting + 1) / weight, from each worker's own figures."""
        weight, estimate, now = self._slow_start.weight, self._loads.estimate, self._clock()
        scores = []
        for worker in pool:
            running, waiting, _, _ = estimate(worker, now)
            scores.append((running + waiting + 1) / weight(worker))
        return scores
