"""The default policy's spill rule, decided with plain values: stay on the worker holding the
cache unless it is saturated and moving (recomputing the prompt) beats waiting there."""

from __future__ import annotations

import pytest

from router.config import LoadSettings, RoutingSettings
from router.fleet.engines import LoadReading
from router.fleet.load import Loads
from router.fleet.workers import Worker, WorkerPool
from router.placement.place import Balancer
from router.placement.policies import Rehome, Route

KEY = "acme\x1fchat-1"
PREFILL = 1000.0  # tokens a second
BYTES_PER_TOKEN = 4.0


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def setup(count: int = 4, hold: float = 0.0, floor: int = 8, service: float = 2.0):
    clock = Clock()
    routing = RoutingSettings.model_validate(
        {
            "policy": "cost_aware",
            "slow_start": {"window": 0},
            "saturation": {"hold": hold, "floor": floor},
            "cost": {"bytes_per_token": BYTES_PER_TOKEN, "prefill_tokens_per_second": PREFILL},
        }
    )
    pool = WorkerPool(Worker(f"w{i}", f"http://w{i}") for i in range(count))
    for worker in pool:
        worker.service_seconds = service
    loads = Loads(LoadSettings(stale_after=3.0), routing.saturation, clock)
    balancer = Balancer(pool, routing, loads=loads, clock=clock)
    for worker in pool:
        loads.record(worker, LoadReading(running=0, waiting=0, kv_usage=0.1), clock.now)
    return clock, balancer, loads, pool


def body_for(seconds: float) -> int:
    """A request body whose prompt takes `seconds` to recompute."""
    return int(seconds * PREFILL * BYTES_PER_TOKEN)


def busy(loads: Loads, worker: Worker, running: float, waiting: float, kv: float = 0.5):
    loads.record(worker, LoadReading(running=running, waiting=waiting, kv_usage=kv))


@pytest.mark.parametrize(
    ("running", "waiting", "kv", "recompute", "moves"),
    [
        (4, 0, 0.5, 0.1, False),  # not saturated: stay whatever the cost
        (32, 0, 0.6, 0.01, False),  # a full batch, nobody waiting: not saturated
        (4, 8, 0.5, 0.5, True),  # wait (8+1) x 2 s / 4 = 4.5 s > 0.5 s recompute: move
        (4, 8, 0.5, 9.0, False),  # wait 4.5 s < 9 s recompute: stay and wait
        (8, 1, 0.5, 0.2, True),  # wait (1+1) x 2 / 8 = 0.5 s > 0.2 s: move
        (8, 1, 0.5, 1.0, False),  # wait 0.5 s < 1 s: stay
        (16, 0, 0.97, 0.05, True),  # KV full: wait 2 / 16 = 0.125 s > 0.05 s: move
        (16, 0, 0.97, 0.5, False),  # KV full, long prompt: stay
    ],
)
def test_the_spill_rule_decision_table(running, waiting, kv, recompute, moves):
    _, balancer, loads, _ = setup()
    home = balancer.ring_home(KEY)
    busy(loads, home, running, waiting, kv)
    decision = balancer.choose(KEY, size=body_for(recompute))
    if moves:
        assert decision.worker is not home and decision.route is Route.SPILL
        assert decision.rehomed is Rehome.SATURATED and decision.cache_holder is home
    else:
        assert decision.worker is home and decision.route is Route.AFFINITY


def test_of_two_sessions_on_a_saturated_worker_the_shorter_one_moves_first():
    _, balancer, loads, _ = setup()
    home = balancer.ring_home(KEY)
    busy(loads, home, running=4, waiting=2)  # wait (2+1) x 2 / 4 = 1.5 s
    short = balancer.choose(KEY, size=body_for(0.3))
    long = balancer.choose(KEY, size=body_for(6.0))
    assert short.worker is not home and short.route is Route.SPILL
    assert long.worker is home and long.route is Route.AFFINITY


def test_a_moved_session_goes_to_the_next_unsaturated_worker_on_the_ring():
    _, balancer, loads, _ = setup()
    home = balancer.ring_home(KEY)
    order = list(balancer.policy._ring.walk(KEY))
    assert order[0] is home
    busy(loads, order[1], running=4, waiting=6)
    busy(loads, home, running=4, waiting=6)
    decision = balancer.choose(KEY, size=body_for(0.01))
    assert decision.worker is order[2], "the saturated next worker is passed over"


def test_when_every_worker_is_saturated_the_session_stays():
    _, balancer, loads, pool = setup()
    for worker in pool:
        busy(loads, worker, running=4, waiting=6)
    home = balancer.ring_home(KEY)
    decision = balancer.choose(KEY, size=body_for(0.01))
    assert decision.worker is home and decision.route is Route.AFFINITY


def test_no_spill_below_the_floor_when_the_workers_figures_are_stale():
    clock, balancer, _, pool = setup(floor=8)
    clock.now += 10  # every scrape is stale now
    home = balancer.ring_home(KEY)
    leases = [pool.lease(home) for _ in range(7)]
    assert balancer.choose(KEY, size=body_for(0.01)).worker is home, "7 in flight < floor"
    leases += [pool.lease(home) for _ in range(2)]
    moved = balancer.choose(KEY, size=body_for(0.01))
    assert moved.worker is not home and moved.rehomed is Rehome.SATURATED
    for lease in leases:
        lease.release()


def test_saturation_must_hold_before_sessions_move():
    clock, balancer, loads, _ = setup(hold=0.5)
    home = balancer.ring_home(KEY)
    busy(loads, home, running=4, waiting=8)
    assert balancer.choose(KEY, size=body_for(0.01)).worker is home, "a blip is no reason"
    clock.now += 0.6
    busy(loads, home, running=4, waiting=8)
    assert balancer.choose(KEY, size=body_for(0.01)).worker is not home
