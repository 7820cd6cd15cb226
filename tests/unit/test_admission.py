"""Admission control over a real balancer and load figures: requests wait while every worker is
saturated, leave one at a time in weighted round robin once one has room, and every way out of
the queue (admitted, timed out, pushed out, cancelled) gives the place back."""

from __future__ import annotations

import asyncio

import pytest

from router.config import (
    AdmissionSettings,
    LoadSettings,
    RoutingSettings,
    SaturationSettings,
    TenantLimitSettings,
)
from router.errors import Overloaded
from router.fleet.engines import LoadReading
from router.fleet.load import Loads
from router.fleet.workers import Worker, WorkerLease, WorkerPool
from router.limits.admission import Admission
from router.metrics import Metrics
from router.placement.place import Balancer
from tests.waiting import until

BUSY = LoadReading(running=1, waiting=1, kv_usage=0.1)  # a batch of 1, full, one waiting
IDLE = LoadReading(running=0, waiting=0, kv_usage=0.1)  # the batch of 1 learned: room for one


class Fleet:
    """Two workers whose load the test sets, the admission queue in front of them, and the
    leases of the requests it let through (as placement would take them)."""

    def __init__(self, **admission: object) -> None:
        self.pool = WorkerPool([Worker("w0", "http://w0"), Worker("w1", "http://w1")])
        self.loads = Loads(LoadSettings(), SaturationSettings(hold=0.0))
        self.balancer = Balancer(self.pool, RoutingSettings(), loads=self.loads)
        self.metrics = Metrics()
        tenants = TenantLimitSettings(named={"gold": {"share": 2.0, "label": "gold"}})
        settings = AdmissionSettings(**admission)  # type: ignore[arg-type]
        self.admission = Admission(
            settings, tenants, self.balancer.fleet_full, self.balancer.crowded, self.metrics
        )
        self.order: list[str] = []
        self.leases: dict[str, WorkerLease] = {}

    def busy(self, *names: str) -> None:
        for name in names or ("w0", "w1"):
            self.loads.record(self.pool.get(name), BUSY)

    def idle(self, name: str) -> None:
        self.loads.record(self.pool.get(name), IDLE)

    async def request(self, tenant: str, name: str, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with self.admission.admit(tenant, deadline) as ticket:
            self.order.append(name)
            self.leases[name] = self.pool.lease(self.pool.get("w0"))
            ticket.placed()

    def finish(self, name: str) -> None:
        self.leases.pop(name).release()
        self.admission.wake()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_requests_pass_at_once_while_a_worker_has_room():
    fleet = Fleet()
    fleet.busy("w1")
    fleet.idle("w0")
    await fleet.request("acme", "a")
    assert fleet.order == ["a"] and fleet.admission.waiting == 0


async def test_waiting_requests_leave_one_at_a_time_in_round_robin_once_a_worker_has_room():
    fleet = Fleet()
    fleet.busy()
    tasks = [asyncio.create_task(fleet.request("heavy", f"h{i}")) for i in range(3)]
    tasks.append(asyncio.create_task(fleet.request("light", "l0")))
    await until(lambda: fleet.admission.waiting == 4, "all four waiting")
    assert fleet.order == []
    assert fleet.sample("kvrouter_admission_queue_length", tenant_class="other") == 4
    fleet.idle("w0")  # room for one: the next request would not wait there
    for expected in (["h0"], ["h0", "l0"], ["h0", "l0", "h1"], ["h0", "l0", "h1", "h2"]):
        fleet.admission.wake()
        count = len(expected)
        await until(lambda count=count: len(fleet.order) == count, "the next one")
        await asyncio.sleep(0.05)  # rechecks: no more room, nobody else goes
        assert fleet.order == expected, "one at a time, light's one before heavy's second"
        fleet.finish(fleet.order[-1])
    await asyncio.gather(*tasks)
    assert fleet.admission.waiting == 0
    assert fleet.sample("kvrouter_admission_queue_length", tenant_class="other") == 0
    admitted = fleet.sample(
        "kvrouter_admission_wait_seconds_count", tenant_class="other", outcome="admitted"
    )
    assert admitted == 4


async def test_a_tenants_share_weights_its_turns():
    fleet = Fleet()
    fleet.busy()
    tasks = [asyncio.create_task(fleet.request("basic", f"b{i}")) for i in range(3)]
    tasks += [asyncio.create_task(fleet.request("gold", f"g{i}")) for i in range(4)]
    await until(lambda: fleet.admission.waiting == 7, "all waiting")
    fleet.idle("w0")
    for _ in range(20):
        fleet.admission.wake()
        await asyncio.sleep(0.03)
        for name in list(fleet.leases):
            fleet.finish(name)
        if len(fleet.order) == 7:
            break
    await asyncio.gather(*tasks)
    assert fleet.order == ["b0", "g0", "g1", "b1", "g2", "g3", "b2"]


async def test_a_wait_past_the_timeout_is_a_503_with_retry_after_and_gives_its_place_back():
    fleet = Fleet(timeout=0.1)
    fleet.busy()
    started = asyncio.get_running_loop().time()
    with pytest.raises(Overloaded) as caught:
        await fleet.request("gold", "g0")
    assert 0.09 < asyncio.get_running_loop().time() - started < 1.0
    err = caught.value
    assert (err.status, err.code) == (503, "queue_timeout")
    assert int(err.headers["Retry-After"]) >= 1
    assert "limits.admission.timeout" in err.message
    assert fleet.admission.waiting == 0
    assert fleet.sample("kvrouter_limit_rejections_total", reason="queue_timeout",
                        tenant_class="gold") == 1  # fmt: skip
    assert fleet.sample("kvrouter_admission_queue_length", tenant_class="gold") == 0


async def test_the_request_deadline_bounds_the_wait_too():
    fleet = Fleet(timeout=30)
    fleet.busy()
    with pytest.raises(Overloaded):
        await asyncio.wait_for(fleet.request("acme", "a", timeout=0.1), 2)


async def test_a_full_queue_pushes_out_the_heaviest_tenants_newest_request():
    fleet = Fleet(max_queue=2)
    fleet.busy()
    heavy = [asyncio.create_task(fleet.request("heavy", f"h{i}")) for i in range(2)]
    await until(lambda: fleet.admission.waiting == 2, "heavy's two waiting")
    light = asyncio.create_task(fleet.request("light", "l0"))
    with pytest.raises(Overloaded) as pushed_out:
        await heavy[1]
    assert pushed_out.value.code == "queue_full" and "max_queue" in pushed_out.value.message
    with pytest.raises(Overloaded) as refused:
        await fleet.request("heavy", "h2")
    assert refused.value.code == "queue_full", "heavy already holds the most: refused itself"
    assert fleet.admission.waiting == 2
    fleet.idle("w0")
    fleet.admission.wake()
    await until(lambda: fleet.order == ["h0"], "heavy's first admitted")
    fleet.finish("h0")
    await asyncio.gather(heavy[0], light)
    assert fleet.order == ["h0", "l0"]
    assert fleet.sample("kvrouter_limit_rejections_total", reason="queue_full",
                        tenant_class="other") == 2  # fmt: skip


async def test_a_request_cancelled_while_waiting_gives_its_place_back():
    fleet = Fleet()
    fleet.busy()
    waiting = asyncio.create_task(fleet.request("acme", "gone"))
    await until(lambda: fleet.admission.waiting == 1, "waiting")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert fleet.admission.waiting == 0
    assert fleet.sample("kvrouter_admission_queue_length", tenant_class="other") == 0
    gone = fleet.sample("kvrouter_admission_wait_seconds_count", tenant_class="other",
                        outcome="gone")  # fmt: skip
    assert gone == 1
    fleet.idle("w0")
    await asyncio.wait_for(fleet.request("acme", "next"), 1)
    assert fleet.order == ["next"], "the cancelled request never went on"


async def test_a_ticket_given_back_without_placement_lets_the_next_one_go():
    """The first admitted fails before taking a worker: its place is given back, so the
    second goes (else it would wait for the timeout: one request in transit at a time)."""
    fleet = Fleet()
    fleet.busy()
    deadline = asyncio.get_running_loop().time() + 30

    async def fails_before_placement() -> None:
        async with fleet.admission.admit("acme", deadline):
            raise RuntimeError("no worker after all")

    first = asyncio.create_task(fails_before_placement())
    await until(lambda: fleet.admission.waiting == 1, "the first waiting")
    second = asyncio.create_task(fleet.request("acme", "second"))
    await until(lambda: fleet.admission.waiting == 2, "both waiting")
    fleet.idle("w0")
    fleet.admission.wake()
    await asyncio.wait_for(second, 2)
    with pytest.raises(RuntimeError):
        await first
    assert fleet.order == ["second"]


async def test_turned_off_it_lets_everything_through_and_releases_whoever_waits():
    fleet = Fleet()
    fleet.busy()
    waiting = asyncio.create_task(fleet.request("acme", "w"))
    await until(lambda: fleet.admission.waiting == 1, "waiting")
    tenants = TenantLimitSettings()
    fleet.admission.reconfigure(AdmissionSettings(enabled=False), tenants)
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(fleet.request("acme", "x"), 1)
    assert fleet.order == ["w", "x"]


def test_only_workers_that_can_take_requests_count_and_none_is_never_full():
    fleet = Fleet()
    fleet.busy("w0")
    fleet.idle("w1")
    assert not fleet.balancer.fleet_full()
    fleet.pool.set_draining(fleet.pool.get("w1"), True)
    assert fleet.balancer.fleet_full(), "a draining worker's room is no room"
    fleet.pool.set_draining(fleet.pool.get("w0"), True)
    assert not fleet.balancer.fleet_full(), "no worker at all: placement's 503, not a wait"


async def test_headroom_keeps_a_place_for_a_tenant_with_nothing_else_waiting():
    fleet = Fleet(headroom=1)
    fleet.busy()
    w0 = fleet.pool.get("w0")
    fleet.loads.record(w0, LoadReading(running=2, waiting=1, kv_usage=0.1))  # a batch of 2
    heavy = [asyncio.create_task(fleet.request("heavy", f"h{i}")) for i in range(3)]
    await until(lambda: fleet.admission.waiting == 3, "heavy's backlog waiting")
    fleet.loads.record(w0, IDLE)  # two places free
    fleet.admission.wake()
    await until(lambda: fleet.order == ["h0"], "heavy takes one place")
    await asyncio.sleep(0.05)
    assert fleet.order == ["h0"], "with more of heavy's waiting, one place stays free"
    await asyncio.wait_for(fleet.request("light", "l0"), 1)
    assert fleet.order == ["h0", "l0"], "light, with nothing else waiting, takes it at once"
    fleet.finish("h0")
    fleet.finish("l0")
    await until(lambda: len(fleet.order) >= 3, "heavy again once two places are free")
    assert fleet.order[2] == "h1"
    for task in heavy:
        task.cancel()
    await asyncio.gather(*heavy, return_exceptions=True)
