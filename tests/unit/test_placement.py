"""The placement step: pins read from and written to a real in-memory store around the choice."""

from __future__ import annotations

import asyncio

from router.config import RoutingSettings
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.metrics import Metrics
from router.placement.place import Balancer, Placement
from router.placement.policies import Route
from router.placement.session import RoutingKey
from router.store import MemoryStore, StoreUnavailable

KEY = RoutingKey("acme", "chat-1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(policy: str = "bounded_load", store=None, **pins: object):
    pool = WorkerPool(Worker(f"w{i}", f"http://10.0.0.{i}:8000") for i in range(4))
    routing = RoutingSettings.model_validate(
        {"policy": policy, "slow_start": {"window": 0}, "saturation": {"floor": 0}, "pins": pins}
    )
    clock = Clock()
    store = store if store is not None else MemoryStore(clock=clock)
    metrics = Metrics()
    placement = Placement(Balancer(pool, routing), store, routing.pins, metrics)
    return pool, placement, store, metrics, clock


async def settle(placement: Placement) -> None:
    await placement.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_spilled_session_is_pinned_where_its_cache_now_is():
    _pool, placement, store, metrics, _ = setup()
    home = (await placement.place(KEY)).worker
    home.inflight = 9
    spilled = await placement.place(KEY)
    assert spilled.route is Route.SPILL and spilled.rehomed == "overloaded"
    await settle(placement)
    assert await store.get_pin("acme", "chat-1") == spilled.worker.name
    home.inflight = 0
    again = await placement.place(KEY)
    assert again.worker is spilled.worker and again.route is Route.AFFINITY
    assert again.rehomed is None
    assert sample(metrics, "kvrouter_rehomed_total", reason="overloaded") == 1
    assert sample(metrics, "kvrouter_placements_total", policy="bounded_load", route="spill") == 1


async def test_a_pin_expires_after_it_has_been_idle_for_its_ttl_and_not_before():
    pool, placement, _store, _, clock = setup(ttl=60)
    home = (await placement.place(KEY)).worker
    pool.set_state(home, WorkerState.UNHEALTHY)
    moved = (await placement.place(KEY)).worker
    pool.set_state(home, WorkerState.HEALTHY)
    for _ in range(4):
        clock.now += 40
        await settle(placement)
        assert (await placement.place(KEY)).worker is moved, "each turn refreshes the pin"
    await settle(placement)
    clock.now += 61
    back = await placement.place(KEY)
    assert back.worker is home and back.route is Route.AFFINITY


async def test_returning_home_when_healthy_deletes_the_pin():
    pool, placement, store, metrics, _ = setup(return_home="when_healthy")
    home = (await placement.place(KEY)).worker
    pool.set_state(home, WorkerState.UNHEALTHY)
    moved = await placement.place(KEY)
    assert moved.rehomed == "dead"
    await settle(placement)
    pool.set_state(home, WorkerState.HEALTHY)
    back = await placement.place(KEY)
    assert back.worker is home and back.rehomed == "return_home"
    await settle(placement)
    assert await store.get_pin("acme", "chat-1") is None
    assert sample(metrics, "kvrouter_pin_operations_total", action="delete", outcome="ok") == 1


async def test_sessions_on_their_ring_home_write_nothing():
    _, placement, store, metrics, _ = setup()
    for i in range(50):
        await placement.place(RoutingKey("acme", f"s{i}"))
    await settle(placement)
    assert await store.get_pin("acme", "s7") is None
    assert sample(metrics, "kvrouter_pin_operations_total", action="set", outcome="ok") == 0


class UnreachableStore(MemoryStore):
    """What a store looks like when its server is down."""

    in_process = False

    async def get_pin(self, tenant: str, session: str) -> str | None:
        raise StoreUnavailable("redis at 127.0.0.1:1 is unreachable")

    async def set_pin(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        raise StoreUnavailable("redis at 127.0.0.1:1 is unreachable")


class SlowStore(MemoryStore):
    in_process = False

    async def get_pin(self, tenant: str, session: str) -> str | None:
        await asyncio.sleep(5)
        return None


async def test_an_unreachable_store_leaves_routing_on_the_ring():
    pool, placement, _, metrics, _ = setup(store=UnreachableStore())
    home = (await placement.place(KEY)).worker
    pool.set_state(home, WorkerState.UNHEALTHY)
    decision = await placement.place(KEY)
    assert decision.route is Route.FALLBACK
    await settle(placement)
    assert sample(metrics, "kvrouter_pin_operations_total", action="read", outcome="error") == 2
    assert sample(metrics, "kvrouter_pin_operations_total", action="set", outcome="error") == 1


async def test_a_slow_store_costs_at_most_the_store_timeout():
    _, placement, _, _, _ = setup(store=SlowStore(), store_timeout=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    decision = await placement.place(KEY)
    assert decision.route is Route.AFFINITY and loop.time() - started < 0.5


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def get_pin(self, tenant: str, session: str) -> str | None:
        self.calls += 1
        return await super().get_pin(tenant, session)


async def test_policies_that_ignore_keys_never_read_pins():
    store = CountingStore()
    _, placement, _, _, _ = setup("round_robin", store=store)
    for _ in range(10):
        await placement.place(KEY)
    assert store.calls == 0


async def test_pins_can_be_turned_off():
    store = CountingStore()
    _, placement, _, _, _ = setup(store=store, enabled=False)
    await placement.place(KEY)
    assert store.calls == 0


async def test_prefix_keys_are_placed_by_the_ring_without_pins():
    store = CountingStore()
    _, placement, _, _, _ = setup(store=store)
    first = await placement.place(RoutingKey("acme", prefix="abc123", source="prefix"))
    second = await placement.place(RoutingKey("acme", prefix="abc123", source="prefix"))
    assert first.worker is second.worker and first.route is Route.AFFINITY
    assert store.calls == 0
