"""`least_inflight`: the worker with the fewest open requests per unit of weight.

A baseline that ignores keys; the hash policies also use it for requests without a key.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.fleet.workers import Worker
from router.placement.policies.base import Decision, Rotation, Route, available, candidates
from router.placement.policies.slow_start import SlowStart


class LeastInflight:
    name = "least_inflight"
    keyed = False

    def __init__(self, slow_start: SlowStart) -> None:
        self._slow_start = slow_start
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
        """The lowest load per unit of weight (see `loads`); ties rotate."""
        pool = candidates(self._ready, exclude)
        if not pool:
            raise NoHealthyWorker()
        return self._rotation.lowest(pool, self.loads(pool))

    def loads(self, pool: Sequence[Worker]) -> list[float]:
        """(in-flight + 1) / weight, so idle pools still follow weights."""
        if self._slow_start.warming:
            weight = self._slow_start.weight
            return [(w.inflight + 1) / weight(w) for w in pool]
        return [(w.inflight + 1) / w.weight for w in pool]
