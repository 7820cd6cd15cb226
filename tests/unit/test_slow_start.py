"""Slow start: a rejoining worker's share of keys and load ramps up over the window."""

from __future__ import annotations

import itertools
import random

import pytest

from router.config import RoutingSettings
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.placement.place import Balancer
from router.placement.policies import Rehome, Route

KEYS = [f"t\x1fs{i}" for i in range(6000)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(policy: str, window: float = 30.0, min_share: float = 0.1):
    clock = Clock()
    pool = WorkerPool(Worker(f"w{i}", f"http://10.0.0.{i}:8000") for i in range(4))
    settings = RoutingSettings.model_validate(
        {"policy": policy, "slow_start": {"window": window, "min_share": min_share}}
    )
    return pool, Balancer(pool, settings, clock=clock, rng=random.Random(1)), clock


def placement(balancer: Balancer) -> dict[str, str]:
    return {k: balancer.choose(k).worker.name for k in KEYS}


def test_workers_present_at_start_are_not_slow_started():
    pool, balancer, _ = make("consistent_hash")
    assert not balancer.slow_start.warming
    assert all(balancer.slow_start.share(w) == 1.0 for w in pool)


@pytest.mark.parametrize("policy", ["consistent_hash", "bounded_load"])
def test_a_rejoining_worker_takes_back_its_own_keys_gradually(policy):
    pool, balancer, clock = make(policy)
    before = placement(balancer)
    own = {k for k, w in before.items() if w == "w2"}
    pool.set_state(pool.get("w2"), WorkerState.UNHEALTHY)
    clock.now += 5
    pool.set_state(pool.get("w2"), WorkerState.HEALTHY)
    back: list[set[str]] = []
    for elapsed in (0, 10, 20, 29, 30):
        clock.now = 105.0 + elapsed
        now = placement(balancer)
        assert all(now[k] == before[k] for k in KEYS if k not in own), "only w2's keys move"
        back.append({k for k in own if now[k] == "w2"})
    shares = [len(b) / len(own) for b in back]
    assert 0.05 <= shares[0] <= 0.15 and 0.28 <= shares[1] <= 0.39 and shares[-1] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(back)), "no key flaps back"


def test_a_key_held_back_by_slow_start_is_counted_as_such():
    pool, balancer, _clock = make("consistent_hash", min_share=0.01)
    home = pool.get("w1")
    pool.set_state(home, WorkerState.UNHEALTHY)
    pool.set_state(home, WorkerState.HEALTHY)
    held = [d for d in (balancer.choose(k) for k in KEYS[:2000]) if d.cache_holder is home]
    assert any(d.rehomed is Rehome.SLOW_START and d.route is Route.FALLBACK for d in held)


def test_load_policies_scale_a_warming_workers_weight():
    pool, balancer, clock = make("round_robin", min_share=0.25)
    pool.set_state(pool.get("w0"), WorkerState.UNHEALTHY)
    pool.set_state(pool.get("w0"), WorkerState.HEALTHY)
    picks = [balancer.choose(None).worker.name for _ in range(130)]
    assert picks.count("w0") == 10  # share 0.25 of 3.25 total weight
    clock.now += 31
    picks = [balancer.choose(None).worker.name for _ in range(400)]
    assert picks.count("w0") == 100


def test_a_newly_added_worker_is_slow_started():
    pool, balancer, _ = make("consistent_hash")
    pool.add(Worker("w9", "http://10.0.0.9:8000"))
    assert balancer.slow_start.share(pool.get("w9")) == pytest.approx(0.1)


def test_a_zero_window_turns_slow_start_off():
    pool, balancer, _ = make("consistent_hash", window=0)
    pool.set_state(pool.get("w0"), WorkerState.UNHEALTHY)
    pool.set_state(pool.get("w0"), WorkerState.HEALTHY)
    assert not balancer.slow_start.warming


def test_the_only_worker_left_takes_keys_even_while_warming():
    pool, balancer, _ = make("consistent_hash")
    for name in ("w1", "w2", "w3"):
        pool.set_state(pool.get(name), WorkerState.UNHEALTHY)
    pool.set_state(pool.get("w0"), WorkerState.UNHEALTHY)
    pool.set_state(pool.get("w0"), WorkerState.HEALTHY)
    assert {balancer.choose(k).worker.name for k in KEYS[:200]} == {"w0"}
