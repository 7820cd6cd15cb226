"""`round_robin`: smooth weighted round robin (as in nginx); a baseline that ignores keys.

Each pick adds every candidate's weight to its running score, takes the highest, and takes the
total back from the winner: over any window each worker gets its weight's share, interleaved.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.policies.base import Decision, Route, can_take
from router.policies.slow_start import SlowStart
from router.workers import Worker


class RoundRobin:
    name = "round_robin"
    keyed = False

    def __init__(self, slow_start: SlowStart) -> None:
        self._slow_start = slow_start
        self._workers: tuple[Worker, ...] = ()
        self._score: dict[str, float] = {}

    def update(self, workers: Sequence[Worker]) -> None:
        self._workers = tuple(workers)
        self._score = {w.name: self._score.get(w.name, 0.0) for w in workers}

    def home(self, key: str) -> Worker | None:
        return None

    def choose(
        self, key: str | None, exclude: Collection[str] = (), prefer: Worker | None = None
    ) -> Decision:
        score = self._score
        weight = self._slow_start.weight
        best: Worker | None = None
        best_score = 0.0
        total = 0.0
        for worker in self._workers:
            if not can_take(worker, exclude):
                continue
            share = weight(worker)
            current = score[worker.name] + share
            score[worker.name] = current
            total += share
            if best is None or current > best_score:
                best, best_score = worker, current
        if best is None:
            raise NoHealthyWorker()
        score[best.name] -= total
        return Decision(best, Route.UNKEYED)
