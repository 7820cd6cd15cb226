"""The one membership path and session-aware drains, with plain values and a hand-set clock."""

from __future__ import annotations

import logging

from router.config import DrainSettings, RoutingSettings
from router.fleet.discovery import Member
from router.fleet.drain import Drains
from router.fleet.membership import Membership
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.metrics import Metrics
from router.placement.place import Balancer, Rehome, Route


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def member(name: str, **fields: object) -> Member:
    return Member(name, f"http://10.0.0.{name[-1]}:8000", **fields)  # type: ignore[arg-type]


def fleet(
    clock: Clock, workers: tuple[str, ...] = (), **drain: float
) -> tuple[WorkerPool, Drains, Membership, Metrics]:
    pool = WorkerPool(Worker(n, f"http://10.0.0.{n[-1]}:8000") for n in workers)
    metrics = Metrics()
    drains = Drains(pool, DrainSettings(**drain), metrics, clock=clock)
    return pool, drains, Membership(pool, drains, metrics, "vllm", wall_clock=clock), metrics


def test_a_list_adds_new_workers_and_drains_then_removes_the_ones_it_no_longer_names():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"), idle=10, timeout=100)
    membership.publish([member("w2"), member("w3", engine="sglang", weight=2.0)])
    assert [w.name for w in pool] == ["w1", "w2", "w3"]
    w1, w3 = pool.get("w1"), pool.get("w3")
    assert w1.draining and not w1.available and drains.reason(w1) == "removed"
    assert (w3.engine, w3.weight, w3.available) == ("sglang", 2.0, True)
    w1.last_keyed = clock.now  # it served a session just now: that session is existing
    clock.now += 9
    drains.check()
    assert "w1" in pool and drains.keeps_sessions(w1)
    clock.now += 2
    drains.check()
    assert "w1" not in pool and not drains.keeping


def test_a_drain_ends_at_its_timeout_even_while_sessions_keep_coming():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"), idle=10, timeout=30)
    membership.publish([member("w2")])
    w1 = pool.get("w1")
    for _ in range(5):
        clock.now += 5
        w1.last_keyed = clock.now
        drains.check()
        assert drains.keeps_sessions(w1)
    clock.now += 6
    drains.check()
    assert "w1" not in pool


def test_a_drain_waits_for_requests_in_flight_before_it_calls_the_worker_idle():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"), idle=10, timeout=100)
    membership.publish([member("w2")])
    w1 = pool.get("w1")
    with pool.lease(w1):
        clock.now += 20
        drains.check()
        assert "w1" in pool and drains.keeps_sessions(w1)
    drains.check()
    assert "w1" not in pool


def test_a_worker_without_recent_sessions_leaves_at_the_first_check():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"), idle=10, timeout=100)
    pool.get("w1").last_keyed = clock.now - 11
    membership.publish([member("w2")])
    drains.check()
    assert "w1" not in pool


def test_a_draining_worker_that_fails_health_checks_keeps_no_sessions():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"), idle=10, timeout=100)
    membership.publish([member("w2")])
    w1 = pool.get("w1")
    w1.last_keyed = clock.now
    pool.set_state(w1, WorkerState.UNHEALTHY)
    assert not drains.keeps_sessions(w1)
    drains.check()
    assert "w1" not in pool


def test_a_terminating_member_drains_and_a_ready_one_again_is_undrained():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"))
    membership.publish([member("w1", ready=False), member("w2")])
    w1 = pool.get("w1")
    assert w1.draining and drains.reason(w1) == "terminating"
    membership.publish([member("w1"), member("w2")])
    assert not w1.draining and w1.available and not drains.keeping
    membership.publish([member("w2"), member("w4", ready=False)])
    assert "w4" not in pool and drains.reason(w1) == "removed"


def test_discovery_never_cancels_an_operators_drain():
    clock = Clock()
    pool, drains, membership, _ = fleet(clock, ("w1", "w2"))
    w1 = pool.get("w1")
    drains.begin(w1, remove=False, reason="admin")
    membership.publish([member("w1"), member("w2")])
    assert w1.draining and drains.reason(w1) == "admin"


def test_weights_engines_and_addresses_change_in_place_or_by_replacement():
    clock = Clock()
    pool, _drains, membership, _ = fleet(clock, ("w1", "w2"))
    old_w2 = pool.get("w2")
    membership.publish(
        [member("w1", weight=3.0, engine="tgi"), Member("w2", "http://10.9.9.9:8000")]
    )
    w1, w2 = pool.get("w1"), pool.get("w2")
    assert (w1.weight, w1.engine) == (3.0, "tgi")
    assert w2 is not old_w2 and w2.url == "http://10.9.9.9:8000" and w2.available


def test_a_failing_source_keeps_the_last_good_list_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="kvrouter.membership")
    clock = Clock()
    pool, drains, membership, metrics = fleet(clock)
    membership.publish([member("w1"), member("w2")])
    membership.failed("dns lookup of vllm.svc (A) timed out")
    membership.failed("dns lookup of vllm.svc (A) timed out")
    assert [w.name for w in pool] == ["w1", "w2"] and not drains.keeping
    status = membership.status.describe()
    assert status["ok"] is False and "timed out" in str(status["last_error"])
    text = metrics.render().decode()
    assert 'kvrouter_discovery_failures_total{source="static"} 2.0' in text
    assert 'kvrouter_discovery_up{source="static"} 0.0' in text
    membership.publish([member("w1"), member("w2")])
    assert membership.status.ok and membership.status.last_error is None
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged == [
        (
            logging.WARNING,
            "discovery (static) failed, keeping the last good list of 2 workers: "
            "dns lookup of vllm.svc (A) timed out",
        ),
        (logging.WARNING, "discovery (static) recovered: 2 workers listed"),
    ]


def test_a_worker_added_later_joins_with_slow_start_but_the_first_list_does_not():
    clock = Clock()
    pool, _drains, membership, _ = fleet(clock)
    routing = RoutingSettings.model_validate({"slow_start": {"window": 30}})
    balancer = Balancer(pool, routing, clock=clock)
    membership.publish([member("w1"), member("w2")])
    keys = [f"t\x1fs{i}" for i in range(2000)]
    assert all(balancer.choose(k).route is Route.AFFINITY for k in keys)
    membership.publish([member("w1"), member("w2"), member("w3")])
    w3 = pool.get("w3")
    homed = [k for k in keys if balancer.ring_home(k) is w3]
    decisions = [balancer.choose(k) for k in homed]
    moved = [d for d in decisions if d.rehomed is Rehome.SLOW_START]
    assert homed and 0.5 * len(homed) < len(moved) < len(homed)  # min_share 0.1 admitted
    clock.now += 31
    assert all(balancer.choose(k).worker is w3 for k in homed)


def test_removed_workers_leave_the_gauges():
    clock = Clock()
    _pool, drains, membership, metrics = fleet(clock, ("w1", "w2"))
    metrics.worker_healthy.labels("w1").set(1)
    membership.publish([member("w2")])
    drains.check()
    lines = metrics.render().decode().splitlines()
    assert 'kvrouter_worker_healthy{worker="w1"} 1.0' not in lines
