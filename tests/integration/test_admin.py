"""The operator API: drain, weights, session lookup, token required."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from router.server import running
from router.tooling.fleet import admin_url
from router.tooling.launch import free_port
from tests.conftest import chat_body

TOKEN = "t" * 24
AUTH = {"authorization": f"Bearer {TOKEN}"}


async def served_by(http, url: str, session: str) -> tuple[str, str]:
    headers = {"x-session-id": session}
    async with http.post(url + "/v1/chat/completions", json=chat_body(), headers=headers) as resp:
        assert resp.status == 200
        return resp.headers["x-kvrouter-worker"], resp.headers["x-kvrouter-route"]


async def test_admin_api_is_off_without_a_token_and_rejects_a_bad_one(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    async with router_in_process(fleet.settings()) as url:
        async with http.get(url + "/admin/workers", headers=AUTH) as resp:
            assert resp.status == 404
    settings = fleet.settings(admin={"token": TOKEN})
    async with router_in_process(settings):
        admin = admin_url(settings)
        wrong = {"authorization": "Bearer x"}
        async with http.get(admin + "/admin/workers", headers=wrong) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_admin_token"
        async with http.get(admin + "/admin/workers", headers=AUTH) as resp:
            assert [w["name"] for w in (await resp.json())["workers"]] == ["sim-0"]


async def refused(http, url: str) -> bool:
    """Whether nothing listens at `url`'s address (the connection is refused)."""
    try:
        async with http.get(url + "/healthz"):
            return False
    except aiohttp.ClientConnectorError:
        return True


async def test_the_admin_api_is_served_on_its_own_listener_and_never_on_the_public_one(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(admin={"token": TOKEN})
    admin = admin_url(settings)
    assert settings.admin.listen != settings.listen
    async with router_in_process(settings) as url:
        async with http.get(url + "/admin/workers", headers=AUTH) as resp:
            assert resp.status == 404, "the public listener answers the admin API"
            assert (await resp.json())["error"]["code"] == "not_found"
        async with http.post(url + "/admin/workers/sim-0/drain", headers=AUTH) as resp:
            assert resp.status == 404
        async with http.get(admin + "/admin/workers", headers=AUTH) as resp:
            assert resp.status == 200
            assert [w["name"] for w in (await resp.json())["workers"]] == ["sim-0"]
        for path in ("/healthz", "/readyz", "/metrics"):  # the public listener, as before
            async with http.get(url + path) as resp:
                assert resp.status == 200, path
        for path in ("/v1/models", "/metrics", "/healthz"):  # the admin one has only /admin/
            async with http.get(admin + path, headers=AUTH) as resp:
                assert resp.status == 404, path
    assert await refused(http, admin) and await refused(http, url), "a listener outlived it"


async def test_without_a_token_nothing_listens_on_admin_listen(sim_fleet, router_in_process, http):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(admin={"listen": f"127.0.0.1:{free_port()}"})
    async with router_in_process(settings) as url:
        assert await refused(http, admin_url(settings))
        async with http.get(url + "/admin/workers", headers=AUTH) as resp:
            assert resp.status == 404


async def test_an_admin_address_in_use_fails_the_start_and_frees_the_public_port(sim_fleet, http):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(admin={"token": TOKEN})
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((settings.admin.host, settings.admin.port))
        taken.listen()
        with pytest.raises(OSError):
            async with running(settings, settings.host, settings.port):
                raise AssertionError("started with its admin address taken")
    with socket.socket() as public:  # the public listener was closed again
        public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        public.bind((settings.host, settings.port))


async def session_homed_on(http, admin: str, worker: str, prefix: str) -> str:
    """A session id whose ring home is `worker` (asked of the admin API at `admin`)."""
    for i in range(200):
        async with http.get(admin + f"/admin/sessions/{prefix}{i}", headers=AUTH) as resp:
            if (await resp.json())["home"] == worker:
                return f"{prefix}{i}"
    raise AssertionError(f"no session of 200 hashes to {worker}")


async def test_an_admin_drain_keeps_existing_sessions_until_idle_then_moves_them(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    settings = fleet.settings(
        admin={"token": TOKEN},
        routing={"slow_start": {"window": 0}},
        drain={"idle": 0.6, "check_interval": 0.05, "timeout": 30},
    )
    admin = admin_url(settings)
    async with router_in_process(settings) as url:
        home, route = await served_by(http, url, "d1")
        assert route == "affinity"
        async with http.post(admin + f"/admin/workers/{home}/drain", headers=AUTH) as resp:
            listed = await resp.json()
        assert listed["state"] == "draining" and listed["drain"]["keeps_sessions"] is True
        # d1 is existing on the draining worker: it stays; a new session homed there moves.
        assert await served_by(http, url, "d1") == (home, "affinity")
        new = await session_homed_on(http, admin, home, "new-")
        moved_new, route = await served_by(http, url, new)
        assert moved_new != home and route == "fallback"
        assert await served_by(http, url, "d1") == (home, "affinity")
        # Idle for drain.idle: the drain ends and d1 moves too, then stays where it went.
        await asyncio.sleep(0.9)
        async with http.get(admin + "/admin/workers", headers=AUTH) as resp:
            drained = {w["name"]: w for w in (await resp.json())["workers"]}[home]
        assert drained["state"] == "draining" and drained["drain"]["keeps_sessions"] is False
        moved_to, route = await served_by(http, url, "d1")
        assert moved_to != home and route == "fallback"
        async with http.post(admin + f"/admin/workers/{home}/undrain", headers=AUTH) as resp:
            assert (await resp.json())["state"] == "healthy"
        async with http.get(admin + "/admin/sessions/d1", headers=AUTH) as resp:
            where = await resp.json()
        assert where["pinned"] == moved_to and where["worker"] == moved_to
        assert await served_by(http, url, "d1") == (moved_to, "affinity")


async def test_weight_changes_are_validated_and_applied(sim_fleet, router_in_process, http):
    fleet = sim_fleet(2, "--time-scale", "0")
    settings = fleet.settings(admin={"token": TOKEN})
    async with router_in_process(settings) as url:
        path = admin_url(settings) + "/admin/workers/sim-0/weight"
        async with http.put(path, json={"weight": -1}, headers=AUTH) as resp:
            assert resp.status == 400
        async with http.put(path, data=b"nope", headers=AUTH) as resp:
            assert resp.status == 400
        async with http.put(path, json={"weight": 3}, headers=AUTH) as resp:
            assert (await resp.json())["weight"] == 3
        async with http.put(
            admin_url(settings) + "/admin/workers/nobody/weight", json={"weight": 1}, headers=AUTH
        ) as resp:
            assert resp.status == 404
        sessions = [f"w-{i}" for i in range(200)]
        counts = {"sim-0": 0, "sim-1": 0}
        for session in sessions:
            counts[(await served_by(http, url, session))[0]] += 1
        assert counts["sim-0"] > 2 * counts["sim-1"]


async def test_replicas_sharing_redis_agree_on_which_sessions_a_draining_worker_keeps(
    sim_fleet, router_in_process, http, shared_redis_url, redis_prefix
):
    fleet = sim_fleet(2, "--time-scale", "0")
    store = {"url": shared_redis_url, "key_prefix": redis_prefix}
    common = {
        "admin": {"token": TOKEN},
        "routing": {"slow_start": {"window": 0}},
        "store": store,
        "drain": {"idle": 30},
    }
    async with router_in_process(fleet.settings(**common)) as first:
        home, _ = await served_by(http, first, "shared-1")
        await asyncio.sleep(0.2)  # the served record is written in the background
        settings = fleet.settings(**common)
        async with router_in_process(settings) as second:
            admin = admin_url(settings)
            async with http.post(admin + f"/admin/workers/{home}/drain", headers=AUTH) as resp:
                assert resp.status == 200
            # The second replica never served shared-1: the record in Redis says it exists.
            assert await served_by(http, second, "shared-1") == (home, "affinity")
            new = await session_homed_on(http, admin, home, "fresh-")
            elsewhere, route = await served_by(http, second, new)
            assert elsewhere != home and route == "fallback"
