"""The local fleet the demo, the tests and the benchmarks assemble: workers, its own Redis."""

from __future__ import annotations

import shutil
import urllib.request

import pytest
import redis

from router.tooling.fleet import LocalFleet, RedisNotInstalled, RedisServer


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_a_killed_worker_restarts_on_its_port_and_caches_reset():
    with LocalFleet(2, ["--time-scale", "0"]) as fleet:
        fleet.kill(1)
        assert not fleet.workers[1].running and not answers(fleet.urls[1])
        fleet.restart(1)
        assert all(answers(url) for url in fleet.urls)
        fleet.reset_caches()
    assert not any(answers(url) for url in fleet.urls)


def test_a_fleet_with_its_own_redis_points_its_routers_at_it():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with LocalFleet(1, ["--time-scale", "0"], own_redis=True) as fleet:
        assert fleet.redis is not None
        url = fleet.config()["store"]["url"]
        assert url == fleet.redis.url and fleet.settings().store.url == url
        client = redis.Redis.from_url(url, socket_timeout=1)
        assert client.ping()
        client.close()
    assert fleet.redis.proc is None


def test_without_redis_server_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RedisNotInstalled, match=r"apt-get install redis-server"):
        RedisServer().start()
