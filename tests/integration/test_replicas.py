"""Two router processes sharing one Redis agree on every turn of a session: a turn sent after
the previous reply completed goes to the worker that served it, whichever replica takes it,
unless placement moves it for a reason it reports. A spill's pin is therefore in the store
before the spilled reply ends, even when the replica that spilled reaches Redis slowly."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from tests.conftest import chat_body
from tests.integration.test_saturation import FAST_LOAD, SATURATION, SIM, turn
from tests.slow_tcp import delayed_tcp

pytestmark = pytest.mark.slow

STORE_DELAY = 0.2  # what replica A's commands take to reach Redis
PINS = {"store_timeout": 1.0}  # above the delay: replica A's pin reads still count


async def test_replicas_agree_on_a_moved_session(
    sim_fleet, router_process, http, shared_redis_url, redis_prefix
):
    fleet = sim_fleet(3, *SIM)
    redis_at = urlsplit(shared_redis_url)
    routing = {"saturation": SATURATION, "pins": PINS}
    async with delayed_tcp(redis_at.hostname or "", redis_at.port or 6379, STORE_DELAY) as port:
        slow_store = {"url": f"redis://127.0.0.1:{port}/0", "key_prefix": redis_prefix,
                      "timeout": 2.0}  # fmt: skip
        fast_store = {"url": shared_redis_url, "key_prefix": redis_prefix}
        a, _ = router_process(fleet.config(store=slow_store, load=FAST_LOAD, routing=routing))
        b, _ = router_process(fleet.config(store=fast_store, load=FAST_LOAD, routing=routing))

        home = (await turn(http, b, "chat", 1))["worker"]
        # the session's home is saturated by work sent to it directly: both replicas see it
        hot = fleet.by_name(home).url + "/v1/chat/completions"
        burst = [
            asyncio.create_task(http.post(hot, json=chat_body("busy", max_tokens=50)))
            for _ in range(8)
        ]
        await asyncio.sleep(0.8)  # scraped by both, held for longer than saturation.hold

        spilled = await turn(http, a, "chat", 1)
        assert spilled["route"] == "spill" and spilled["rehomed"] == "saturated", spilled
        assert spilled["worker"] != home
        # each turn sent once the previous reply ended, alternately through B and A
        later = [await turn(http, (b, a)[i % 2], "chat", 1) for i in range(4)]
        for response in await asyncio.gather(*burst):
            response.release()

        # the worker now holding the session dies: A's turn falls back, B follows it there
        fleet.kill(fleet.names.index(spilled["worker"]))
        fallen = await turn(http, a, "chat", 1)
        after = [await turn(http, (b, a)[i % 2], "chat", 1) for i in range(2)]
    assert [t["worker"] for t in later] == [spilled["worker"]] * 4, later
    assert [t["route"] for t in later] == ["affinity"] * 4, later
    assert fallen["route"] == "fallback" and fallen["worker"] != spilled["worker"], fallen
    assert [(t["worker"], t["route"]) for t in after] == [(fallen["worker"], "affinity")] * 2
