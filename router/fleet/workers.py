"""Workers and the pool, the one writer of their state.

A `Worker` is read by everyone (policies read health, weight and in-flight count on every
decision) and written only here: health changes state through `set_state` and `eject`, the
admin API weights through `set_weight`, membership and drains through `add`, `remove`,
`set_draining` and `set_engine`, and every call to a worker (proxied request, summary,
tokenizer call) holds a `lease`, which is the only thing that counts it in flight. The pool
tells its listeners (the balancer, the health checker) when membership, state or weight
changes, so placement is rebuilt on change, never per request.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType


class WorkerState(enum.StrEnum):
    """What health checks say. Draining is apart from it (`Worker.draining`): a draining
    worker can still die, and then its existing sessions stop going to it."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(eq=False, slots=True)
class Worker:
    """One upstream. Read anywhere; written only by its `WorkerPool`."""

    name: str
    url: str
    weight: float = 1.0
    state: WorkerState = WorkerState.HEALTHY
    inflight: int = 0
    ejected_until: float = 0.0
    last_change: float = field(default_factory=time.monotonic)
    engine: str = "vllm"
    service_seconds: float = 0.0
    draining: bool = False
    last_keyed: float = -1e18  # monotonic time a keyed request was last placed here

    @property
    def available(self) -> bool:
        """Can take new sessions: healthy, not ejected by passive health checks, not
        draining."""
        return self.state is WorkerState.HEALTHY and not self.draining

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.url,
            "weight": self.weight,
            "state": "draining" if self.draining else self.state.value,
            "health": self.state.value,
            "inflight": self.inflight,
            "engine": self.engine,
            "service_seconds": round(self.service_seconds, 4),
            "ejected_for": max(0.0, round(self.ejected_until - time.monotonic(), 3)),
        }


SERVICE_SMOOTHING = 0.1


class WorkerLease:
    """One call in flight on a worker, counted from `pool.lease()` until the block ends,
    whichever way it ends. Leaving twice is a no-op: the lease drops its worker on the first."""

    __slots__ = ("_worker",)

    def __init__(self, worker: Worker) -> None:
        worker.inflight += 1
        self._worker: Worker | None = worker

    def __enter__(self) -> Worker:
        assert self._worker is not None, "a lease is entered once"
        return self._worker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.inflight -= 1


Listener = Callable[["WorkerPool"], None]


class WorkerPool:
    """The set of workers; notifies listeners whenever membership, state or weight changes."""

    def __init__(self, workers: Iterable[Worker] = ()) -> None:
        self._workers: dict[str, Worker] = {}
        self._listeners: list[Listener] = []
        self._batching = 0
        self._changed = False
        for worker in workers:
            self._workers[worker.name] = worker

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

    def lease(self, worker: Worker) -> WorkerLease:
        """Count one call in flight on `worker` until the returned lease's block ends."""
        return WorkerLease(worker)

    def record_service(self, worker: Worker, seconds: float) -> None:
        """How long a streamed answer ran from its first token to its end: the moving average
        `service_seconds` is how long a request holds its place in the worker's batch (time
        queued at the worker is left out, since that is what placement estimates with it)."""
        worker.service_seconds += SERVICE_SMOOTHING * (seconds - worker.service_seconds)

    def placed_keyed(self, worker: Worker, now: float) -> None:
        """A request with a routing key was placed on `worker` at `now` (monotonic): what
        tells a drain whether the worker's sessions have gone idle."""
        worker.last_keyed = now

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` now and on every change; returns the call that unsubscribes it."""
        self._listeners.append(listener)
        listener(self)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self) -> None:
        if self._batching:
            self._changed = True
            return
        for listener in tuple(self._listeners):
            listener(self)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make several changes and tell the listeners once, at the end of the block."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching and self._changed:
                self._changed = False
                self._notify()

    def set_state(self, worker: Worker, state: WorkerState) -> bool:
        """Change a worker's state; returns whether anything changed."""
        if worker.state is state:
            return False
        worker.state = state
        worker.last_change = time.monotonic()
        self._notify()
        return True

    def eject(self, worker: Worker, until: float) -> bool:
        """Take a healthy worker out of service until `until` (monotonic time)."""
        if worker.state is not WorkerState.HEALTHY:
            return False
        worker.ejected_until = until
        return self.set_state(worker, WorkerState.UNHEALTHY)

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
        if worker.weight != weight:
            worker.weight = weight
            self._notify()

    def set_draining(self, worker: Worker, draining: bool) -> bool:
        """Start or stop draining `worker`; returns whether anything changed."""
        if worker.draining is draining:
            return False
        worker.draining = draining
        worker.last_change = time.monotonic()
        self._notify()
        return True

    def set_engine(self, worker: Worker, engine: str) -> None:
        """What the worker runs (how its /metrics are read); takes effect at its next scrape."""
        worker.engine = engine
