"""Passive health: outlier ejection from the outcomes of live traffic.

A refused connection ejects at once; other failures after a run of `consecutive_failures`.
The ejection lasts `base_ejection`, doubling with each ejection in a row up to `max_ejection`;
a worker that has served well for `max_ejection` since its last change starts from the base
again. The counts live in `FailureCounts`, apart from the worker, and state changes go through
the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.config import PassiveHealthSettings
from router.fleet.workers import Worker, WorkerPool
from router.metrics import Metrics

log = logging.getLogger("kvrouter.health")

Clock = Callable[[], float]


@dataclass(slots=True)
class Failures:
    """One worker's run of failures and how many ejections in a row it has had."""

    consecutive: int = 0
    ejections: int = 0


class FailureCounts:
    """Failure runs per worker name; shared by passive health (which counts) and the active
    prober (which starts a run afresh when it changes a worker's state)."""

    def __init__(self) -> None:
        self._by_worker: dict[str, Failures] = {}

    def of(self, name: str) -> Failures:
        counts = self._by_worker.get(name)
        if counts is None:
            counts = self._by_worker[name] = Failures()
        return counts

    def restart_run(self, name: str) -> None:
        self.of(name).consecutive = 0

    def forget(self, name: str) -> None:
        self._by_worker.pop(name, None)


class PassiveHealth:
    """Outlier detection from the outcomes of proxied requests."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: PassiveHealthSettings,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        *,
        failures: FailureCounts | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self.failures = failures if failures is not None else FailureCounts()
        self._clock = clock

    def reconfigure(self, settings: PassiveHealthSettings) -> None:
        self._settings = settings

    def on_success(self, worker: Worker) -> None:
        counts = self.failures.of(worker.name)
        counts.consecutive = 0
        if counts.ejections and self._clock() - worker.last_change > self._settings.max_ejection:
            counts.ejections = 0

    def on_failure(self, worker: Worker, kind: str, *, immediate: bool = False) -> None:
        """Count a failure; eject after a run of them, or now when the worker refused to connect."""
        counts = self.failures.of(worker.name)
        counts.consecutive += 1
        if immediate or counts.consecutive >= self._settings.consecutive_failures:
            self.eject(worker, kind)

    def eject(self, worker: Worker, kind: str) -> None:
        if not worker.available:
            return
        counts = self.failures.of(worker.name)
        counts.ejections += 1
        duration = min(
            self._settings.base_ejection * 2 ** (counts.ejections - 1), self._settings.max_ejection
        )
        counts.consecutive = 0
        log.warning("ejecting worker %s for %.1fs after %s", worker.name, duration, kind)
        self._pool.eject(worker, self._clock() + duration)
        self._metrics.health_transitions.labels(worker.name, "unhealthy", "passive").inc()

    def describe(self, worker: Worker) -> dict[str, object]:
        """What the admin listing shows of this worker's failures."""
        counts = self.failures.of(worker.name)
        return {"ejections": counts.ejections, "consecutive_failures": counts.consecutive}
