"""Membership: the one path by which workers join, change and leave the pool.

A discovery source (static, DNS, Kubernetes) publishes whole lists; `apply` works out the
difference against the pool, in one batch (placement is rebuilt once per list):

- a new ready member joins, with slow start (placement ramps its share up);
- a member that is no longer listed is drained and then removed (`router.fleet.drain`): its
  existing sessions finish on it, new ones go elsewhere;
- a member listed as not ready (a terminating pod that still serves) is drained, and removed
  once it is no longer listed; listed as ready again before that, its drain is cancelled;
- a changed weight or engine is applied in place; a changed URL under the same name is a new
  worker (the old one is removed at once: its address no longer serves that name).

A drain begun through the admin API is the operator's: discovery never cancels it.

When a source fails, the last good list stays in use; `DiscoveryStatus` says so (metrics,
one log line per failure streak, and a detail in `/readyz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from router.fleet.discovery.base import Member, Source
from router.fleet.drain import Drains
from router.fleet.workers import Worker, WorkerPool
from router.metrics import Metrics

log = logging.getLogger("kvrouter.membership")

DISCOVERY_DRAINS = frozenset({"removed", "terminating"})


@dataclass(slots=True)
class DiscoveryStatus:
    """How the discovery source is doing, for `/readyz` and the admin API."""

    source: str
    ok: bool = False
    lists: int = 0
    last_error: str | None = None
    failing_since: float | None = None  # Unix time of the first failure in this streak
    last_success: float | None = None  # Unix time

    def describe(self) -> dict[str, object]:
        return asdict(self)


class Membership:
    """Applies published lists to the pool; runs the discovery source."""

    def __init__(
        self,
        pool: WorkerPool,
        drains: Drains,
        metrics: Metrics,
        default_engine: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._drains = drains
        self._metrics = metrics
        self._default_engine = default_engine
        self._wall_clock = wall_clock
        self._task: asyncio.Task[None] | None = None
        self._on_removed: list[Callable[[Worker], None]] = []
        self.status = DiscoveryStatus("static")
        drains.on_removed(self._removed)

    def on_removed(self, callback: Callable[[Worker], None]) -> None:
        """Call `callback` with every worker that leaves the pool (to close what it held)."""
        self._on_removed.append(callback)

    def reconfigure(self, default_engine: str) -> None:
        self._default_engine = default_engine

    # -- the sink a source reports to

    def publish(self, members: Sequence[Member]) -> None:
        status = self.status
        if not status.ok and status.failing_since is not None:
            log.warning("discovery (%s) recovered: %d workers listed", status.source, len(members))
        status.ok, status.failing_since, status.last_error = True, None, None
        status.lists += 1
        status.last_success = self._wall_clock()
        self._metrics.discovery_up.labels(status.source).set(1)
        self._metrics.discovery_last_success.labels(status.source).set(status.last_success)
        self.apply(members)

    def failed(self, reason: str) -> None:
        status = self.status
        self._metrics.discovery_failures.labels(status.source).inc()
        self._metrics.discovery_up.labels(status.source).set(0)
        if status.failing_since is None:
            status.failing_since = self._wall_clock()
            log.warning(
                "discovery (%s) failed, keeping the last good list of %d workers: %s",
                status.source, len(self._pool), reason,
            )  # fmt: skip
        status.ok, status.last_error = False, reason

    # -- the one path

    def apply(self, members: Sequence[Member]) -> None:
        """Make the pool what `members` says (see the module docstring)."""
        wanted: dict[str, Member] = {}
        for member in members:
            wanted.setdefault(member.name, member)
        pool, drains = self._pool, self._drains
        with pool.batch():
            for worker in list(pool):
                member = wanted.get(worker.name)
                if member is None:
                    if drains.reason(worker) != "removed":
                        drains.begin(worker, remove=True, reason="removed")
                elif member.url != worker.url:
                    self._replace(worker, member)
                else:
                    self._update(worker, member)
            for name, member in wanted.items():
                if name not in pool and member.ready:
                    pool.add(self._worker(member))
                    self._metrics.membership_changes.labels("added").inc()
                    log.info("worker %s joined (%s)", name, member.url)

    def _update(self, worker: Worker, member: Member) -> None:
        drains, changes = self._drains, self._metrics.membership_changes
        reason = drains.reason(worker)
        if not member.ready:
            if reason is None:
                drains.begin(worker, remove=False, reason="terminating")
        elif reason in DISCOVERY_DRAINS:
            drains.cancel(worker)
            changes.labels("undrained").inc()
        if worker.weight != member.weight:
            self._pool.set_weight(worker, member.weight)
            changes.labels("updated").inc()
        engine = member.engine or self._default_engine
        if worker.engine != engine:
            self._pool.set_engine(worker, engine)
            changes.labels("updated").inc()

    def _replace(self, worker: Worker, member: Member) -> None:
        log.warning(
            "worker %s moved from %s to %s: the old address is dropped",
            worker.name, worker.url, member.url,
        )  # fmt: skip
        self._drains.forget(worker)
        self._pool.remove(worker.name)
        self._removed(worker)
        if member.ready:
            self._pool.add(self._worker(member))
            self._metrics.membership_changes.labels("added").inc()

    def _worker(self, member: Member) -> Worker:
        return Worker(
            member.name, member.url, member.weight, engine=member.engine or self._default_engine
        )

    def _removed(self, worker: Worker) -> None:
        self._metrics.membership_changes.labels("removed").inc()
        self._metrics.forget_worker(worker.name)
        for callback in self._on_removed:
            callback(worker)
        log.info("worker %s left the pool", worker.name)

    # -- the source's task

    def run(self, source: Source) -> None:
        """Run `source` in the background, in place of any source running now."""
        self._cancel()
        if source.kind != self.status.source:
            self.status = DiscoveryStatus(source.kind)
        self._task = asyncio.get_running_loop().create_task(
            self._run(source), name=f"discovery:{source.kind}"
        )

    async def _run(self, source: Source) -> None:
        try:
            await source.run(self)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a source must not end; if it does, say so loudly
            log.exception("discovery (%s) stopped", source.kind)
            self.failed(f"the {source.kind} source stopped: {err!r}")

    def _cancel(self) -> asyncio.Task[None] | None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def stop(self) -> None:
        task = self._cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
