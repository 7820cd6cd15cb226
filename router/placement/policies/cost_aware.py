"""`cost_aware` (the default): a session stays on the worker holding its cache unless that
worker is saturated *and* moving is expected to be faster than waiting there.

The wait at home is estimated from the worker's own queue (requests waiting ahead, how many run
at once, and how long a request holds its place there: the router's moving average of streamed
answers from first token to end, `Worker.service_seconds`); the cost of a
move is the recompute of the session's prompt on another worker, estimated from the request
body's size (`router.placement.cost`). Short histories are cheap to move, so under pressure they
move first and long ones stay. A moved session goes to the next worker on the ring that is not
saturated, so every router replica picks the same one; when every worker is saturated, moving
helps nobody and the session stays. Without fresh worker figures, a worker is saturated above
both bounded_load's cap and `routing.saturation.floor` (see `router.fleet.load`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection, Sequence

from router.fleet.load import Loads
from router.fleet.workers import Worker
from router.placement.cost import CostModel
from router.placement.policies.base import Decision, Rehome, Route, available, can_take, why_not
from router.placement.policies.bounded_load import caps
from router.placement.policies.consistent_hash import ConsistentHash
from router.placement.policies.least_loaded import LeastLoaded
from router.placement.policies.slow_start import SlowStart

Clock = Callable[[], float]


class CostAware(ConsistentHash):
    name = "cost_aware"

    def __init__(
        self,
        slow_start: SlowStart,
        loads: Loads,
        cost: CostModel,
        vnodes: int = 160,
        load_factor: float = 1.25,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(slow_start, vnodes, clock)
        self._loads = loads
        self._cost = cost
        self._load_factor = load_factor
        self._ready: tuple[Worker, ...] = ()
        self._unkeyed = LeastLoaded(slow_start, loads, clock)

    def update(self, workers: Sequence[Worker]) -> None:
        super().update(workers)
        self._ready = available(workers)

    def choose(
        self,
        key: str | None,
        exclude: Collection[str] = (),
        prefer: Worker | None = None,
        size: int = 0,
    ) -> Decision:
        if key is None:
            return self._unkeyed.choose(None, exclude)
        walk, home, holder = self._walk(key, prefer)
        now = self._clock()
        saturated = self._saturation(now)
        admits = self._slow_start.admits
        if can_take(holder, exclude) and admits(holder, key):
            if not saturated(holder) or not self._move_pays(holder, size, now):
                return Decision(holder, Route.AFFINITY, holder)
            reason = Rehome.SATURATED
        elif can_take(holder, exclude):
            reason = Rehome.SLOW_START
        else:
            reason = why_not(holder, exclude, now)
        others = itertools.chain((home,) if holder is not home else (), walk)
        for worker in others:
            if (
                worker is not holder
                and can_take(worker, exclude)
                and admits(worker, key)
                and not saturated(worker)
            ):
                return self._moved(worker, holder, reason)
        if reason is Rehome.SATURATED:  # every other worker is saturated too: stay
            return Decision(holder, Route.AFFINITY, holder)
        return self._moved(self._unkeyed.pick(exclude), holder, reason)

    @staticmethod
    def _moved(worker: Worker, holder: Worker, reason: Rehome) -> Decision:
        route = Route.SPILL if reason is Rehome.SATURATED else Route.FALLBACK
        return Decision(worker, route, holder, reason)

    def _saturation(self, now: float) -> Callable[[Worker], bool]:
        """The saturation test for this decision, with bounded_load's cap for stale figures."""
        cap_of = caps(self._ready, self._slow_start.weight, self._load_factor)
        loads = self._loads

        def saturated(worker: Worker) -> bool:
            return loads.saturated(worker, cap_of, now)

        return saturated

    def _move_pays(self, holder: Worker, size: int, now: float) -> bool:
        """Whether waiting at `holder` is expected to take longer than recomputing a prompt
        of `size` request bytes elsewhere. Without fresh figures there is no wait to
        estimate: a worker saturated by the router's own count spills, as bounded_load's."""
        load = self._loads.estimate(holder, now)
        if not load.fresh:
            return True
        service = holder.service_seconds
        if service <= 0 or math.isnan(service):
            return True
        wait = (load.waiting + 1) * service / max(load.running, 1.0)
        return wait > self._cost.recompute_seconds(size, holder.engine)
