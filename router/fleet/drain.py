"""Session-aware drain: a worker on its way out finishes the conversations it holds.

A draining worker takes no new session (the pool stops calling it `available`). A session it
already holds keeps going to it, so its cache is not thrown away, while the drain *keeps
sessions*: from the moment the drain begins until the worker has had no keyed request for
`drain.idle` seconds and has nothing in flight (its sessions have gone idle), or until
`drain.timeout` has passed, whichever comes first. Then the drain has *ended*: every session
moves, counted as re-homed `draining`, and a worker being removed (by discovery or a reload)
leaves the pool. A worker drained through the admin API stays in the pool, taking nothing,
until it is undrained.

Which sessions are "existing" is recorded where pins are kept (see `router.placement.served`):
a session is existing on a worker when that worker served one of its turns within the last
`drain.idle` seconds. A draining worker that health checks mark unhealthy keeps no sessions:
they move at once.

`Drains` is the one owner of drains; its check runs every `drain.check_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.config import DrainSettings
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.metrics import Metrics

log = logging.getLogger("kvrouter.drain")

Clock = Callable[[], float]


@dataclass(slots=True)
class Drain:
    worker: Worker
    began: float
    remove: bool
    reason: str
    ended: bool = False


class Drains:
    """Every drain in progress, and the task that ends them."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: DrainSettings,
        metrics: Metrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._drains: dict[str, Drain] = {}
        self._keeping = 0
        self._task: asyncio.Task[None] | None = None
        self._removed: list[Callable[[Worker], None]] = []

    def reconfigure(self, settings: DrainSettings) -> None:
        self._settings = settings

    def on_removed(self, callback: Callable[[Worker], None]) -> None:
        """Call `callback` with each worker a finished drain takes out of the pool."""
        self._removed.append(callback)

    @property
    def keeping(self) -> bool:
        """Whether any drain still keeps its sessions (the only time placement asks)."""
        return self._keeping > 0

    def begin(self, worker: Worker, *, remove: bool, reason: str) -> None:
        """Start draining `worker` (or mark a drain in progress as ending in removal)."""
        drain = self._drains.get(worker.name)
        if drain is not None and drain.worker is worker:
            if remove and not drain.remove:
                drain.remove = True
                drain.reason = reason
                log.info("worker %s: drain now ends in removal (%s)", worker.name, reason)
            return
        self._drains[worker.name] = Drain(worker, self._clock(), remove, reason)
        self._keeping += 1
        self._pool.set_draining(worker, True)
        self._metrics.drains.labels(reason).inc()
        log.warning(
            "worker %s is draining (%s): no new sessions; sessions it served in the last %gs "
            "stay until idle, at most %gs",
            worker.name, reason, self._settings.idle, self._settings.timeout,
        )  # fmt: skip

    def reason(self, worker: Worker) -> str | None:
        """Why `worker` is draining (removed, terminating, admin), or None."""
        drain = self._drains.get(worker.name)
        return drain.reason if drain is not None and drain.worker is worker else None

    def cancel(self, worker: Worker) -> bool:
        """Stop draining `worker`: it takes new sessions again. False if it was not draining."""
        drain = self._drains.pop(worker.name, None)
        if drain is None:
            return self._pool.set_draining(worker, False)
        if not drain.ended:
            self._keeping -= 1
        self._pool.set_draining(worker, False)
        log.warning("worker %s: drain cancelled, back in service", worker.name)
        return True

    def keeps_sessions(self, worker: Worker) -> bool:
        """Whether `worker` still takes the sessions it holds: draining, its drain not ended,
        and healthy."""
        drain = self._drains.get(worker.name)
        return (
            drain is not None
            and not drain.ended
            and drain.worker is worker
            and worker.state is WorkerState.HEALTHY
        )

    def describe(self, worker: Worker) -> dict[str, object]:
        """The drain of `worker` for the admin listing (empty when it is not draining)."""
        drain = self._drains.get(worker.name)
        if drain is None or drain.worker is not worker:
            return {}
        return {
            "drain": {
                "reason": drain.reason,
                "for": round(self._clock() - drain.began, 3),
                "keeps_sessions": self.keeps_sessions(worker),
                "remove": drain.remove,
            }
        }

    def check(self) -> None:
        """End the drains whose sessions have gone idle or whose time is up; take removed
        workers out of the pool."""
        now = self._clock()
        settings = self._settings
        finished: list[Drain] = []
        for drain in self._drains.values():
            worker = drain.worker
            if not drain.ended:
                quiet = now - max(worker.last_keyed, drain.began - settings.idle)
                if now - drain.began >= settings.timeout:
                    self._end(drain, "timeout")
                elif worker.state is not WorkerState.HEALTHY:
                    self._end(drain, "unhealthy")
                elif worker.inflight == 0 and quiet >= settings.idle:
                    self._end(drain, "idle")
            if drain.ended and drain.remove:
                finished.append(drain)
        if finished:
            with self._pool.batch():
                for drain in finished:
                    self._remove(drain)

    def _end(self, drain: Drain, how: str) -> None:
        drain.ended = True
        self._keeping -= 1
        self._metrics.drains_ended.labels(how).inc()
        log.warning(
            "worker %s: drain ended (%s); its sessions move%s",
            drain.worker.name, how, ", and it leaves the pool" if drain.remove else "",
        )  # fmt: skip

    def _remove(self, drain: Drain) -> None:
        name = drain.worker.name
        del self._drains[name]
        if self._pool.get(name) is drain.worker:
            self._pool.remove(name)
            for callback in self._removed:
                callback(drain.worker)

    def forget(self, worker: Worker) -> None:
        """`worker` left the pool by another path (replaced): drop its drain."""
        drain = self._drains.get(worker.name)
        if drain is not None and drain.worker is worker:
            del self._drains[worker.name]
            if not drain.ended:
                self._keeping -= 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="drains")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.check_interval)
            try:
                self.check()
            except Exception:  # a bug here must not stop drains for good
                log.exception("drain check failed")
