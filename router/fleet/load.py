"""Each worker's load as the worker itself reports it, and when that load makes it saturated.

`Loads` keeps one snapshot per worker: requests running and waiting and KV-cache usage, as the
last scrape of the worker's metrics read them. Between scrapes a snapshot is advanced by what
the router itself sent and saw finish (the difference between the worker's in-flight count now
and at the scrape), so a burst is seen before the next scrape. A batch limit is learned from
scrapes that show requests waiting (it is the number running then). Figures older than
`load.stale_after` are not used: a worker without fresh figures is judged by the router's own
in-flight count, as bounded_load would judge it, but never below `routing.saturation.floor`.

Saturated means: requests wait at the worker, or its KV cache is fuller than
`routing.saturation.kv_usage`, continuously for `hold` seconds (as seen by every scrape and
every placement decision since); a worker that left saturation is not saturated again within
`hold` (hysteresis). `LoadMonitor` runs the scrapes, one task per
worker, and never changes a worker's health.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp

from router.config import LoadSettings, SaturationSettings
from router.fleet.engines import LoadReading, MetricNames, MetricsParseError, parse_load
from router.fleet.tasks import PerWorkerTasks
from router.fleet.workers import Worker, WorkerPool
from router.metrics import Metrics

log = logging.getLogger("kvrouter.load")

Clock = Callable[[], float]
_EPSILON = 1e-9


@dataclass(slots=True)
class Snapshot:
    """One worker's last scrape, and the router's in-flight count on it at that moment."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float | None = None
    at: float = 0.0
    inflight_at: int = 0
    batch_limit: float | None = None
    failures: int = 0


@dataclass(slots=True)
class _Saturation:
    since: float | None = None
    saturated: bool = False
    left_at: float = -math.inf


class Estimate(NamedTuple):
    """A worker's load now: from fresh figures (`fresh`) or from the router's own count."""

    running: float
    waiting: float
    kv_usage: float | None
    fresh: bool


class Loads:
    """Every worker's snapshot and saturation state. Written by the monitor (snapshots) and
    read by placement; the saturation state advances as placement asks."""

    def __init__(
        self,
        settings: LoadSettings,
        saturation: SaturationSettings,
        clock: Clock = time.monotonic,
    ) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._states: dict[str, _Saturation] = {}
        self._clock = clock
        self.reconfigure(settings, saturation)

    def reconfigure(self, settings: LoadSettings, saturation: SaturationSettings) -> None:
        self._stale_after = settings.stale_after if settings.enabled else -1.0
        self._kv_limit = saturation.kv_usage
        self._hold = saturation.hold
        self.floor = saturation.floor

    def snapshot(self, name: str) -> Snapshot:
        found = self._snapshots.get(name)
        if found is None:
            found = self._snapshots[name] = Snapshot()
        return found

    def forget(self, name: str) -> None:
        self._snapshots.pop(name, None)
        self._states.pop(name, None)

    def record(self, worker: Worker, reading: LoadReading, now: float | None = None) -> None:
        """A scrape's figures; fields the engine does not export count as 0 (KV: unknown)."""
        now = self._clock() if now is None else now
        snap = self.snapshot(worker.name)
        snap.running = reading.running or 0.0
        snap.waiting = reading.waiting or 0.0
        snap.kv_usage = reading.kv_usage
        snap.at = now
        snap.inflight_at = worker.inflight
        snap.failures = 0
        if snap.waiting > 0 and snap.running > 0:
            snap.batch_limit = snap.running
        elif snap.batch_limit is not None and snap.running > snap.batch_limit:
            snap.batch_limit = None
        self._advance(worker.name, self._over(snap.waiting, snap.kv_usage), now)

    def failed(self, worker: Worker) -> None:
        self.snapshot(worker.name).failures += 1

    def fresh(self, worker: Worker, now: float) -> bool:
        snap = self._snapshots.get(worker.name)
        return snap is not None and snap.at > 0 and now - snap.at <= self._stale_after

    def age(self, worker: Worker, now: float) -> float | None:
        """Seconds since the worker's last successful scrape; None before the first."""
        snap = self._snapshots.get(worker.name)
        return now - snap.at if snap is not None and snap.at > 0 else None

    def estimate(self, worker: Worker, now: float | None = None, ahead: int = 0) -> Estimate:
        """Running and waiting now: the scrape's figures plus what the router sent since,
        less what finished (and `ahead` more, as if sent now); the router's own in-flight
        count when the figures are stale."""
        if now is None:
            now = self._clock()
        snap = self._snapshots.get(worker.name)
        if snap is None or not snap.at or now - snap.at > self._stale_after:
            return Estimate(float(worker.inflight), 0.0, None, False)
        sent = worker.inflight + ahead - snap.inflight_at
        total = max(0.0, snap.running + snap.waiting + sent)
        limit = snap.batch_limit
        if limit is not None:
            waiting = max(0.0, total - limit)
        elif snap.waiting > 0:
            waiting = min(total, snap.waiting)
        else:
            waiting = 0.0
        return Estimate(total - waiting, waiting, snap.kv_usage, True)

    def saturated(
        self, worker: Worker, cap: int | Callable[[Worker], int], now: float | None = None
    ) -> bool:
        """Whether `worker` is saturated now (see the module's docstring); `cap` is
        bounded_load's cap, or what computes it for `worker`, used only when the worker's own
        figures are stale (see `full`)."""
        now = self._clock() if now is None else now
        return self._advance(worker.name, self.full(worker, cap, now), now)

    def full(
        self,
        worker: Worker,
        cap: int | Callable[[Worker], int],
        now: float | None = None,
        ahead: int = 0,
    ) -> bool:
        """Whether `worker` passes the saturation test at this moment: requests wait there or
        its KV cache is past the limit (without fresh figures: its in-flight count is at
        `cap` and the floor, a test that already counts the next request). With `ahead`,
        as if that many more had been sent: whether the next one would wait. `saturated` is
        this (without `ahead`) held for `hold`; this moves no state. A `cap` given as a
        function is called only for a worker at the floor or above: below it the cap cannot
        matter."""
        now = self._clock() if now is None else now
        load = self.estimate(worker, now, ahead)
        if load.fresh:
            return self._over(load.waiting, load.kv_usage)
        inflight = worker.inflight
        if inflight < self.floor:
            return False
        return inflight >= (cap if isinstance(cap, int) else cap(worker))

    def _over(self, waiting: float, kv_usage: float | None) -> bool:
        return waiting > _EPSILON or (kv_usage is not None and kv_usage >= self._kv_limit)

    def _advance(self, name: str, over: bool, now: float) -> bool:
        """Step the worker's saturation state (each scrape and each decision does)."""
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _Saturation()
        if not over:
            state.since = None
            if state.saturated:
                state.saturated, state.left_at = False, now
            return False
        if state.since is None:
            state.since = now
        if not state.saturated:
            held = now - state.since >= self._hold
            state.saturated = held and now - state.left_at >= self._hold
        return state.saturated

    def describe(self, worker: Worker) -> dict[str, object]:
        """What the admin listing shows of this worker's load."""
        now = self._clock()
        snap = self._snapshots.get(worker.name)
        load = self.estimate(worker, now)
        return {
            "load": {
                "running": load.running,
                "waiting": load.waiting,
                "kv_usage": load.kv_usage,
                "fresh": load.fresh,
                "age": None if snap is None or not snap.at else round(now - snap.at, 3),
                "batch_limit": None if snap is None else snap.batch_limit,
                "scrape_failures": 0 if snap is None else snap.failures,
            }
        }


class LoadMonitor:
    """Scrapes every worker's metrics on an interval with jitter; one task per worker."""

    def __init__(
        self,
        pool: WorkerPool,
        loads: Loads,
        settings: LoadSettings,
        names: Callable[[Worker], MetricNames],
        session: aiohttp.ClientSession,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self._loads = loads
        self._names = names
        self._session = session
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._tasks = PerWorkerTasks(pool, "load", self._scrape_forever, loads.forget)
        self.on_reading: Callable[[Worker, LoadReading | None], None] | None = None
        """Told every scrape's figures (None when it failed): how other router processes
        learn them (`router.processes`)."""
        self.reconfigure(settings)

    def reconfigure(self, settings: LoadSettings) -> None:
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)

    def start(self) -> None:
        if self._settings.enabled:
            self._tasks.start()

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _scrape_forever(self, worker: Worker) -> None:
        while True:
            await self.scrape(worker)
            settings = self._settings
            jitter = settings.jitter * (2 * self._rng.random() - 1)
            await asyncio.sleep(settings.interval * (1 + jitter))

    async def scrape(self, worker: Worker) -> bool:
        """One scrape; returns whether it gave fresh figures."""
        metrics = self._metrics
        try:
            async with self._session.get(
                worker.url + self._settings.path, timeout=self._timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise MetricsParseError(f"{self._settings.path} answered {resp.status}")
                text = await resp.text()
            started = time.process_time()
            reading = parse_load(text, self._names(worker))
            metrics.load_scrape_cpu_seconds.labels(worker.name).inc(
                time.process_time() - started
            )
        except (aiohttp.ClientError, TimeoutError, OSError, MetricsParseError) as err:
            self._loads.failed(worker)
            metrics.load_scrape_failures.labels(worker.name).inc()
            log.debug("load scrape of %s failed: %s", worker.name, err or type(err).__name__)
            self._tell(worker, None)
            return False
        self._loads.record(worker, reading)
        self._tell(worker, reading)
        metrics.worker_running.labels(worker.name).set(reading.running or 0.0)
        metrics.worker_waiting.labels(worker.name).set(reading.waiting or 0.0)
        if reading.kv_usage is not None:
            metrics.worker_kv_usage.labels(worker.name).set(reading.kv_usage)
        return True

    def _tell(self, worker: Worker, reading: LoadReading | None) -> None:
        if self.on_reading is not None:
            self.on_reading(worker, reading)
