"""`random`: a worker drawn at random in proportion to its weight; a baseline that ignores keys."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.policies.base import Decision, Route, can_take
from router.policies.slow_start import SlowStart
from router.workers import Worker


class RandomPick:
    name = "random"
    keyed = False

    def __init__(self, slow_start: SlowStart, rng: random.Random | None = None) -> None:
        self._slow_start = slow_start
        self._rng = rng or random.Random()
        self._workers: tuple[Worker, ...] = ()

    def update(self, workers: Sequence[Worker]) -> None:
        self._workers = tuple(workers)

    def home(self, key: str) -> Worker | None:
        return None

    def choose(
        self, key: str | None, exclude: Collection[str] = (), prefer: Worker | None = None
    ) -> Decision:
        weight = self._slow_start.weight
        candidates = [(w, weight(w)) for w in self._workers if can_take(w, exclude)]
        if not candidates:
            raise NoHealthyWorker()
        point = self._rng.random() * sum(share for _, share in candidates)
        for worker, share in candidates:
            point -= share
            if point < 0:
                return Decision(worker, Route.UNKEYED)
        return Decision(candidates[-1][0], Route.UNKEYED)
