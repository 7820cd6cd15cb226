"""`round_robin`: smooth weighted round robin (as in nginx); a baseline that ignores keys.

Each pick adds every candidate's weight to its running score, takes the highest, and takes the
total back from the winner: over any window each worker gets its weight's share, interleaved.
The sequence this produces is precomputed whenever the pool changes, so a pick is one step
along it; retries (which exclude workers) and warming workers take the step-by-step path.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from router.errors import NoHealthyWorker
from router.fleet.workers import Worker
from router.placement.policies.base import Decision, Route, available, candidates
from router.placement.policies.slow_start import SlowStart

MAX_SCHEDULE = 4096
_SCALE = 100


class RoundRobin:
    name = "round_robin"
    keyed = False

    def __init__(self, slow_start: SlowStart) -> None:
        self._slow_start = slow_start
        self._ready: tuple[Worker, ...] = ()
        self._score: dict[str, float] = {}
        self._schedule: tuple[Worker, ...] = ()
        self._cursor = 0

    def update(self, workers: Sequence[Worker]) -> None:
        self._ready = available(workers)
        self._score = {w.name: self._score.get(w.name, 0.0) for w in workers}
        self._schedule = self._plan(self._ready)
        self._cursor = 0

    def ring_home(self, key: str) -> Worker | None:
        return None

    def _plan(self, ready: Sequence[Worker]) -> tuple[Worker, ...]:
        """One period of the smooth weighted sequence, if it is short enough to keep."""
        shares = [max(1, round(w.weight * _SCALE)) for w in ready]
        divisor = 0
        for share in shares:
            divisor = _gcd(divisor, share)
        period = sum(shares) // divisor if shares else 0
        if not 0 < period <= MAX_SCHEDULE:
            return ()
        score = dict.fromkeys(range(len(ready)), 0.0)
        sequence = []
        for _ in range(period):
            for i, share in enumerate(shares):
                score[i] += share
            best = max(score, key=lambda i: (score[i], -i))
            score[best] -= period * divisor
            sequence.append(ready[best])
        return tuple(sequence)

    def choose(
        self,
        key: str | None,
        exclude: Collection[str] = (),
        prefer: Worker | None = None,
        size: int = 0,
    ) -> Decision:
        schedule = self._schedule
        if schedule and not exclude and not self._slow_start.warming:
            worker = schedule[self._cursor]
            self._cursor = (self._cursor + 1) % len(schedule)
            return Decision(worker, Route.UNKEYED)
        return Decision(self._step(candidates(self._ready, exclude)), Route.UNKEYED)

    def _step(self, pool: Sequence[Worker]) -> Worker:
        score = self._score
        weight = self._slow_start.weight
        best: Worker | None = None
        best_score = 0.0
        total = 0.0
        for worker in pool:
            share = weight(worker)
            current = score[worker.name] + share
            score[worker.name] = current
            total += share
            if best is None or current > best_score:
                best, best_score = worker, current
        if best is None:
            raise NoHealthyWorker()
        score[best.name] -= total
        return best


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
