"""Placement decision cost: how long one choice takes with 64 workers, per policy.

    python -m router.tooling.bench.decision_cost [--workers 64] [--decisions 200000]

Times `Balancer.choose` (the pure choice) and `Placement.place` (the choice plus the session's
pin read from the in-memory store), one call at a time with `perf_counter_ns`, over random
session keys while worker in-flight counts change as they would under load, and with fresh
load figures for every worker (a quarter of them saturated, so cost_aware weighs moves).
`Placement.place` is timed twice: with no drain (every keyed placement notes the worker that
served it, for drains) and with one worker draining, when each placement also asks whether the
session is existing on it (the in-process record). Prints p50, p99 and p99.9 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import get_args

from router.config import DrainSettings, LoadSettings, PolicyName, RoutingSettings
from router.fleet.drain import Drains
from router.fleet.engines import LoadReading
from router.fleet.load import Loads
from router.fleet.workers import Worker, WorkerPool
from router.metrics import Metrics
from router.placement.place import Balancer, Placement
from router.placement.session import RoutingKey
from router.store import MemoryStore

POLICIES = get_args(PolicyName)
BODY_BYTES = 24_000  # a chat of about 5,000 tokens: what cost_aware weighs a move against


def make_pool(count: int) -> WorkerPool:
    return WorkerPool(
        Worker(f"w{i}", f"http://10.0.{i // 250}.{i % 250}:8000", service_seconds=2.0)
        for i in range(count)
    )


def percentiles(samples: Sequence[int]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # noqa: E731
    return pick(0.5), pick(0.99), pick(0.999)


def churn(pool: WorkerPool, rng: random.Random) -> Callable[[Worker], None]:
    """Keep in-flight counts moving like a loaded router's: each choice takes a lease on the
    chosen worker and one random open lease ends."""
    workers = list(pool)
    open_leases = [pool.lease(w) for w in workers for _ in range(rng.randint(4, 24))]

    def step(chosen: Worker) -> None:
        open_leases.append(pool.lease(chosen))
        open_leases.pop(rng.randrange(len(open_leases))).release()

    return step


def loaded(pool: WorkerPool, rng: random.Random) -> Loads:
    """Fresh figures for every worker; every fourth one has requests waiting."""
    routing = RoutingSettings()
    loads = Loads(LoadSettings(stale_after=1e9), routing.saturation.model_copy(update={"hold": 0}))
    for i, worker in enumerate(pool):
        worker_waiting = 3 if i % 4 == 0 else 0
        loads.record(worker, LoadReading(rng.randint(8, 32), worker_waiting, rng.random()))
    return loads


def time_choose(policy: str, workers: int, decisions: int, seed: int) -> list[int]:
    pool = make_pool(workers)
    rng = random.Random(seed)
    balancer = Balancer(
        pool, RoutingSettings(policy=policy), loads=loaded(pool, rng), rng=random.Random(seed)
    )
    keys = [f"tenant\x1fsession-{rng.randrange(10 * decisions)}" for _ in range(decisions)]
    step = churn(pool, rng)
    clock = time.perf_counter_ns
    samples = []
    for key in keys:
        started = clock()
        decision = balancer.choose(key, size=BODY_BYTES)
        samples.append(clock() - started)
        step(decision.worker)
    return samples


async def time_place(workers: int, decisions: int, seed: int, draining: bool) -> list[int]:
    pool = make_pool(workers)
    rng = random.Random(seed)
    routing = RoutingSettings()
    balancer = Balancer(pool, routing, loads=loaded(pool, rng))
    metrics = Metrics()
    drains = Drains(pool, DrainSettings(), metrics)
    if draining:
        drains.begin(next(iter(pool)), remove=False, reason="admin")
    placement = Placement(balancer, MemoryStore(), routing.pins, metrics, drains=drains)
    keys = [
        RoutingKey("tenant", f"session-{rng.randrange(10 * decisions)}") for _ in range(decisions)
    ]
    step = churn(pool, rng)
    clock = time.perf_counter_ns
    samples = []
    for key in keys:
        started = clock()
        decision = await placement.place(key, (), BODY_BYTES)
        samples.append(clock() - started)
        step(decision.worker)
    await placement.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--place-only", action="store_true", help="skip the policies' rows")
    ns = parser.parse_args(argv)
    logging.getLogger("kvrouter").setLevel(logging.ERROR)  # the drain's own log line
    print(f"placement decision cost, {ns.workers} workers, {ns.decisions} decisions each (µs)")
    print(f"{'step':<40}{'p50':>8}{'p99':>8}{'p99.9':>8}")
    for policy in () if ns.place_only else POLICIES:
        time_choose(policy, ns.workers, 2_000, ns.seed)  # warm up
        p50, p99, p999 = percentiles(time_choose(policy, ns.workers, ns.decisions, ns.seed))
        print(f"{'choose: ' + policy:<40}{p50:>8.1f}{p99:>8.1f}{p999:>8.1f}")
    for draining, label in ((False, ""), (True, ", 1 draining")):
        samples = asyncio.run(time_place(ns.workers, ns.decisions, ns.seed, draining))
        p50, p99, p999 = percentiles(samples)
        print(f"{'place: cost_aware + pin read' + label:<40}{p50:>8.1f}{p99:>8.1f}{p999:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
