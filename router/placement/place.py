"""Placement: which worker serves each attempt of a request.

Two layers in one module. `Balancer.decide` is pure and synchronous: it is handed a
`PlacementContext` (the hash key, the workers to avoid, the pinned worker) and applies the
policy named by `routing.policy` plus what is the same for every policy: slow start for workers
that rejoin, the pinned worker tried first, when a moved session goes back to its ring home,
and what happens when most workers are down. `Placement` is the async shell around it: it reads
the session's pin before the decision and keeps the pin in step after it, and it is the only
code that touches pins.

Two "homes" are named apart: the *ring home* is where a key hashes when every worker is up;
the *cache holder* (`Decision.cache_holder`) is where the key's cache is now (its pinned worker
after a move, else the ring home).

A session served away from its ring home (a spill or a fallback) has its cache on the new
worker now; a pin keeps it there until it has been idle for `routing.pins.ttl`. Pins are read
within `routing.pins.store_timeout`. A write that moves the session (a new pin, or its removal
when the session goes back to its ring home) is waited for, within the same bound, before the
request is sent: its reply cannot end before the move is in the store, so the next turn finds it
whichever router replica takes it. A refresh of an unchanged pin runs in the background, off the
request's path. (An in-process store answers at once, so it is read and written inline, with no
timer.) When the store fails or is slow, routing carries on with the ring alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, NamedTuple

from router.config import DrainSettings, LoadSettings, PinSettings, RoutingSettings
from router.errors import DegradedRefusal, NoHealthyWorker
from router.fleet.drain import Drains
from router.fleet.load import Loads
from router.fleet.workers import Worker, WorkerPool
from router.metrics import Children, Metrics
from router.placement.policies import (
    Decision,
    Policy,
    Rehome,
    Route,
    SlowStart,
    build_policy,
    can_take,
)
from router.placement.policies.base import available
from router.placement.policies.bounded_load import caps
from router.placement.served import ServedLog
from router.placement.session import RoutingKey
from router.store import SessionStore
from router.store.writes import BackgroundWrites

__all__ = ["Balancer", "Decision", "Placement", "PlacementContext", "Rehome", "Route"]

log = logging.getLogger("kvrouter.placement")

SERVED_CAPACITY = 200_000


class PlacementContext(NamedTuple):
    """What one decision is about: the key's ring position (`hash_key`, None for requests
    without a key), the workers not to use (`avoid`: already tried for this request), the
    worker holding the session's cache after an earlier move (`pinned`), the size of the
    request body in bytes (`size`: what a move would have to recompute), and a draining worker
    this session is existing on, which keeps it while its drain lasts (`existing`). A named
    tuple, immutable and cheap to build: one is built per attempt."""

    hash_key: str | None
    avoid: Collection[str] = ()
    pinned: str | None = None
    size: int = 0
    existing: str | None = None


class Balancer:
    """The pure decision: one policy over one pool, rebuilt only when membership, state or
    weights change."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: RoutingSettings | None = None,
        *,
        loads: Loads | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        settings = settings or RoutingSettings()
        self.loads = loads if loads is not None else Loads(
            LoadSettings(), settings.saturation, clock
        )
        self._clock = clock
        self._rng = rng
        self._by_name: dict[str, Worker] = {}
        self._ready: tuple[Worker, ...] = ()
        self._healthy = (0, 0)
        self.degraded = False
        self._unsubscribe: Callable[[], None] | None = None
        self._pool = pool
        self.reconfigure(settings)

    def reconfigure(self, settings: RoutingSettings) -> None:
        """Apply new routing settings: the policy is built again over the same pool (the
        load figures' owner, the root, applies `routing.saturation` to them)."""
        self._settings = settings
        self.slow_start = SlowStart(settings.slow_start, self._clock)
        self.policy: Policy = build_policy(
            settings, self.slow_start, self.loads, self._clock, self._rng
        )
        self._return_when_healthy = settings.pins.return_home == "when_healthy"
        self._refuse_when_degraded = settings.degraded.action == "refuse"
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._unsubscribe = self._pool.subscribe(self._on_pool_change)

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def pool(self) -> WorkerPool:
        return self._pool

    def worker(self, name: str) -> Worker | None:
        return self._by_name.get(name)

    @property
    def keyed(self) -> bool:
        """Whether the policy places by key, so pins and re-homing mean something."""
        return self.policy.keyed

    def _on_pool_change(self, pool: WorkerPool) -> None:
        workers = tuple(pool)
        self._by_name = {w.name: w for w in workers}
        self._ready = available(workers)
        self.slow_start.observe(workers)
        self.policy.update(workers)
        total = sum(w.weight for w in workers)
        healthy = sum(w.weight for w in workers if w.available)
        self._healthy = (sum(1 for w in workers if w.available), len(workers))
        self.degraded = total > 0 and healthy / total < self._settings.degraded.min_healthy

    def ring_home(self, key: str) -> Worker | None:
        """The worker a key hashes to, whatever its health; None for policies without keys."""
        return self.policy.ring_home(key)

    def fleet_full(self, ahead: int = 1) -> bool:
        """Whether a request sent now would wait at every worker it could go to (available:
        healthy, not ejected, not draining): `Loads.full` one request ahead, the test that
        `routing.saturation` holds for `hold` before placement counts a worker saturated;
        with `ahead` = n, whether no worker has n places free. False with no worker
        available: placement answers that (a 503), nothing is gained by waiting."""
        ready, would_wait = self._waits(ahead)
        return bool(ready) and all(map(would_wait, ready))

    def crowded(self, ahead: int = 1) -> tuple[str, ...]:
        """The available workers where a request sent now would wait (with `ahead` = n: that
        have fewer than n places free; see `fleet_full`)."""
        ready, would_wait = self._waits(ahead)
        return tuple(worker.name for worker in ready if would_wait(worker))

    def _waits(self, ahead: int) -> tuple[tuple[Worker, ...], Callable[[Worker], bool]]:
        """The available workers, and the test of one: bounded_load's caps are worked out
        only if a worker's figures are stale, so a fleet with room answers in a step."""
        ready, loads, now = self._ready, self.loads, self._clock()
        cap_of: list[Callable[[Worker], int]] = []

        def would_wait(worker: Worker) -> bool:
            if loads.fresh(worker, now):
                return loads.full(worker, 0, now, ahead)
            if not cap_of:
                cap_of.append(caps(ready, self.slow_start.weight, self._settings.load_factor))
            return loads.full(worker, cap_of[0](worker), now, ahead)

        return ready, would_wait

    def decide(self, context: PlacementContext) -> Decision:
        """A worker for this attempt; raises NoHealthyWorker (or DegradedRefusal) when none
        may take it."""
        existing = context.existing
        if existing is not None and existing not in context.avoid:
            holder = self._by_name.get(existing)
            if holder is not None:  # a draining worker finishing the sessions it holds
                return Decision(holder, Route.AFFINITY, holder)
        decision = self._decide(context.hash_key, context.avoid, context.pinned, context.size)
        if self.degraded and self._refuse_when_degraded and decision.route is not Route.AFFINITY:
            healthy, total = self._healthy
            raise DegradedRefusal(
                f"only {healthy} of {total} workers are healthy (below routing.degraded."
                f"min_healthy = {self._settings.degraded.min_healthy}); with routing.degraded."
                "action = refuse, requests whose own worker cannot take them are refused"
            )
        return decision

    def choose(
        self,
        key: str | None,
        exclude: Collection[str] = (),
        pinned: str | None = None,
        size: int = 0,
    ) -> Decision:
        """`decide` with the context's parts given one by one (tests, benchmarks)."""
        return self.decide(PlacementContext(key, exclude, pinned, size))

    def _decide(
        self, key: str | None, avoid: Collection[str], pinned: str | None, size: int
    ) -> Decision:
        pin = self._by_name.get(pinned) if pinned is not None and key is not None else None
        if pin is None or not self.policy.keyed:
            return self.policy.choose(key, avoid, size=size)
        if self._return_when_healthy and self._ring_home_can_take(key, pin, avoid):
            return self._return_home(key, pin, avoid, size)
        return self.policy.choose(key, avoid, prefer=pin, size=size)

    def _ring_home_can_take(self, key: str, pin: Worker, avoid: Collection[str]) -> bool:
        home = self.policy.ring_home(key)
        return (
            home is not None
            and home is not pin
            and can_take(home, avoid)
            and self.slow_start.admits(home, key)
        )

    def _return_home(
        self, key: str, pin: Worker, avoid: Collection[str], size: int
    ) -> Decision:
        """The ring decides again although the cache is on `pin`: count the move back."""
        decision = self.policy.choose(key, avoid, size=size)
        if decision.worker is pin:
            return Decision(pin, Route.AFFINITY, pin)
        return decision._replace(
            cache_holder=pin, rehomed=decision.rehomed or Rehome.RETURN_HOME
        )


class Placement:
    """The async shell: reads the session's pin, decides, keeps the pin in step; owns its
    pending pin writes."""

    def __init__(
        self,
        balancer: Balancer,
        store: SessionStore,
        settings: PinSettings,
        metrics: Metrics,
        *,
        drains: Drains | None = None,
        drain: DrainSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.balancer = balancer
        self._pool = balancer.pool
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._drains = drains
        drain = drain or DrainSettings()
        self._served = ServedLog(store, drain.idle, SERVED_CAPACITY, clock)
        pin_operations = Children(metrics.pin_operations)  # one dict lookup per count
        self._writes = BackgroundWrites(
            store.in_process,
            lambda action, outcome: pin_operations(action, outcome).inc(),
            "pin",
        )
        self._rehomed = Children(metrics.rehomed)
        self.reconfigure(settings, drain)

    def reconfigure(self, settings: PinSettings, drain: DrainSettings | None = None) -> None:
        """Apply new pin and drain settings (and the balancer's policy, if it changed)."""
        balancer, metrics = self.balancer, self._metrics
        self._settings = settings
        if drain is not None:
            self._served.reconfigure(drain.idle)
        self._pins = settings.enabled and balancer.keyed
        self._keyed = balancer.keyed
        metrics.set_policy(balancer.name)
        self._placed = {r: metrics.placements.labels(balancer.name, r.value) for r in Route}

    async def place(
        self, key: RoutingKey, avoid: Collection[str] = (), size: int = 0
    ) -> Decision:
        """The decision for one attempt; `avoid` names the workers already tried, `size` is
        the request body's length."""
        pinned = await self._pinned(key)
        hash_key = key.hash_key
        existing = None
        drains = self._drains
        if drains is not None and drains.keeping and hash_key is not None:
            existing = await self._existing(key, hash_key)
        decision = self.balancer.decide(
            PlacementContext(hash_key, avoid, pinned, size, existing)
        )
        self._placed[decision.route].inc()
        if decision.rehomed is not None:
            self._rehomed(decision.rehomed.value).inc()
        if hash_key is not None and self._keyed:
            worker = decision.worker
            if self._note_served(key, hash_key, worker):
                await self._write("served", self._served.write(key, worker.name))
        if self._pins and key.session is not None:
            await self._record(key, decision, pinned)
        return decision

    def _note_served(self, key: RoutingKey, hash_key: str, worker: Worker) -> bool:
        """Note the worker this keyed request goes to; True when the shared record is due."""
        now = self._clock()
        self._pool.placed_keyed(worker, now)
        return self._served.note(key, hash_key, worker.name, now)

    async def _existing(self, key: RoutingKey, hash_key: str) -> str | None:
        """The draining worker that served this session within `drain.idle`, while its drain
        still keeps sessions (see `router.placement.served`). Asked of the record, not of the
        ring: a weight change during the drain may have moved the key's ring home."""
        drains = self._drains
        try:
            served = await self._served.served_by(key, hash_key, self._settings.store_timeout)
        except Exception as err:  # unknown: treat the session as new (it moves)
            self._metrics.pin_operations.labels("served_read", "error").inc()
            log.debug("served read for %s failed: %r", hash_key, err)
            return None
        worker = self.balancer.worker(served) if served is not None else None
        if worker is None or drains is None or not drains.keeps_sessions(worker):
            return None
        return worker.name

    async def preview(self, key: RoutingKey) -> tuple[str | None, Decision | None]:
        """Where `key` would be placed now (the pin honoured as `place` would), without
        counting or writing anything: (pinned worker, decision or None if none can take it)."""
        pinned = await self._pinned(key)
        hash_key = key.hash_key
        existing = None
        if self._drains is not None and self._drains.keeping and hash_key is not None:
            existing = await self._existing(key, hash_key)
        try:
            return pinned, self.balancer.decide(
                PlacementContext(hash_key, (), pinned, existing=existing)
            )
        except NoHealthyWorker:
            return pinned, None

    async def _pinned(self, key: RoutingKey) -> str | None:
        if not self._pins or key.session is None:
            return None
        try:
            if self._store.in_process:  # nothing to wait for: no timer needed
                return await self._store.get_pin(key.tenant, key.session)
            async with asyncio.timeout(self._settings.store_timeout):
                return await self._store.get_pin(key.tenant, key.session)
        except Exception as err:  # any store failure: route on the ring alone
            self._metrics.pin_operations.labels("read", "error").inc()
            log.debug("pin read for %s/%s failed: %r", key.tenant, key.session, err)
            return None

    async def _record(self, key: RoutingKey, decision: Decision, pinned: str | None) -> None:
        """Keep the pin in step with where the session's cache now is."""
        tenant, session = key.tenant, key.session or ""
        worker = decision.worker.name
        ttl = self._settings.ttl
        if worker == pinned:
            await self._write("refresh", self._store.set_pin(tenant, session, worker, ttl))
        elif pinned is None and decision.route is Route.AFFINITY:
            return
        elif decision.worker is self.balancer.ring_home(key.hash_key or ""):
            if pinned is not None:
                delete = self._store.delete_pin(tenant, session)
                await self._write("delete", delete, join=True)
        else:
            await self._write("set", self._store.set_pin(tenant, session, worker, ttl), join=True)

    async def _write(
        self, action: str, write: Coroutine[Any, Any, None], *, join: bool = False
    ) -> None:
        """An in-process store's write is done now (it cannot block); any other runs in the
        background, off the request's path, except that a `join`ed one (a move) is waited for
        up to `store_timeout` before the request goes on (past that it finishes in the
        background, within its own timeout)."""
        wait = self._settings.store_timeout if join else 0.0
        await self._writes.write(action, write, wait=wait)

    async def close(self) -> None:
        """Let pending pin writes finish (bounded by their timeout)."""
        await self._writes.close()
