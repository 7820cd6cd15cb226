from collections import Counter

import pytest

from router.config import RoutingSettings
from router.errors import DegradedRefusal, NoHealthyWorker
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.placement.place import Balancer, Route


def make_pool(count: int = 4, **weights: float) -> WorkerPool:
    return WorkerPool(
        Worker(f"w{i}", f"http://10.0.0.{i}:8000", weights.get(f"w{i}", 1.0)) for i in range(count)
    )


def placement(balancer: Balancer, keys: list[str]) -> dict[str, str]:
    return {k: balancer.choose(k).worker.name for k in keys}


KEYS = [f"tenant\x1fsession-{i}" for i in range(10_000)]
NO_SLOW_START = RoutingSettings.model_validate({"slow_start": {"window": 0}})


def test_same_key_always_lands_on_the_same_worker():
    balancer = Balancer(make_pool())
    first = placement(balancer, KEYS[:500])
    assert placement(balancer, KEYS[:500]) == first
    assert all(balancer.choose(k).route is Route.AFFINITY for k in KEYS[:500])


def test_ten_thousand_keys_spread_within_twenty_percent_of_the_mean():
    counts = Counter(placement(Balancer(make_pool()), KEYS).values())
    assert len(counts) == 4
    assert max(counts.values()) / (len(KEYS) / 4) <= 1.2


def test_dead_worker_moves_only_its_own_keys_and_all_replicas_agree():
    pool = make_pool()
    balancer = Balancer(pool)
    before = placement(balancer, KEYS)
    pool.set_state(pool.get("w2"), WorkerState.UNHEALTHY)
    after = placement(balancer, KEYS)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "w2"}
    assert all(balancer.choose(k).route is Route.FALLBACK for k in list(moved)[:50])
    replica_pool = make_pool()
    replica = Balancer(replica_pool)
    replica_pool.set_state(replica_pool.get("w2"), WorkerState.UNHEALTHY)
    assert placement(replica, KEYS[:2000]) == {k: after[k] for k in KEYS[:2000]}


def test_recovered_worker_takes_back_exactly_its_own_keys():
    pool = make_pool()
    balancer = Balancer(pool, NO_SLOW_START)
    before = placement(balancer, KEYS)
    pool.set_state(pool.get("w1"), WorkerState.UNHEALTHY)
    pool.set_state(pool.get("w1"), WorkerState.HEALTHY)
    assert placement(balancer, KEYS) == before


def test_excluded_workers_are_skipped_for_retries():
    balancer = Balancer(make_pool())
    first = balancer.choose("k").worker.name
    second = balancer.choose("k", exclude=[first])
    assert second.worker.name != first and second.route is Route.FALLBACK
    assert second.cache_holder is not None and second.cache_holder.name == first


def test_no_available_worker_raises_no_healthy_worker():
    pool = make_pool(2)
    balancer = Balancer(pool)
    for worker in pool:
        pool.set_state(worker, WorkerState.UNHEALTHY)
    with pytest.raises(NoHealthyWorker):
        balancer.choose("k")
    with pytest.raises(NoHealthyWorker):
        balancer.choose(None)


def test_weights_shift_the_share_of_keys():
    counts = Counter(placement(Balancer(make_pool(2, w0=3.0)), KEYS).values())
    assert 2.5 <= counts["w0"] / counts["w1"] <= 3.5


def test_unkeyed_requests_go_to_the_least_loaded_worker():
    pool = make_pool(3)
    balancer = Balancer(pool)
    pool.get("w0").inflight = 5
    pool.get("w1").inflight = 1
    pool.get("w2").inflight = 3
    decision = balancer.choose(None)
    assert decision.worker.name == "w1" and decision.route is Route.UNKEYED


def test_unkeyed_requests_rotate_over_idle_workers():
    balancer = Balancer(make_pool(4))
    assert {balancer.choose(None).worker.name for _ in range(8)} == {"w0", "w1", "w2", "w3"}


def test_draining_worker_takes_no_new_sessions():
    pool = make_pool()
    balancer = Balancer(pool)
    pool.set_draining(pool.get("w3"), True)
    assert "w3" not in set(placement(balancer, KEYS[:2000]).values())


def test_adding_a_worker_moves_about_a_fifth_of_keys():
    pool = make_pool(4)
    balancer = Balancer(pool, NO_SLOW_START)
    before = placement(balancer, KEYS)
    pool.add(Worker("w4", "http://10.0.0.4:8000"))
    after = placement(balancer, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "w4" for k in moved)
    assert 0.12 <= len(moved) / len(KEYS) <= 0.28


def pinned_setup(return_home: str = "on_expiry"):
    pool = make_pool()
    settings = RoutingSettings.model_validate(
        {"pins": {"return_home": return_home}, "slow_start": {"window": 0}}
    )
    balancer = Balancer(pool, settings)
    home = balancer.choose("k").worker
    other = next(w for w in pool if w is not home)
    return pool, balancer, home, other


def test_a_pinned_session_goes_to_its_pin_as_affinity():
    _, balancer, _, other = pinned_setup()
    decision = balancer.choose("k", pinned=other.name)
    assert decision.worker is other and decision.route is Route.AFFINITY
    assert decision.cache_holder is other and decision.rehomed is None


def test_a_dead_pin_falls_back_along_the_ring_and_names_the_reason():
    pool, balancer, home, other = pinned_setup()
    pool.set_state(other, WorkerState.UNHEALTHY)
    decision = balancer.choose("k", pinned=other.name)
    assert decision.worker is home and decision.route is Route.FALLBACK
    assert decision.cache_holder is other and decision.rehomed == "dead"


def test_on_expiry_keeps_the_session_on_its_pin_after_home_recovers():
    pool, balancer, home, other = pinned_setup("on_expiry")
    pool.set_state(home, WorkerState.UNHEALTHY)
    pool.set_state(home, WorkerState.HEALTHY)
    assert balancer.choose("k", pinned=other.name).worker is other


def test_when_healthy_sends_the_session_home_and_counts_the_move():
    pool, balancer, home, other = pinned_setup("when_healthy")
    decision = balancer.choose("k", pinned=other.name)
    assert decision.worker is home and decision.rehomed == "return_home"
    assert decision.cache_holder is other
    pool.set_state(home, WorkerState.UNHEALTHY)
    assert balancer.choose("k", pinned=other.name).worker is other


def test_a_pin_naming_a_removed_worker_is_ignored():
    pool, balancer, home, other = pinned_setup()
    pool.remove(other.name)
    assert balancer.choose("k", pinned=other.name).worker is home


def degraded_pool(action: str):
    pool = make_pool(4)
    settings = RoutingSettings.model_validate(
        {"degraded": {"min_healthy": 0.5, "action": action}, "slow_start": {"window": 0}}
    )
    balancer = Balancer(pool, settings)
    for name in ("w0", "w1", "w2"):
        pool.set_state(pool.get(name), WorkerState.UNHEALTHY)
    return pool, balancer


def test_with_most_workers_down_refuse_serves_only_sessions_whose_worker_is_up():
    _, balancer = degraded_pool("refuse")
    assert balancer.degraded
    served = refused = 0
    for key in KEYS[:400]:
        try:
            decision = balancer.choose(key)
        except DegradedRefusal as err:
            assert "routing.degraded" in err.message and err.status == 503
            refused += 1
        else:
            assert decision.route is Route.AFFINITY and decision.worker.name == "w3"
            served += 1
    assert served and refused > served
    with pytest.raises(DegradedRefusal):
        balancer.choose(None)


def test_with_most_workers_down_spread_places_everything_on_the_rest():
    _, balancer = degraded_pool("spread")
    assert {balancer.choose(k).worker.name for k in KEYS[:400]} == {"w3"}


def test_half_the_weight_healthy_is_not_degraded():
    pool = make_pool(4)
    balancer = Balancer(pool, RoutingSettings.model_validate({"degraded": {"action": "refuse"}}))
    pool.set_state(pool.get("w0"), WorkerState.UNHEALTHY)
    pool.set_state(pool.get("w1"), WorkerState.UNHEALTHY)
    assert not balancer.degraded
