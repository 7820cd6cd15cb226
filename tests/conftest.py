"""Shared fixtures: real simulated-worker processes and real routers on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.config import Settings
from router.tooling.fleet import (
    LocalFleet,
    RedisNotInstalled,
    RedisServer,
    RouterProcess,
    serving,  # noqa: F401  (tests import it from here)
)
from router.tooling.fleet import router_in_process as _router_in_process
from tests.dns_zone import dns_server  # noqa: F401  (a fixture)

FAST_HEALTH = {"interval": 0.2, "timeout": 0.3, "fall": 2, "rise": 2, "jitter": 0.1}


def _skipped(config: pytest.Config) -> list[pytest.TestReport]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may skip: a skipped test checks nothing while the run looks green, so any skip
    fails an otherwise passing run."""
    if exitstatus == pytest.ExitCode.OK and _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if skipped:
        terminalreporter.write_sep("=", "skipped tests fail the run", red=True)
        for report in skipped:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else longrepr
            terminalreporter.write_line(f"{report.nodeid}: {reason}")


SimFleet = LocalFleet  # the name tests use for a fleet


@pytest.fixture
def sim_fleet() -> Iterator[Callable[..., LocalFleet]]:
    """Factory: `sim_fleet(4, "--time-scale", "0")` starts four worker processes."""
    started: list[LocalFleet] = []

    def make(count: int, *extra: str) -> LocalFleet:
        fleet = LocalFleet(count, extra, router_defaults={"health": FAST_HEALTH})
        started.append(fleet.start())
        return fleet

    yield make
    for fleet in started:
        fleet.stop()


@pytest.fixture
def router_in_process() -> Callable[[Settings], AbstractAsyncContextManager[str]]:
    """`async with router_in_process(settings) as url:` runs a router in this event loop."""
    return _router_in_process


@pytest.fixture
def router_process(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], tuple[str, Any]]]:
    """Factory: start `python -m router serve` on a written config; returns (url, Popen)."""
    routers: list[RouterProcess] = []

    def start(raw: dict[str, Any]) -> tuple[str, Any]:
        router = RouterProcess.start(raw, tmp_path)
        routers.append(router)
        return router.url, router.proc

    yield start
    for router in routers:
        router.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def healthy(_request: web.Request) -> web.Response:
    """A health endpoint that always passes."""
    return web.json_response({"ok": True})


async def counted(http: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples in the router's /metrics whose labels include `labels`."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def chat_body(text: str = "Hello there", max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": "sim-model",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


def _start_redis() -> RedisServer:
    try:
        return RedisServer().start()
    except RedisNotInstalled as err:  # fail, never skip: a run without Redis tests must not pass
        pytest.fail(f"{err}; the Redis tests are never skipped", pytrace=False)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, killed at the end (tests may kill and restart it)."""
    server = _start_redis()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def shared_redis_url() -> Iterator[str]:
    """The developer's Redis at 127.0.0.1:6379 when it answers, else one started for the run."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.3).ping()
    except redis.RedisError:
        server = _start_redis()
        yield server.url
        server.kill()
        return
    yield url


@pytest.fixture
def redis_prefix(shared_redis_url: str) -> Iterator[str]:
    """A key prefix no other test or developer uses; its keys are deleted afterwards."""
    import uuid

    import redis

    prefix = f"kvrtest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(shared_redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
