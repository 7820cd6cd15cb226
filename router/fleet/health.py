"""Active health: probe every worker's health path on an interval.

The prober re-admits a worker after `rise` good probes once its ejection time (passive health)
is over, and takes it out after `fall` bad ones, or at once when nothing listens. It changes a
worker's state only through the pool.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from router.config import HealthSettings
from router.fleet.passive import FailureCounts
from router.fleet.tasks import PerWorkerTasks
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.metrics import Metrics

log = logging.getLogger("kvrouter.health")

Clock = Callable[[], float]


@dataclass(slots=True)
class _ProbeCounts:
    successes: int = 0
    failures: int = 0


class HealthChecker:
    """Probes every worker's health path on an interval with jitter; one task per worker."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: HealthSettings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        failures: FailureCounts | None = None,
    ) -> None:
        self._pool = pool
        self._failures = failures if failures is not None else FailureCounts()
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._counts: dict[str, _ProbeCounts] = {}
        self._tasks = PerWorkerTasks(pool, "health", self._probe_forever, self._forget)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
        self.on_result: Callable[[Worker, bool, bool], None] | None = None
        """Told every probe's (worker, healthy, refused): how other router processes learn
        them (`router.processes`)."""

    def start(self) -> None:
        self._tasks.start()

    def reconfigure(self, settings: HealthSettings) -> None:
        """New intervals, thresholds and timeout apply from each worker's next probe."""
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)

    async def stop(self) -> None:
        await self._tasks.stop()

    def _forget(self, name: str) -> None:
        self._counts.pop(name, None)
        self._failures.forget(name)

    async def _probe_forever(self, worker: Worker) -> None:
        self._counts[worker.name] = _ProbeCounts()
        while True:
            ok, refused = await self.probe(worker)
            self.record(worker, ok, refused=refused)
            if self.on_result is not None:
                self.on_result(worker, ok, refused)
            interval, jitter = self._settings.interval, self._settings.jitter
            await asyncio.sleep(interval * (1 + jitter * (2 * self._rng.random() - 1)))

    async def probe(self, worker: Worker) -> tuple[bool, bool]:
        """One probe: (healthy, refused). Any 2xx within the timeout is healthy."""
        try:
            async with self._session.get(
                worker.url + self._settings.path, timeout=self._timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                return 200 <= resp.status < 300, False
        except aiohttp.ClientConnectorError:
            return False, True
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False, False

    def record(
        self, worker: Worker, ok: bool, *, refused: bool = False, relayed: bool = False
    ) -> None:
        """Apply one probe result with the fall/rise thresholds. A `relayed` result is another
        router process's probe: applied alike, but that process logs and counts the change."""
        counts = self._counts.setdefault(worker.name, _ProbeCounts())
        if ok:
            counts.successes += 1
            counts.failures = 0
            if (
                worker.state is WorkerState.UNHEALTHY
                and counts.successes >= self._settings.rise
                and self._clock() >= worker.ejected_until
            ):
                self._set(worker, WorkerState.HEALTHY, relayed)
        else:
            counts.failures += 1
            counts.successes = 0
            if worker.state is WorkerState.HEALTHY and (
                refused or counts.failures >= self._settings.fall
            ):
                self._set(worker, WorkerState.UNHEALTHY, relayed)

    def _set(self, worker: Worker, state: WorkerState, relayed: bool) -> None:
        self._failures.restart_run(worker.name)
        self._pool.set_state(worker, state)
        if not relayed:
            log.warning("worker %s is now %s (active probe)", worker.name, state.value)
            self._metrics.health_transitions.labels(worker.name, state.value, "probe").inc()
