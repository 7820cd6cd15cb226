"""Worker load snapshots and saturation, with plain values and a fake clock."""

from __future__ import annotations

from router.config import LoadSettings, SaturationSettings
from router.fleet.engines import LoadReading
from router.fleet.load import Loads
from router.fleet.workers import Worker, WorkerPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(hold: float = 0.5, floor: int = 8, stale_after: float = 3.0, kv: float = 0.95):
    clock = Clock()
    loads = Loads(
        LoadSettings(stale_after=stale_after),
        SaturationSettings(hold=hold, floor=floor, kv_usage=kv),
        clock,
    )
    pool = WorkerPool([Worker("w0", "http://w0"), Worker("w1", "http://w1")])
    return clock, loads, pool, pool.get("w0")


def test_between_scrapes_the_estimate_follows_what_the_router_sent_and_saw_finish():
    _, loads, pool, worker = setup()
    loads.record(worker, LoadReading(running=3, waiting=0, kv_usage=0.2))
    leases = [pool.lease(worker) for _ in range(2)]
    estimate = loads.estimate(worker)
    assert estimate.fresh and estimate.running == 5 and estimate.waiting == 0
    for lease in leases:
        lease.release()
    assert loads.estimate(worker).running == 3


def test_a_learned_batch_limit_turns_new_requests_into_waiting_ones():
    _, loads, pool, worker = setup()
    loads.record(worker, LoadReading(running=4, waiting=1, kv_usage=0.5))
    _lease = pool.lease(worker)
    estimate = loads.estimate(worker)
    assert (estimate.running, estimate.waiting) == (4, 2)
    loads.record(worker, LoadReading(running=6, waiting=0, kv_usage=0.5))
    assert loads.snapshot("w0").batch_limit is None, "more running than the limit: forgotten"


def test_stale_figures_give_way_to_the_routers_own_count():
    clock, loads, pool, worker = setup(stale_after=3.0)
    loads.record(worker, LoadReading(running=1, waiting=9, kv_usage=0.99))
    assert loads.estimate(worker).fresh
    clock.now += 3.5
    _lease = pool.lease(worker)
    estimate = loads.estimate(worker)
    assert not estimate.fresh and (estimate.running, estimate.waiting) == (1, 0)
    assert not loads.saturated(worker, cap=0), "below the floor of 8 by in-flight count"


def test_without_fresh_figures_saturated_means_above_both_the_cap_and_the_floor():
    _, loads, pool, worker = setup(hold=0.0, floor=4)
    leases = [pool.lease(worker) for _ in range(4)]
    assert not loads.saturated(worker, cap=6)
    assert loads.saturated(worker, cap=2)
    assert not loads.saturated(pool.get("w1"), cap=0), "idle worker"
    del leases


def test_waiting_requests_or_a_full_kv_cache_held_for_the_hold_time_saturate():
    clock, loads, _, worker = setup(hold=0.5)
    loads.record(worker, LoadReading(running=8, waiting=2, kv_usage=0.4))
    assert not loads.saturated(worker, cap=0), "not held yet"
    clock.now += 0.6
    loads.record(worker, LoadReading(running=8, waiting=2, kv_usage=0.4))
    assert loads.saturated(worker, cap=0)
    other = Worker("w1", "http://w1")
    loads.record(other, LoadReading(running=8, waiting=0, kv_usage=0.97))
    loads.saturated(other, cap=0)
    clock.now += 0.6
    loads.record(other, LoadReading(running=8, waiting=0, kv_usage=0.97))
    assert loads.saturated(other, cap=0), "KV usage over routing.saturation.kv_usage"


def test_a_worker_that_left_saturation_is_not_saturated_again_within_the_hold_time():
    clock, loads, _, worker = setup(hold=1.0)
    busy = LoadReading(running=8, waiting=3, kv_usage=0.5)
    calm = LoadReading(running=4, waiting=0, kv_usage=0.3)
    loads.record(worker, busy)
    loads.saturated(worker, cap=0)
    clock.now += 1.0
    assert loads.saturated(worker, cap=0)
    loads.record(worker, calm)
    assert not loads.saturated(worker, cap=0)
    left = clock.now
    loads.record(worker, busy)
    for step in (0.2, 0.5, 0.9):  # busy again, held, but within the hold time of leaving
        clock.now = left + step
        assert not loads.saturated(worker, cap=0), step
    clock.now = left + 1.3
    assert loads.saturated(worker, cap=0), "busy again for longer than hold: saturated again"


def test_a_failed_scrape_is_counted_and_keeps_the_last_figures_until_they_age():
    _, loads, _, worker = setup()
    loads.record(worker, LoadReading(running=2, waiting=0, kv_usage=None))
    loads.failed(worker)
    assert loads.snapshot("w0").failures == 1 and loads.estimate(worker).fresh
    described = loads.describe(worker)["load"]
    assert described["scrape_failures"] == 1 and described["fresh"] is True


def test_full_looks_ahead_by_the_requests_about_to_be_sent_and_moves_no_state():
    _, loads, pool, worker = setup(hold=0.0)
    loads.record(worker, LoadReading(running=2, waiting=1, kv_usage=0.2))  # a batch of 2
    loads.record(worker, LoadReading(running=1, waiting=0, kv_usage=0.2))
    assert not loads.full(worker, cap=0, ahead=1), "a free place in the batch"
    _lease = pool.lease(worker)
    assert not loads.full(worker, cap=0), "nothing waits there yet"
    assert loads.full(worker, cap=0, ahead=1), "the next request would wait"
    assert not loads.saturated(worker, cap=0), "full() moved no saturation state"
    loads.record(worker, LoadReading(running=1, waiting=0, kv_usage=0.97))
    assert loads.full(worker, cap=0), "a KV cache past the limit is full whatever waits"
