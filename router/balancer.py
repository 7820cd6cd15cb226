"""Placement: which worker serves a request. Pure and synchronous, no I/O.

The balancer keeps the policy named by `routing.policy` in step with the pool and adds what is
the same for every policy: slow start for workers that rejoin, sticky moves (the caller looks up
a session's pin and passes it in; the pinned worker is tried first), when a moved session goes
back home, and what happens when most workers are down.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection
from dataclasses import replace

from router.config import RoutingSettings
from router.errors import DegradedRefusal
from router.policies import Decision, Policy, Rehome, Route, SlowStart, build_policy, can_take
from router.workers import Worker, WorkerPool

__all__ = ["Balancer", "Decision", "Rehome", "Route"]


class Balancer:
    """One policy over one pool; rebuilt only when membership, state or weights change."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: RoutingSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings = settings or RoutingSettings()
        self.slow_start = SlowStart(settings.slow_start, clock)
        self.policy: Policy = build_policy(settings, self.slow_start, clock, rng)
        self._return_when_healthy = settings.pins.return_home == "when_healthy"
        self._refuse_when_degraded = settings.degraded.action == "refuse"
        self._by_name: dict[str, Worker] = {}
        self._healthy = (0, 0)
        self.degraded = False
        pool.subscribe(self._on_pool_change)

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def keyed(self) -> bool:
        """Whether the policy places by key, so pins and re-homing mean something."""
        return self.policy.keyed

    def _on_pool_change(self, pool: WorkerPool) -> None:
        workers = tuple(pool)
        self._by_name = {w.name: w for w in workers}
        self.slow_start.observe(workers)
        self.policy.update(workers)
        total = sum(w.weight for w in workers)
        healthy = sum(w.weight for w in workers if w.available)
        self._healthy = (sum(1 for w in workers if w.available), len(workers))
        self.degraded = total > 0 and healthy / total < self._settings.degraded.min_healthy

    def home(self, key: str) -> Worker | None:
        """The worker a key hashes to, whatever its health; None for policies without keys."""
        return self.policy.home(key)

    def choose(
        self, key: str | None, exclude: Collection[str] = (), pinned: str | None = None
    ) -> Decision:
        """Pick a worker for `key`; `exclude` names workers already tried for this request and
        `pinned` the worker holding the session's cache after an earlier move, if any."""
        decision = self._choose(key, exclude, pinned)
        if self.degraded and self._refuse_when_degraded and decision.route is not Route.AFFINITY:
            healthy, total = self._healthy
            raise DegradedRefusal(
                f"only {healthy} of {total} workers are healthy (below routing.degraded."
                f"min_healthy = {self._settings.degraded.min_healthy}); with routing.degraded."
                "action = refuse, requests whose own worker cannot take them are refused"
            )
        return decision

    def _choose(self, key: str | None, exclude: Collection[str], pinned: str | None) -> Decision:
        pin = self._by_name.get(pinned) if pinned is not None and key is not None else None
        if pin is None or not self.policy.keyed:
            return self.policy.choose(key, exclude)
        if self._return_when_healthy and self._home_can_take(key, pin, exclude):
            return self._return_home(key, pin, exclude)
        return self.policy.choose(key, exclude, prefer=pin)

    def _home_can_take(self, key: str, pin: Worker, exclude: Collection[str]) -> bool:
        home = self.policy.home(key)
        return (
            home is not None
            and home is not pin
            and can_take(home, exclude)
            and self.slow_start.admits(home, key)
        )

    def _return_home(self, key: str, pin: Worker, exclude: Collection[str]) -> Decision:
        """The ring decides again although the cache is on `pin`: count the move back."""
        decision = self.policy.choose(key, exclude)
        if decision.worker is pin:
            return Decision(pin, Route.AFFINITY, pin)
        return replace(decision, home=pin, rehomed=decision.rehomed or Rehome.RETURN_HOME)
