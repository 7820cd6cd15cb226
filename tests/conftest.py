"""Shared fixtures: real simulated-worker processes and real routers on free loopback ports."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.config import Settings, parse_settings
from router.server import running
from router.tooling.launch import (
    free_port,
    kill_process,
    start_python,
    start_sim_worker,
    stop_process,
    wait_http_ok,
)

FAST_HEALTH = {"interval": 0.2, "timeout": 0.3, "fall": 2, "rise": 2, "jitter": 0.1}


@dataclass
class SimWorker:
    name: str
    port: int
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SimWorker:
        self.proc = start_sim_worker(self.name, self.port, self.extra)
        wait_http_ok(self.url + "/health", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class SimFleet:
    workers: list[SimWorker] = field(default_factory=list)

    def by_name(self, name: str) -> SimWorker:
        return next(w for w in self.workers if w.name == name)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A router config for these workers with fast health checks, as a plain dict."""
        raw: dict[str, Any] = {
            "listen": f"127.0.0.1:{free_port()}",
            "workers": [{"url": w.url, "name": w.name} for w in self.workers],
            "health": dict(FAST_HEALTH),
        }
        raw.update(overrides)
        return raw

    def settings(self, **overrides: Any) -> Settings:
        return parse_settings(self.config(**overrides), "test", env={})


@pytest.fixture
def sim_fleet() -> Iterator[Callable[..., SimFleet]]:
    """Factory: `sim_fleet(4, "--time-scale", "0")` starts four worker processes."""
    started: list[SimWorker] = []

    def make(count: int, *extra: str) -> SimFleet:
        fleet = SimFleet([SimWorker(f"sim-{i}", free_port(), tuple(extra)) for i in range(count)])
        for worker in fleet.workers:
            started.append(worker)
            worker.start()
        return fleet

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
def router_in_process() -> Callable[[Settings], AbstractAsyncContextManager[str]]:
    """`async with router_in_process(settings) as url:` runs a router in this event loop."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def start(settings: Settings) -> AsyncIterator[str]:
        async with running(settings, settings.host, settings.port):
            yield f"http://{settings.host}:{settings.port}"

    return start


@pytest.fixture
def router_process(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], tuple[str, Any]]]:
    """Factory: start `python -m router serve` on a written config; returns (url, Popen)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(raw: dict[str, Any]) -> tuple[str, subprocess.Popen[bytes]]:
        path = tmp_path / f"router-{len(procs)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        proc = start_python(["router", "serve", "--config", str(path)])
        procs.append(proc)
        url = f"http://{raw['listen']}"
        wait_http_ok(url + "/healthz", proc=proc)
        return url, proc

    yield start
    for proc in procs:
        stop_process(proc)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


def chat_body(text: str = "Hello there", max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": "sim-model",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


@dataclass
class RedisServer:
    """A `redis-server` this test owns, on its own port; stop and start it by PID."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_redis(self.url)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            kill_process(self.proc)
            self.proc = None


def _wait_redis(url: str, timeout: float = 10.0) -> None:
    import time

    import redis

    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, killed at the end (tests may kill and restart it)."""
    server = RedisServer(free_port()).start()
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
        server = RedisServer(free_port()).start()
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
