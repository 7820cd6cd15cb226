"""`consistent_hash`: a key goes to the first worker on the ring that can take it.

The ring holds every configured worker, healthy or not, so every router replica with the same
worker list makes the same choice, and a worker's death moves only the keys that hashed to it.
A pinned worker (`prefer`), where a moved session's cache now is, is tried before the ring.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from router.errors import NoHealthyWorker
from router.fleet.workers import Worker
from router.placement.policies.base import Decision, Rehome, Route, can_take, why_not
from router.placement.policies.least_inflight import LeastInflight
from router.placement.policies.ring import Ring
from router.placement.policies.slow_start import SlowStart

Clock = Callable[[], float]
Fits = Callable[[Worker], bool]


class ConsistentHash:
    name = "consistent_hash"
    keyed = True

    def __init__(self, slow_start: SlowStart, vnodes: int = 160, clock: Clock = time.monotonic):
        self._slow_start = slow_start
        self._vnodes = vnodes
        self._clock = clock
        self._layout: tuple[tuple[str, float], ...] = ()
        self._ring = Ring((), vnodes)
        self._workers: tuple[Worker, ...] = ()
        self._unkeyed = LeastInflight(slow_start)

    def update(self, workers: Sequence[Worker]) -> None:
        self._workers = tuple(workers)
        self._unkeyed.update(workers)
        layout = tuple((w.name, w.weight) for w in workers)
        if layout != self._layout:
            self._layout = layout
            self._ring = Ring(self._workers, self._vnodes)

    def ring_home(self, key: str) -> Worker | None:
        return self._ring.home(key)

    def _walk(self, key: str, prefer: Worker | None) -> tuple[Iterator[Worker], Worker, Worker]:
        """The ring walk from `key` past its ring home, the ring home, and the cache holder
        (`prefer`, a pinned worker, else the ring home)."""
        ring = self._ring
        if not ring:
            raise NoHealthyWorker()
        start = ring.start(key)
        home = ring.owner(start)
        return ring.after(start), home, prefer or home

    def _fits(self) -> Fits | None:
        """A capacity test for this decision; None means every worker has room."""
        return None

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
        first = (home,) if holder is home else (holder, home)
        candidates: Iterable[Worker] = itertools.chain(first, walk)
        fits = self._fits()
        admits = self._slow_start.admits
        for worker in candidates:
            if can_take(worker, exclude) and admits(worker, key) and (fits is None or fits(worker)):
                return self._decide(worker, holder, key, exclude)
        return self._decide(self._unkeyed.pick(exclude), holder, key, exclude)

    def _decide(
        self, worker: Worker, holder: Worker, key: str, exclude: Collection[str]
    ) -> Decision:
        """Classify the choice against the worker holding the key's cache."""
        if worker is holder:
            return Decision(worker, Route.AFFINITY, holder)
        if not can_take(holder, exclude):
            reason = why_not(holder, exclude, self._clock())
        elif not self._slow_start.admits(holder, key):
            reason = Rehome.SLOW_START
        else:
            reason = Rehome.OVERLOADED
        route = Route.SPILL if reason is Rehome.OVERLOADED else Route.FALLBACK
        return Decision(worker, route, holder, reason)
