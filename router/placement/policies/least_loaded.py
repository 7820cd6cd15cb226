"""`least_loaded`: the worker with the least load as the workers report it (requests running
plus waiting, per unit of weight; the router's own in-flight count where a worker's figures are
stale). Ignores keys: a load-only baseline on the workers' own signals."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.fleet.load import Loads
from router.fleet.workers import Worker
from router.placement.policies.base import Decision, Route, available, candidates
from router.placement.policies.slow_start import SlowStart


class LeastLoaded:
    name = "least_loaded"
    keyed = False

    def __init__(self, slow_start: SlowStart, loads: Loads) -> None:
        self._slow_start = slow_start
        self._loads = loads
        self._ready: tuple[Worker, ...] = ()
        self._rotation = 0

    def update(self, workers: Sequence[Worker]) -> None:
        self._ready = available(workers)

    def ring_home(self, key: str) -> Worker | None:
        return None

    def choose(
        self,
        key: str | None,
        exclude: Collection[str] = (),
        prefer: Worker | None = None,
        size: int = 0,
    ) -> Decision:
        return Decision(self.pick(exclude), Route.UNKEYED)

    def pick(self, exclude: Collection[str]) -> Worker:
        """Lowest (running + waiting + 1) / weight; ties rotate."""
        pool = candidates(self._ready, exclude)
        if not pool:
            raise NoHealthyWorker()
        weight = self._slow_start.weight
        estimate = self._loads.estimate
        loads = []
        for worker in pool:
            load = estimate(worker)
            loads.append((load.running + load.waiting + 1) / weight(worker))
        self._rotation = rotation = (self._rotation + 1) % len(pool)
        best = min(loads)
        try:
            return pool[loads.index(best, rotation)]
        except ValueError:
            return pool[loads.index(best)]
