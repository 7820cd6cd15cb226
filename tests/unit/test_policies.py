"""Every placement policy with plain values: availability, weights, bounded loads, routes."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter

import pytest

from router.config import RoutingSettings
from router.errors import NoHealthyWorker
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.placement.place import Balancer
from router.placement.policies import Rehome, Route
from router.placement.policies.bounded_load import cap

POLICIES = ["consistent_hash", "bounded_load", "least_inflight", "round_robin", "random"]
KEYS = [f"t\x1fs{i}" for i in range(4000)]


def make_pool(count: int = 4, **weights: float) -> WorkerPool:
    return WorkerPool(
        Worker(f"w{i}", f"http://10.0.0.{i}:8000", weights.get(f"w{i}", 1.0)) for i in range(count)
    )


def routing(policy: str, **extra: object) -> RoutingSettings:
    """No slow start, and no floor: bounded_load's cap alone decides (its floor has a test)."""
    return RoutingSettings.model_validate(
        {"policy": policy, "slow_start": {"window": 0}, "saturation": {"floor": 0}, **extra}
    )


def balancer_for(policy: str, pool: WorkerPool, **extra: object) -> Balancer:
    return Balancer(pool, routing(policy, **extra), rng=random.Random(5))


@pytest.mark.parametrize("policy", POLICIES)
def test_no_policy_sends_to_unavailable_or_already_tried_workers(policy):
    pool = make_pool(4)
    balancer = balancer_for(policy, pool)
    pool.set_state(pool.get("w1"), WorkerState.UNHEALTHY)
    pool.set_draining(pool.get("w2"), True)
    chosen = {balancer.choose(k, exclude=["w3"]).worker.name for k in KEYS[:300]}
    assert chosen == {"w0"}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_raises_no_healthy_worker_when_none_can_take_the_request(policy):
    pool = make_pool(2)
    balancer = balancer_for(policy, pool)
    pool.set_state(pool.get("w0"), WorkerState.UNHEALTHY)
    with pytest.raises(NoHealthyWorker):
        balancer.choose("k", exclude=["w1"])
    with pytest.raises(NoHealthyWorker):
        balancer.choose(None, exclude=["w1"])


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_reports_its_name(policy):
    assert balancer_for(policy, make_pool()).name == policy


@pytest.mark.parametrize("policy", ["consistent_hash", "bounded_load", "round_robin", "random"])
def test_idle_workers_get_keys_in_proportion_to_their_weights(policy):
    balancer = balancer_for(policy, make_pool(2, w0=3.0))
    counts = Counter(balancer.choose(k).worker.name for k in KEYS)
    assert 2.5 <= counts["w0"] / counts["w1"] <= 3.5


def test_least_inflight_balances_open_requests_per_unit_of_weight():
    pool = make_pool(2, w0=3.0)
    balancer = balancer_for("least_inflight", pool)
    for _ in range(40):
        balancer.choose(None).worker.inflight += 1
    assert pool.get("w0").inflight == 30 and pool.get("w1").inflight == 10


def test_round_robin_interleaves_workers_by_weight():
    balancer = balancer_for("round_robin", make_pool(3, w0=2.0))
    sequence = [balancer.choose("same-key").worker.name for _ in range(8)]
    assert Counter(sequence) == {"w0": 4, "w1": 2, "w2": 2}
    assert all(a != b or a == "w0" for a, b in itertools.pairwise(sequence))


@pytest.mark.parametrize("policy", ["least_inflight", "round_robin", "random"])
def test_baselines_ignore_keys_and_report_every_request_unkeyed(policy):
    balancer = balancer_for(policy, make_pool(4))
    decisions = [balancer.choose("one-session") for _ in range(40)]
    assert {d.route for d in decisions} == {Route.UNKEYED}
    assert len({d.worker.name for d in decisions}) > 1
    assert all(d.cache_holder is None and d.rehomed is None for d in decisions)


def test_bounded_load_is_consistent_hashing_while_no_worker_is_full():
    pool = make_pool(4)
    bounded = balancer_for("bounded_load", pool)
    plain = balancer_for("consistent_hash", make_pool(4))
    for key in KEYS[:500]:
        decision = bounded.choose(key)
        assert decision.route is Route.AFFINITY
        assert decision.worker.name == plain.choose(key).worker.name


def test_a_full_home_spills_to_the_next_worker_on_the_ring_and_says_why():
    pool = make_pool(4)
    balancer = balancer_for("bounded_load", pool)
    home = balancer.choose("hot").worker
    home.inflight = 4  # cap with 4 open + 1 new over 4 workers at c=1.25 is ceil(1.56) = 2
    decision = balancer.choose("hot")
    assert decision.worker is not home and decision.route is Route.SPILL
    assert decision.cache_holder is home and decision.rehomed is Rehome.OVERLOADED
    plain = balancer_for("consistent_hash", pool)
    assert decision.worker is plain.choose("hot", exclude=[home.name]).worker
    home.inflight = 0
    assert balancer.choose("hot").route is Route.AFFINITY


def test_the_cap_follows_weights():
    assert cap(1.25, 7, 1.0, 4.0) == 3
    assert cap(1.25, 7, 2.0, 5.0) == 4
    assert cap(1.0, 3, 1.0, 4.0) == 1


async def test_bounded_load_keeps_every_worker_under_its_cap_under_concurrent_requests():
    """The proxy's own sequence: choose, count the request in flight, await, release."""
    pool = make_pool(4, w0=2.0)
    balancer = balancer_for("bounded_load", pool, load_factor=1.25)
    rng = random.Random(11)
    hot = [f"t\x1fhot-{i}" for i in range(3)]
    over: list[tuple[str, int, int]] = []
    routes: Counter[Route] = Counter()
    peak: Counter[str] = Counter()

    async def request(key: str, delay: float) -> None:
        await asyncio.sleep(delay)
        total = sum(w.inflight for w in pool)
        decision = balancer.choose(key)
        worker = decision.worker
        limit = cap(1.25, total, worker.weight, 5.0)
        worker.inflight += 1
        routes[decision.route] += 1
        peak[worker.name] = max(peak[worker.name], worker.inflight)
        if worker.inflight > limit:
            over.append((worker.name, worker.inflight, limit))
        try:
            await asyncio.sleep(rng.uniform(0.001, 0.02))
        finally:
            worker.inflight -= 1

    keys = [rng.choice(hot) if rng.random() < 0.8 else rng.choice(KEYS) for _ in range(1500)]
    await asyncio.gather(*(request(k, rng.uniform(0, 0.3)) for k in keys))
    assert not over, f"{len(over)} placements above the cap, first {over[:3]}"
    assert routes[Route.SPILL] > 0 and routes[Route.AFFINITY] > routes[Route.SPILL]
    assert all(w.inflight == 0 for w in pool)
    assert peak["w0"] > max(peak["w1"], peak["w2"], peak["w3"])


@pytest.mark.parametrize(
    ("state", "ejected_for", "reason"),
    [
        (WorkerState.UNHEALTHY, 0.0, Rehome.DEAD),
        (WorkerState.UNHEALTHY, 30.0, Rehome.EJECTED),
        (None, 0.0, Rehome.DRAINING),
    ],
)
def test_a_fallback_names_why_the_home_could_not_take_it(state, ejected_for, reason):
    now = 1000.0
    pool = make_pool(4)
    balancer = Balancer(pool, routing("consistent_hash"), clock=lambda: now)
    home = balancer.choose("k").worker
    home.ejected_until = now + ejected_for
    if state is None:
        pool.set_draining(home, True)
    else:
        pool.set_state(home, state)
    decision = balancer.choose("k")
    assert decision.route is Route.FALLBACK and decision.rehomed is reason
    assert decision.cache_holder is home


def test_a_retry_away_from_a_healthy_home_is_counted_as_a_retry():
    balancer = balancer_for("bounded_load", make_pool(4))
    home = balancer.choose("k").worker
    decision = balancer.choose("k", exclude=[home.name])
    assert decision.route is Route.FALLBACK and decision.rehomed is Rehome.RETRY


def test_unkeyed_requests_on_hash_policies_go_to_the_least_loaded_worker():
    pool = make_pool(3)
    balancer = balancer_for("bounded_load", pool)
    pool.get("w0").inflight = 4
    pool.get("w2").inflight = 2
    decision = balancer.choose(None)
    assert decision.worker.name == "w1" and decision.route is Route.UNKEYED


def test_bounded_load_never_spills_below_its_floor():
    pool = make_pool(4)
    balancer = balancer_for("bounded_load", pool, saturation={"floor": 6})
    home = balancer.choose("k").worker
    leases = [pool.lease(home) for _ in range(5)]  # the cap alone would be ceil(1.25*6/4) = 2
    assert balancer.choose("k").worker is home, "5 in flight, under the floor of 6"
    leases.append(pool.lease(home))
    spilled = balancer.choose("k")
    assert spilled.worker is not home and spilled.rehomed is Rehome.OVERLOADED
    for lease in leases:
        lease.release()
