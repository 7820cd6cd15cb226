import aiohttp
import pytest

from router.config import HealthSettings, PassiveHealthSettings
from router.fleet.health import HealthChecker
from router.fleet.passive import PassiveHealth
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.metrics import Metrics
from router.tooling.launch import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    clock = Clock()
    pool = WorkerPool([Worker(f"w{i}", f"http://127.0.0.1:{free_port()}") for i in range(2)])
    passive = PassiveHealth(
        pool, PassiveHealthSettings(consecutive_failures=3, base_ejection=2, max_ejection=10),
        Metrics(), clock,
    )  # fmt: skip
    return clock, pool, passive


def test_a_refused_connection_ejects_at_once(world):
    _, pool, passive = world
    passive.on_failure(pool.get("w0"), "connect", immediate=True)
    assert pool.get("w0").state is WorkerState.UNHEALTHY


def test_a_run_of_failures_ejects_and_a_success_resets_the_run(world):
    _, pool, passive = world
    worker = pool.get("w0")
    passive.on_failure(worker, "status")
    passive.on_failure(worker, "status")
    passive.on_success(worker)
    passive.on_failure(worker, "status")
    passive.on_failure(worker, "status")
    assert worker.available
    passive.on_failure(worker, "timeout")
    assert not worker.available


def test_ejection_time_doubles_up_to_the_cap(world):
    clock, pool, passive = world
    worker = pool.get("w0")
    durations = []
    for _ in range(5):
        passive.eject(worker, "status")
        durations.append(worker.ejected_until - clock.now)
        pool.set_state(worker, WorkerState.HEALTHY)
    assert durations == [2, 4, 8, 10, 10]


async def test_probes_apply_fall_and_rise_and_respect_the_ejection_time(world):
    clock, pool, passive = world
    worker = pool.get("w1")
    settings = HealthSettings(fall=2, rise=2)
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker(pool, settings, session, Metrics(), clock)
        checker.record(worker, False)
        assert worker.available
        checker.record(worker, False)
        assert not worker.available
        checker.record(worker, True)
        checker.record(worker, True)
        assert worker.available

        passive.eject(worker, "status")
        checker.record(worker, True)
        checker.record(worker, True)
        assert not worker.available, "still inside its ejection time"
        clock.now += 2.5
        checker.record(worker, True)
        assert worker.available


async def test_a_refused_probe_takes_the_worker_out_at_once(world):
    clock, pool, _ = world
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker(pool, HealthSettings(fall=3), session, Metrics(), clock)
        ok, refused = await checker.probe(pool.get("w0"))
        assert (ok, refused) == (False, True)
        checker.record(pool.get("w0"), ok, refused=refused)
    assert not pool.get("w0").available
