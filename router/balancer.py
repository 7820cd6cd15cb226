"""Placement: which worker serves a request. Pure and synchronous, no I/O.

The ring holds every configured worker, healthy or not, so a key's place never depends on
health; the choice walks the ring from the key to the first available, not-yet-tried worker.
Every router replica with the same worker list therefore makes the same choice, and a worker's
death moves only the keys that hashed to it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from uhashring import HashRing

from router.errors import NoHealthyWorker
from router.workers import Worker, WorkerPool


class Route(enum.StrEnum):
    AFFINITY = "affinity"
    FALLBACK = "fallback"
    UNKEYED = "unkeyed"


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes, why, and where its key's cache lives (`home`)."""

    worker: Worker
    route: Route
    home: Worker | None = None


class Balancer:
    """Consistent-hash placement over a worker pool, rebuilt only when membership changes."""

    name = "consistent_hash"

    def __init__(self, pool: WorkerPool, vnodes: int = 160) -> None:
        self._vnodes = vnodes
        self._layout: tuple[tuple[str, float], ...] = ()
        self._ring = HashRing()
        self._workers: tuple[Worker, ...] = ()
        self._rotation = 0
        pool.subscribe(self._on_pool_change)

    def _on_pool_change(self, pool: WorkerPool) -> None:
        self._workers = tuple(pool)
        layout = tuple((w.name, w.weight) for w in self._workers)
        if layout != self._layout:
            self._layout = layout
            self._ring = self._build_ring(self._workers)

    def _build_ring(self, workers: Collection[Worker]) -> HashRing:
        nodes = {
            w.name: {"instance": w, "weight": 1, "vnodes": max(1, round(self._vnodes * w.weight))}
            for w in workers
        }
        return HashRing(nodes=nodes)

    def home(self, key: str) -> Worker | None:
        """The worker a key hashes to, whatever its health."""
        if not self._workers:
            return None
        return self._ring.get(key)["instance"]

    def choose(self, key: str | None, exclude: Collection[str] = ()) -> Decision:
        """Pick a worker for `key`; `exclude` names workers already tried for this request."""
        if key is None:
            return Decision(self._least_loaded(exclude), Route.UNKEYED)
        home: Worker | None = None
        for node in self._ring.range(key):
            worker: Worker = node["instance"]
            if home is None:
                home = worker
            if worker.available and worker.name not in exclude:
                route = Route.AFFINITY if worker is home else Route.FALLBACK
                return Decision(worker, route, home)
        raise NoHealthyWorker()

    def _least_loaded(self, exclude: Collection[str]) -> Worker:
        """Fewest in-flight requests per unit of weight; ties rotate so idle pools spread."""
        workers = self._workers
        count = len(workers)
        best: Worker | None = None
        best_load = 0.0
        self._rotation = (self._rotation + 1) % max(count, 1)
        for i in range(count):
            worker = workers[(self._rotation + i) % count]
            if not worker.available or worker.name in exclude:
                continue
            load = worker.inflight / worker.weight
            if best is None or load < best_load:
                best, best_load = worker, load
        if best is None:
            raise NoHealthyWorker()
        return best
