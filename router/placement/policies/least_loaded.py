"""`least_loaded`: the worker with the least load as the workers report it (requests running
plus waiting, per unit of weight; the router's own in-flight count where a worker's figures are
stale). Ignores keys: a load-only baseline on the workers' own signals."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.fleet.load import Estimate, Loads
from router.fleet.workers import Worker
from router.placement.policies.base import Decision, Rotation, Route, available, candidates
from router.placement.policies.slow_start import SlowStart


class LeastLoaded:
    name = "least_loaded"
    keyed = False

    def __init__(self, slow_start: SlowStart, loads: Loads) -> None:
        self._slow_start = slow_start
        self._loads = loads
        self._ready: tuple[Worker, ...] = ()
        self._rotation = Rotation()

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
        weight, estimate = self._slow_start.weight, self._loads.estimate
        loads = [_queued(estimate(w)) / weight(w) for w in pool]
        return self._rotation.lowest(pool, loads)


def _queued(load: Estimate) -> float:
    return load.running + load.waiting + 1
