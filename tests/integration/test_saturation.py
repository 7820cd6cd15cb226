"""The default policy end to end: simulated workers with a batch limit, the router reading their
metrics. Sessions stay put while nothing is saturated; once hot sessions fill one worker's batch
and requests queue there, new short turns homed on it move, and only then."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.conftest import chat_body

pytestmark = pytest.mark.slow

SIM = ("--max-running", "2", "--decode-ms-per-token", "40", "--prefill-ms-per-token", "0.1")
FAST_LOAD = {"interval": 0.1, "jitter": 0.0, "timeout": 0.5, "stale_after": 1.0}
SATURATION = {"hold": 0.2, "floor": 8}


async def turn(http, url: str, session: str, max_tokens: int = 4, text: str = "hi") -> dict:
    body = chat_body(text, max_tokens=max_tokens)
    async with http.post(
        url + "/v1/chat/completions", json=body, headers={"x-session-id": session}
    ) as resp:
        await resp.read()
        assert resp.status == 200
        return {
            "worker": resp.headers["x-kvrouter-worker"],
            "route": resp.headers["x-kvrouter-route"],
            "rehomed": resp.headers.get("x-kvrouter-rehomed"),
        }


async def test_sessions_move_off_a_worker_only_once_hot_sessions_saturate_it(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(4, *SIM)
    settings = fleet.settings(load=FAST_LOAD, routing={"saturation": SATURATION})
    async with router_in_process(settings) as url:
        await asyncio.sleep(0.3)  # first scrapes
        homes = {f"s{i}": (await turn(http, url, f"s{i}", 1))["worker"] for i in range(32)}
        again = [await turn(http, url, s, 1) for s in homes]
        assert all(t["route"] == "affinity" for t in again), "light load: nobody moves"
        assert [t["worker"] for t in again] == list(homes.values())

        hot_worker, _ = Counter(homes.values()).most_common(1)[0]
        on_hot = [s for s, w in homes.items() if w == hot_worker]
        assert len(on_hot) >= 4
        hot, probe = on_hot[:-1], on_hot[-1]
        # hot sessions fill the worker's batch of 2 with long answers and 4 more queue there:
        # 6 in flight, under the floor of 8, so only the worker's own figures show saturation
        burst = [
            asyncio.create_task(turn(http, url, hot[i % len(hot)], max_tokens=60))
            for i in range(6)
        ]
        await asyncio.sleep(0.6)  # scraped, held for longer than saturation.hold
        moved = await turn(http, url, probe, 1)
        results = await asyncio.gather(*burst)
    assert all(r["worker"] == hot_worker for r in results[:2]), "the first hot turns stay home"
    assert moved["worker"] != hot_worker, moved
    assert moved["route"] == "spill" and moved["rehomed"] == "saturated", moved
