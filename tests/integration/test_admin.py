"""The operator API: drain, weights, session lookup, token required."""

from __future__ import annotations

import asyncio

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
    async with router_in_process(fleet.settings(admin={"token": TOKEN})) as url:
        async with http.get(url + "/admin/workers", headers={"authorization": "Bearer x"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_admin_token"
        async with http.get(url + "/admin/workers", headers=AUTH) as resp:
            assert [w["name"] for w in (await resp.json())["workers"]] == ["sim-0"]


async def test_draining_a_worker_moves_its_sessions_which_then_stay_where_their_cache_is(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    settings = fleet.settings(admin={"token": TOKEN}, routing={"slow_start": {"window": 0}})
    async with router_in_process(settings) as url:
        home, route = await served_by(http, url, "d1")
        assert route == "affinity"
        async with http.get(url + "/admin/sessions/d1", headers=AUTH) as resp:
            assert (await resp.json())["home"] == home
        async with http.post(url + f"/admin/workers/{home}/drain", headers=AUTH) as resp:
            assert (await resp.json())["state"] == "draining"
        moved_to, route = await served_by(http, url, "d1")
        assert moved_to != home and route == "fallback"
        async with http.post(url + f"/admin/workers/{home}/undrain", headers=AUTH) as resp:
            assert resp.status == 200
        for _ in range(50):
            async with http.get(url + "/admin/workers", headers=AUTH) as resp:
                states = {w["name"]: w["state"] for w in (await resp.json())["workers"]}
            if states[home] == "healthy":
                break
            await asyncio.sleep(0.1)
        assert states[home] == "healthy"
        async with http.get(url + "/admin/sessions/d1", headers=AUTH) as resp:
            where = await resp.json()
        assert where["pinned"] == moved_to and where["worker"] == moved_to
        assert await served_by(http, url, "d1") == (moved_to, "affinity")


async def test_weight_changes_are_validated_and_applied(sim_fleet, router_in_process, http):
    fleet = sim_fleet(2, "--time-scale", "0")
    async with router_in_process(fleet.settings(admin={"token": TOKEN})) as url:
        path = url + "/admin/workers/sim-0/weight"
        async with http.put(path, json={"weight": -1}, headers=AUTH) as resp:
            assert resp.status == 400
        async with http.put(path, data=b"nope", headers=AUTH) as resp:
            assert resp.status == 400
        async with http.put(path, json={"weight": 3}, headers=AUTH) as resp:
            assert (await resp.json())["weight"] == 3
        async with http.put(
            url + "/admin/workers/nobody/weight", json={"weight": 1}, headers=AUTH
        ) as resp:
            assert resp.status == 404
        sessions = [f"w-{i}" for i in range(200)]
        counts = {"sim-0": 0, "sim-1": 0}
        for session in sessions:
            counts[(await served_by(http, url, session))[0]] += 1
        assert counts["sim-0"] > 2 * counts["sim-1"]
