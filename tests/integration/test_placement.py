"""Placement with real routers and simulated workers: spills, sticky moves, re-homing marks,
prefix affinity for sessionless chats, and refusing displaced sessions when most workers die."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.conftest import SimFleet, chat_body

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "You are the release assistant. Answer in one line."}


# bounded_load's cap alone (no floor), so a handful of requests in flight already spills
BOUNDED_NO_FLOOR = {"policy": "bounded_load", "saturation": {"floor": 0}}

async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], session: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"x-session-id": session} if session else {}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


def cached(doc: dict[str, Any]) -> int:
    return doc["usage"]["prompt_tokens_details"]["cached_tokens"]


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def wait_healthy(http: aiohttp.ClientSession, url: str, count: int) -> None:
    for _ in range(100):
        async with http.get(url + "/readyz") as resp:
            if len((await resp.json())["healthy_workers"]) == count:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {count} healthy workers")


QUESTION = "Plan the rollout of version 2.4 across three regions."


async def burst(http, url: str, session: str, count: int) -> list[tuple[int, dict, dict]]:
    body = chat_body(QUESTION, max_tokens=8)
    return await asyncio.gather(*(post(http, url, body, session) for _ in range(count)))


async def streamed(http, url: str, session: str, max_tokens: int) -> tuple[dict, float, float]:
    """Headers of one streamed answer, when its first token arrived and when it ended."""
    body = chat_body(QUESTION, max_tokens=max_tokens, stream=True)
    headers = {"x-session-id": session}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        await resp.content.readany()
        first = time.monotonic()
        await resp.read()
        return dict(resp.headers), first, time.monotonic()


async def test_a_hot_session_spills_under_bounded_load_within_its_in_flight_bound(
    sim_fleet, router_in_process, http
):
    fleet: SimFleet = sim_fleet(4, "--decode-ms-per-token", "25", "--prefill-ms-per-token", "0")
    settings = fleet.settings(routing=BOUNDED_NO_FLOOR)
    async with router_in_process(settings) as url:
        results = await asyncio.gather(*(streamed(http, url, "agent-1", 24) for _ in range(12)))
        # every answer had begun before any ended: all 12 were in flight at once, so the
        # requests each worker got are its peak in-flight count
        assert max(first for _, first, _ in results) < min(end for _, _, end in results)
        workers = Counter(h["x-kvrouter-worker"] for h, _, _ in results)
        routes = Counter(h["x-kvrouter-route"] for h, _, _ in results)
        assert len(workers) > 1 and routes["spill"] > 0
        assert max(workers.values()) <= 4  # ceil(1.25 x 12 / 4)
        spilled = [h for h, _, _ in results if h["x-kvrouter-route"] == "spill"]
        assert all(h["x-kvrouter-rehomed"] == "overloaded" for h in spilled)
        assert await metric(http, url, 'kvrouter_rehomed_total{reason="overloaded"}') == len(
            spilled
        )


async def test_a_session_spilled_off_its_busy_home_stays_on_the_worker_it_moved_to(
    sim_fleet, router_in_process, http
):
    fleet: SimFleet = sim_fleet(4, "--decode-ms-per-token", "25", "--prefill-ms-per-token", "0")
    settings = fleet.settings(routing=BOUNDED_NO_FLOOR)
    async with router_in_process(settings) as url:
        body = chat_body(QUESTION, max_tokens=40, stream=True)  # 1 s of tokens on its home
        async with http.post(
            url + "/v1/chat/completions", json=body, headers={"x-session-id": "agent-1"}
        ) as busy:
            assert busy.status == 200 and busy.headers["x-kvrouter-route"] == "affinity"
            home = busy.headers["x-kvrouter-worker"]
            await busy.content.readany()
            # one request in flight, on home: with 4 workers the bound is ceil(1.25 x 2 / 4) = 1
            _, spill, _ = await post(http, url, chat_body(QUESTION), "agent-1")
            await busy.read()
        moved_to = spill["x-kvrouter-worker"]
        assert moved_to != home and spill["x-kvrouter-route"] == "spill"
        assert spill["x-kvrouter-rehomed"] == "overloaded"
        await asyncio.sleep(0.1)  # home is idle again
        for _ in range(3):
            status, headers, doc = await post(http, url, chat_body(QUESTION), "agent-1")
            assert status == 200
            assert headers["x-kvrouter-worker"] == moved_to, f"went back to {home}, off its pin"
            assert headers["x-kvrouter-route"] == "affinity"
            assert "x-kvrouter-rehomed" not in headers
            assert cached(doc) > 0, "the worker it moved to served this prompt before"


async def test_consistent_hash_keeps_a_hot_session_on_one_worker(
    sim_fleet, router_in_process, http
):
    fleet: SimFleet = sim_fleet(2, "--decode-ms-per-token", "25", "--prefill-ms-per-token", "0")
    async with router_in_process(fleet.settings(routing={"policy": "consistent_hash"})) as url:
        results = await burst(http, url, "agent-1", 8)
    assert {h["x-kvrouter-worker"] for _, h, _ in results} == {results[0][1]["x-kvrouter-worker"]}
    assert {h["x-kvrouter-route"] for _, h, _ in results} == {"affinity"}


async def test_a_dead_workers_session_is_marked_rehomed_once_and_stays_where_it_moved(
    sim_fleet, router_in_process, http
):
    fleet: SimFleet = sim_fleet(3, "--time-scale", "0")
    async with router_in_process(fleet.settings()) as url:
        messages = [SYSTEM, {"role": "user", "content": "What ships today?"}]
        _, first, doc = await post(http, url, {"model": "m", "messages": messages}, "s-1")
        home = fleet.by_name(first["x-kvrouter-worker"])
        async with http.post(home.url + "/sim/fault", json={"fail_health": True}):
            pass
        await wait_healthy(http, url, 2)
        turns = []
        for text in ("And tomorrow?", "And next week?", "Thanks."):
            messages += [doc["choices"][0]["message"], {"role": "user", "content": text}]
            _, headers, doc = await post(http, url, {"model": "m", "messages": messages}, "s-1")
            turns.append((headers, cached(doc)))
            if len(turns) == 2:
                async with http.post(home.url + "/sim/fault", json={"fail_health": False}):
                    pass
                await wait_healthy(http, url, 3)
        moved_to = turns[0][0]["x-kvrouter-worker"]
        assert moved_to != home.name
        assert turns[0][0]["x-kvrouter-route"] == "fallback"
        assert turns[0][0]["x-kvrouter-rehomed"] == "dead" and turns[0][1] == 0
        for headers, hit in turns[1:]:
            assert headers["x-kvrouter-worker"] == moved_to, "pinned until idle, even after"
            assert headers["x-kvrouter-route"] == "affinity" and hit > 0
            assert "x-kvrouter-rehomed" not in headers
        assert await metric(http, url, "kvrouter_rehomed_total") == 1


async def test_sessionless_conversations_stay_on_one_worker_by_their_prefix(
    sim_fleet, router_in_process, http
):
    fleet: SimFleet = sim_fleet(4, "--time-scale", "0")
    settings = fleet.settings(routing={"policy": "consistent_hash"})
    async with router_in_process(settings) as url:

        async def conversation(i: int) -> list[tuple[str, str, int]]:
            messages = [SYSTEM, {"role": "user", "content": f"Ticket {i}: the deploy failed."}]
            seen = []
            for turn in range(3):
                _, headers, doc = await post(http, url, {"model": "m", "messages": messages})
                seen.append(
                    (headers["x-kvrouter-worker"], headers["x-kvrouter-route"], cached(doc))
                )
                messages += [doc["choices"][0]["message"], {"role": "user", "content": f"#{turn}"}]
            return seen

        chats = await asyncio.gather(*(conversation(i) for i in range(16)))
    assert all(len({worker for worker, _, _ in chat}) == 1 for chat in chats)
    assert all(route == "affinity" for chat in chats for _, route, _ in chat)
    assert all(hit > 0 for chat in chats for _, _, hit in chat[1:])
    assert len({chat[0][0] for chat in chats}) >= 3


async def test_with_most_workers_down_refuse_serves_only_sessions_whose_worker_is_up(
    sim_fleet, router_in_process, http
):
    fleet: SimFleet = sim_fleet(2, "--time-scale", "0")
    routing = {"degraded": {"min_healthy": 0.75, "action": "refuse"}}
    async with router_in_process(fleet.settings(routing=routing)) as url:
        async with http.post(fleet.workers[1].url + "/sim/fault", json={"fail_health": True}):
            pass
        await wait_healthy(http, url, 1)
        results = await asyncio.gather(
            *(post(http, url, chat_body(), f"user-{i}") for i in range(30))
        )
    served = [h for status, h, _ in results if status == 200]
    refused = [(h, doc) for status, h, doc in results if status == 503]
    assert len(served) + len(refused) == 30 and served and refused
    assert all(h["x-kvrouter-worker"] == "sim-0" for h in served)
    assert all(doc["error"]["code"] == "degraded_refused" for _, doc in refused)
    assert all(h["Retry-After"] == "1" for h, _ in refused)
