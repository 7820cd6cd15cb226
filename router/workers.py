"""Workers and the pool that owns membership and state.

Health checkers change a worker's state only through the pool, and the pool tells its listeners
(the balancer, metrics) so placement is rebuilt on change, never per request.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from router.config import WorkerSettings


class WorkerState(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"


@dataclass(eq=False, slots=True)
class Worker:
    """One upstream; `inflight` is the number of requests the router has open on it."""

    name: str
    url: str
    weight: float = 1.0
    state: WorkerState = WorkerState.HEALTHY
    inflight: int = 0
    ejected_until: float = 0.0
    ejections: int = 0
    consecutive_failures: int = 0
    last_change: float = field(default_factory=time.monotonic)

    @property
    def available(self) -> bool:
        """Can take new requests: healthy and not ejected by passive health checks."""
        return self.state is WorkerState.HEALTHY

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.url,
            "weight": self.weight,
            "state": self.state.value,
            "inflight": self.inflight,
            "ejections": self.ejections,
            "ejected_for": max(0.0, round(self.ejected_until - time.monotonic(), 3)),
        }


Listener = Callable[["WorkerPool"], None]


class WorkerPool:
    """The set of configured workers; notifies listeners whenever membership or state changes."""

    def __init__(self, workers: Iterable[Worker] = ()) -> None:
        self._workers: dict[str, Worker] = {}
        self._listeners: list[Listener] = []
        for worker in workers:
            self._workers[worker.name] = worker

    @classmethod
    def from_settings(cls, settings: Iterable[WorkerSettings]) -> WorkerPool:
        return cls(Worker(s.display_name, s.url, s.weight) for s in settings)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._workers.values())

    def __len__(self) -> int:
        return len(self._workers)

    def __contains__(self, name: object) -> bool:
        return name in self._workers

    def get(self, name: str) -> Worker | None:
        return self._workers.get(name)

    def healthy(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.available]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        listener(self)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self)

    def set_state(self, worker: Worker, state: WorkerState) -> bool:
        """Change a worker's state; returns whether anything changed."""
        if worker.state is state:
            return False
        worker.state = state
        worker.last_change = time.monotonic()
        self._notify()
        return True

    def add(self, worker: Worker) -> None:
        if worker.name in self._workers:
            raise ValueError(f"worker {worker.name!r} already exists")
        self._workers[worker.name] = worker
        self._notify()

    def remove(self, name: str) -> Worker:
        worker = self._workers.pop(name)
        self._notify()
        return worker

    def set_weight(self, worker: Worker, weight: float) -> None:
        if weight <= 0:
            raise ValueError("weight must be positive")
        worker.weight = weight
        self._notify()
