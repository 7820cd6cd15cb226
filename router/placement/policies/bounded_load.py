"""`bounded_load`: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam).

No worker takes a request that would put it above ceil(c x (in-flight + 1) x its weight share),
or above `routing.saturation.floor` requests, whichever is more: the ring walk passes over full
workers, so a key stays on its warm worker until that worker carries more than c times its fair
share (and more than the floor: a few requests in flight are no reason to recompute a history
elsewhere), and only then spills to the next one on the ring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from operator import attrgetter

from router.fleet.workers import Worker
from router.placement.policies.base import available
from router.placement.policies.consistent_hash import Clock, ConsistentHash, Fits
from router.placement.policies.slow_start import SlowStart

_EPSILON = 1e-9
_INFLIGHT = attrgetter("inflight")


def cap(load_factor: float, total_inflight: int, weight: float, total_weight: float) -> int:
    """The most requests a worker of `weight` may hold once one more request is placed."""
    return math.ceil(load_factor * (total_inflight + 1) * weight / total_weight - _EPSILON)


def caps(
    ready: Sequence[Worker], weight: Callable[[Worker], float], load_factor: float
) -> Callable[[Worker], int]:
    """Each of the `ready` workers' cap as their load stands now, `weight` giving each one's
    weight (slow start's, for a worker ramping up): what a saturation test falls back on
    without fresh figures. The pool's totals are summed when the first cap is asked for, so a
    decision over fresh figures never walks the whole pool."""
    totals: list[tuple[int, float]] = []

    def cap_of(worker: Worker) -> int:
        if not totals:
            totals.append((sum(map(_INFLIGHT, ready)), sum(weight(w) for w in ready) or 1.0))
        total_inflight, total_weight = totals[0]
        return cap(load_factor, total_inflight, weight(worker), total_weight)

    return cap_of


class BoundedLoad(ConsistentHash):
    name = "bounded_load"

    def __init__(
        self,
        slow_start: SlowStart,
        vnodes: int = 160,
        load_factor: float = 1.25,
        clock: Clock = time.monotonic,
        floor: int = 0,
    ) -> None:
        super().__init__(slow_start, vnodes, clock)
        self.load_factor = load_factor
        self.floor = floor
        self._ready: tuple[Worker, ...] = ()
        self._ready_weight = 0.0

    def update(self, workers: Sequence[Worker]) -> None:
        super().update(workers)
        self._ready = available(workers)
        self._ready_weight = sum(w.weight for w in self._ready)

    def _fits(self) -> Fits | None:
        ready = self._ready
        total_inflight = sum(map(_INFLIGHT, ready))
        slow_start = self._slow_start
        if slow_start.warming:
            weight = slow_start.weight
            total_weight = sum([weight(w) for w in ready])
        else:
            total_weight = self._ready_weight
        if total_weight <= 0:
            return None
        factor, floor = self.load_factor, self.floor
        if slow_start.warming:

            def fits_warming(worker: Worker) -> bool:
                limit = cap(factor, total_inflight, weight(worker), total_weight)
                return worker.inflight < max(limit, floor)

            return fits_warming
        scale = factor * (total_inflight + 1) / total_weight

        def fits(worker: Worker) -> bool:
            return worker.inflight < max(math.ceil(scale * worker.weight - _EPSILON), floor)

        return fits
