"""`random`: a worker drawn at random in proportion to its weight; a baseline that ignores keys."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.fleet.workers import Worker
from router.placement.policies.base import Decision, Route, available, candidates
from router.placement.policies.slow_start import SlowStart


class RandomPick:
    name = "random"
    keyed = False

    def __init__(self, slow_start: SlowStart, rng: random.Random | None = None) -> None:
        self._slow_start = slow_start
        self._rng = rng or random.Random()
        self._ready: tuple[Worker, ...] = ()
        self._cumulative: list[float] = []

    def update(self, workers: Sequence[Worker]) -> None:
        self._ready = available(workers)
        self._cumulative = list(itertools.accumulate(w.weight for w in self._ready))

    def ring_home(self, key: str) -> Worker | None:
        return None

    def choose(
        self,
        key: str | None,
        exclude: Collection[str] = (),
        prefer: Worker | None = None,
        size: int = 0,
    ) -> Decision:
        if exclude or self._slow_start.warming or not self._cumulative:
            return Decision(self._draw(candidates(self._ready, exclude)), Route.UNKEYED)
        point = self._rng.random() * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, point)
        return Decision(self._ready[min(index, len(self._ready) - 1)], Route.UNKEYED)

    def _draw(self, pool: Sequence[Worker]) -> Worker:
        if not pool:
            raise NoHealthyWorker()
        weight = self._slow_start.weight
        shares = [weight(w) for w in pool]
        return self._rng.choices(pool, weights=shares)[0]
