"""`least_inflight`: the worker with the fewest open requests per unit of weight.

A baseline that ignores keys; the hash policies also use it for requests without a key.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.policies.base import Decision, Route, can_take
from router.policies.slow_start import SlowStart
from router.workers import Worker


class LeastInflight:
    name = "least_inflight"
    keyed = False

    def __init__(self, slow_start: SlowStart) -> None:
        self._slow_start = slow_start
        self._workers: tuple[Worker, ...] = ()
        self._rotation = 0

    def update(self, workers: Sequence[Worker]) -> None:
        self._workers = tuple(workers)

    def home(self, key: str) -> Worker | None:
        return None

    def choose(
        self, key: str | None, exclude: Collection[str] = (), prefer: Worker | None = None
    ) -> Decision:
        return Decision(self.pick(exclude), Route.UNKEYED)

    def pick(self, exclude: Collection[str]) -> Worker:
        """Lowest (in-flight + 1) / weight, so idle pools still follow weights; ties rotate."""
        workers = self._workers
        count = len(workers)
        weight = self._slow_start.weight
        best: Worker | None = None
        best_load = 0.0
        self._rotation = (self._rotation + 1) % max(count, 1)
        for i in range(count):
            worker = workers[(self._rotation + i) % count]
            if not can_take(worker, exclude):
                continue
            load = (worker.inflight + 1) / weight(worker)
            if best is None or load < best_load:
                best, best_load = worker, load
        if best is None:
            raise NoHealthyWorker()
        return best
