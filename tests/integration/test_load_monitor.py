"""The load monitor against real HTTP servers: it reads each engine's own metric names, counts
its parse CPU, survives bad scrapes without touching health, and lets stale figures go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from router.config import LoadSettings, SaturationSettings
from router.fleet.engines import metric_names
from router.fleet.load import LoadMonitor, Loads
from router.fleet.workers import Worker, WorkerPool, WorkerState
from router.metrics import Metrics
from tests.conftest import serving
from tests.waiting import until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"


class Exposition:
    """A worker's /metrics whose answer the test changes as it goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.status = 200
        self.scrapes = 0

    async def metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(text=self.text, status=self.status)


def sample(metrics: Metrics, name: str, worker: str) -> float:
    return metrics.registry.get_sample_value(name, {"worker": worker}) or 0.0


async def monitor_for(url: str, engine: str, **load: float):
    pool = WorkerPool([Worker("w0", url, engine=engine)])
    settings = LoadSettings(interval=0.05, jitter=0.0, timeout=0.5, **load)
    loads = Loads(settings, SaturationSettings(hold=0.0))
    metrics = Metrics()
    session = aiohttp.ClientSession()
    monitor = LoadMonitor(
        pool, loads, settings, lambda w: metric_names(w.engine), session, metrics
    )
    return pool, loads, metrics, session, monitor


async def test_each_engine_is_read_by_its_own_metric_names():
    expected = {"vllm": (8, 3), "sglang": (162, 2826), "tgi": (4, 7), "llamacpp": (0, 0)}
    for engine, (running, waiting) in expected.items():
        served = Exposition((FIXTURES / f"{engine}.txt").read_text())
        app = web.Application()
        app.router.add_get("/metrics", served.metrics)
        async with serving(app) as url:
            pool, loads, metrics, session, monitor = await monitor_for(url, engine)
            try:
                assert await monitor.scrape(pool.get("w0"))
            finally:
                await session.close()
        estimate = loads.estimate(pool.get("w0"))
        assert (estimate.running + estimate.waiting, estimate.fresh) == (running + waiting, True)
        assert sample(metrics, "kvrouter_load_scrape_cpu_seconds_total", "w0") > 0
        assert sample(metrics, "kvrouter_worker_waiting", "w0") == waiting


async def test_bad_scrapes_are_counted_never_eject_and_stale_figures_give_way():
    served = Exposition((FIXTURES / "vllm.txt").read_text())
    app = web.Application()
    app.router.add_get("/metrics", served.metrics)
    async with serving(app) as url:
        pool, loads, metrics, session, monitor = await monitor_for(url, "vllm", stale_after=0.3)
        worker = pool.get("w0")
        monitor.start()
        try:
            await until(lambda: loads.estimate(worker).fresh)
            served.text = "<html>Internal Server Error</html>"
            await until(lambda: sample(metrics, "kvrouter_load_scrape_failures_total", "w0") >= 2)
            served.status = 500
            await until(lambda: not loads.estimate(worker).fresh)
            assert worker.state is WorkerState.HEALTHY, "a failed scrape is not a health check"
            described = loads.describe(worker)["load"]
            assert described["fresh"] is False and described["scrape_failures"] >= 2
            served.text, served.status = (FIXTURES / "vllm.txt").read_text(), 200
            await until(lambda: loads.estimate(worker).fresh)
        finally:
            await monitor.stop()
            await session.close()
    scrapes = served.scrapes
    await asyncio.sleep(0.2)
    assert served.scrapes == scrapes, "stop() ends the scrape task"


async def test_the_router_exports_how_old_each_workers_load_figures_are(sim_fleet, http):
    fleet = sim_fleet(1, "--time-scale", "0")
    name = fleet.names[0]
    prefix = f'kvrouter_worker_load_age_seconds{{worker="{name}"}} '
    async with fleet.router_in_process(load={"interval": 0.1, "jitter": 0.0}) as url:
        ages: list[float] = []
        for _ in range(100):
            async with http.get(url + "/metrics") as resp:
                text = await resp.text()
            ages = [float(ln[len(prefix):]) for ln in text.splitlines() if ln.startswith(prefix)]
            if ages:
                break
            await asyncio.sleep(0.05)
    assert ages, "no load age exported for the worker"
    assert 0 <= ages[0] < 1.0, "scraped every 0.1 s, the figures are never a second old"
